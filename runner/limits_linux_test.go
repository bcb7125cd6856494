package runner

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/jetci/jetci/events"
)

// TestCapForksSetsTheBackstop: a step under a process limit gets an
// RLIMIT_NPROC above what the user runs now, below unlimited.
func TestCapForksSetsTheBackstop(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	before := userThreads()
	capForks(cmd.Process.Pid, events.Limits{Processes: 10})
	b, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/limits")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "Max processes") {
			continue
		}
		f := strings.Fields(line)
		soft, err := strconv.Atoi(f[2])
		if err != nil || soft < before+80 || soft > before+1000 {
			t.Fatalf("%q: want a soft limit a bit over the %d threads running", line, before)
		}
		return
	}
	t.Fatalf("no Max processes in:\n%s", b)
}
