package runner

import (
	"fmt"
	"time"

	"github.com/jetci/jetci/events"
)

// limitPoll is how often a job under limits is measured.
var limitPoll = 100 * time.Millisecond

// limitError is a step killed because its job went over one of its limits.
type limitError struct {
	limit string // cpu, memory, processes
	msg   string
}

func (e *limitError) Error() string { return e.msg }

// jobLimits is what a job may still use, carried from step to step.
type jobLimits struct {
	events.Limits
	cpuUsed time.Duration // by the steps that ended
}

// over reports the first limit a step's process group went over, given what
// it uses now.
func (l *jobLimits) over(u groupUsage) *limitError {
	switch {
	case l.CPUMs > 0 && l.cpuUsed+u.cpu > time.Duration(l.CPUMs)*time.Millisecond:
		return &limitError{"cpu", fmt.Sprintf("cpu limit of %s exceeded (the job used %s of CPU time): killed",
			time.Duration(l.CPUMs)*time.Millisecond, (l.cpuUsed + u.cpu).Round(10*time.Millisecond))}
	case l.MemoryBytes > 0 && u.rss > l.MemoryBytes:
		return &limitError{"memory", fmt.Sprintf("memory limit of %s exceeded (the job's processes held %s): killed",
			events.FormatSize(l.MemoryBytes), mib(u.rss))}
	case l.Processes > 0 && u.procs > l.Processes:
		return &limitError{"processes", fmt.Sprintf("process limit of %d exceeded (%d running): killed", l.Processes, u.procs)}
	}
	return nil
}

func mib(n int64) string { return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20)) }

// watch measures process group pgid every limitPoll until stop is closed; on
// the first limit gone over it calls kill and returns the reason on the
// channel (closed without a value when the step ended within its limits).
func (l *jobLimits) watch(pgid int, kill func(), stop <-chan struct{}) <-chan *limitError {
	hit := make(chan *limitError, 1)
	go func() {
		defer close(hit)
		t := time.NewTicker(limitPoll)
		defer t.Stop()
		for {
			if e := l.over(usageOf(pgid)); e != nil {
				kill()
				hit <- e
				return
			}
			select {
			case <-t.C:
			case <-stop:
				return
			}
		}
	}()
	return hit
}

// watchCPU checks the CPU time cpu reports (the step's cgroup, as the kernel
// counts it) every limitPoll until stop is closed, as watch does.
func (l *jobLimits) watchCPU(cpu func() time.Duration, kill func(), stop <-chan struct{}) <-chan *limitError {
	hit := make(chan *limitError, 1)
	go func() {
		defer close(hit)
		t := time.NewTicker(limitPoll)
		defer t.Stop()
		for {
			if e := l.over(groupUsage{cpu: cpu()}); e != nil {
				kill()
				hit <- e
				return
			}
			select {
			case <-t.C:
			case <-stop:
				return
			}
		}
	}()
	return hit
}
