package runner

import (
	"runtime"
	"strings"
	"testing"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

func TestLimitsTighter(t *testing.T) {
	runnerL := events.Limits{CPUMs: 60000, MemoryBytes: 1 << 30}
	for _, tt := range []struct{ job, want events.Limits }{
		{events.Limits{}, runnerL},
		{events.Limits{CPUMs: 1000, Processes: 8}, events.Limits{CPUMs: 1000, MemoryBytes: 1 << 30, Processes: 8}},
		{events.Limits{CPUMs: 120000, MemoryBytes: 2 << 30}, runnerL},
	} {
		if got := runnerL.Tighter(tt.job); got != tt.want {
			t.Errorf("%+v tighter %+v = %+v, want %+v", runnerL, tt.job, got, tt.want)
		}
	}
	if s := (events.Limits{CPUMs: 600000, MemoryBytes: 2 << 30, Processes: 256}).String(); s != "cpu 10m0s, memory 2GiB, processes 256" {
		t.Errorf("String = %q", s)
	}
}

// TestLimitsEndTheJob: a job over its memory, CPU or process limit is killed
// and fails with an error naming the limit; CPU time adds up across steps; a
// job within its limits passes.
func TestLimitsEndTheJob(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("limits are enforced on Linux only")
	}
	for _, mode := range []string{ExecHost, ExecSandbox} {
		t.Run(mode, func(t *testing.T) {
			if mode == ExecSandbox {
				requireSandbox(t)
			}
			testLimitsEndTheJob(t, mode)
		})
	}
}

func testLimitsEndTheJob(t *testing.T, mode string) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("change", map[string]string{
		"hog.py":  "import time\nb = []\nfor _ in range(64):\n    b.append(bytearray(16 << 20))\n    time.sleep(0.02)\n",
		"burn.py": "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < float(sys.argv[1]):\n    pass\n",
	})
	startRunner(t, s, func(c *Config) { c.Slots, c.Exec = 2, mode })
	limited := func(l events.Limits) func(*events.JobQueued) {
		return func(j *events.JobQueued) { j.Limits = &l }
	}
	memory := enqueueMod(t, s, repo, c, limited(events.Limits{MemoryBytes: 64 << 20}), "python3 hog.py", "echo never-runs")
	cpu := enqueueMod(t, s, repo, c, limited(events.Limits{CPUMs: 1000}), "python3 burn.py 0.6", "python3 burn.py 0.6", "echo never-runs")
	procs := enqueueMod(t, s, repo, c, limited(events.Limits{Processes: 5}), "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 30 & done; wait")
	within := enqueueMod(t, s, repo, c, limited(events.Limits{CPUMs: 20000, MemoryBytes: 512 << 20, Processes: 20}), "python3 burn.py 0.1", "sleep 0.3 & sleep 0.3 & wait")
	for _, tt := range []struct {
		job  *events.JobQueued
		want string
	}{
		{memory, "memory limit of 64MiB exceeded"},
		{cpu, "cpu limit of 1s exceeded"},
		{procs, "process limit of 5 exceeded"},
	} {
		fin := res.wait(t, tt.job.JobID)
		log := readLog(t, s, fin.Log)
		if fin.Status != events.StatusFailed || !strings.Contains(fin.Error, tt.want) {
			t.Errorf("result %+v, want failed with %q\n%s", fin, tt.want, log)
		}
		if !strings.Contains(log, "[jetci] limits: ") || !strings.Contains(log, "[jetci] "+tt.want) || strings.Contains(log, "never-runs\n") {
			t.Errorf("log:\n%s", log)
		}
	}
	if log := readLog(t, s, res.wait(t, cpu.JobID).Log); strings.Count(log, "$ python3 burn.py 0.6") != 2 {
		t.Errorf("the CPU limit ended the first step, not the second:\n%s", log)
	}
	if fin := res.wait(t, within.JobID); fin.Status != events.StatusPassed {
		t.Errorf("job within its limits: %+v\n%s", fin, readLog(t, s, fin.Log))
	}
}

// BenchmarkUsageOf measures one look at a process group's usage: a scan of
// /proc, done every limitPoll for each step under limits.
//
//	go test -run '^$' -bench UsageOf ./runner
func BenchmarkUsageOf(b *testing.B) {
	if runtime.GOOS != "linux" {
		b.Skip("Linux only")
	}
	for b.Loop() {
		_ = usageOf(1)
	}
}
