// Package procstat reads a process's memory and CPU time from /proc (Linux),
// for the benchmarks that report them. Elsewhere every figure is 0.
package procstat

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Self is the pid of the calling process.
func Self() int { return os.Getpid() }

// MemoryKB is a field of /proc/<pid>/status in KiB: "VmHWM" (peak resident
// set) or "VmRSS" (resident set now). 0 when unknown.
func MemoryKB(pid int, field string) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == field+":" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

// CPUSeconds is the CPU time a process and the children it waited for used
// (utime, stime, cutime and cstime of /proc/<pid>/stat, in ticks of 1/100 s).
func CPUSeconds(pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 15 {
		return 0
	}
	var ticks float64
	for _, k := range []int{11, 12, 13, 14} { // fields 14-17
		n, _ := strconv.ParseFloat(f[k], 64)
		ticks += n
	}
	return ticks / 100
}
