package events

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Limits bounds what one job may use while it runs, across all its processes.
// A zero field sets no limit. The pipeline file sets them per job; a runner's
// own limits are the defaults and the ceiling (see Tighter).
type Limits struct {
	CPUMs       int64 `json:"cpu_ms,omitempty"`       // CPU time, user + system, of every step together
	MemoryBytes int64 `json:"memory_bytes,omitempty"` // resident memory of the job's processes together
	Processes   int   `json:"processes,omitempty"`    // processes alive at once
}

// IsZero reports whether l sets no limit.
func (l Limits) IsZero() bool { return l == Limits{} }

// Tighter returns, field by field, the smaller of the limits set.
func (l Limits) Tighter(o Limits) Limits {
	pick := func(a, b int64) int64 {
		if a == 0 || (b != 0 && b < a) {
			return b
		}
		return a
	}
	return Limits{CPUMs: pick(l.CPUMs, o.CPUMs), MemoryBytes: pick(l.MemoryBytes, o.MemoryBytes),
		Processes: int(pick(int64(l.Processes), int64(o.Processes)))}
}

// String lists the limits set: "cpu 10m0s, memory 2GiB, processes 256".
func (l Limits) String() string {
	var parts []string
	if l.CPUMs > 0 {
		parts = append(parts, "cpu "+(time.Duration(l.CPUMs)*time.Millisecond).String())
	}
	if l.MemoryBytes > 0 {
		parts = append(parts, "memory "+FormatSize(l.MemoryBytes))
	}
	if l.Processes > 0 {
		parts = append(parts, "processes "+strconv.Itoa(l.Processes))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

var sizeUnits = []struct {
	suffix string
	mult   int64
}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"B", 1}}

// ParseSize reads a byte count with an optional unit: 512, 64KiB, 100MiB, 2GiB
// (KB, MB, GB are powers of 1000; K, M, G powers of 1024).
func ParseSize(v string) (int64, error) {
	num, mult := strings.TrimSpace(v), int64(1)
	for _, u := range sizeUnits {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size like 512, 64KiB, 100MiB or 2GiB", v)
	}
	return n * mult, nil
}

// FormatSize writes a byte count in the largest binary unit that divides it.
func FormatSize(n int64) string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.mult && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}
