package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// errTimeout is a step that ran out of time.
var errTimeout = errors.New("timeout")

// drainWait bounds how long the output of a finished step is read after its
// process group was killed.
var drainWait = 2 * time.Second

// runStep runs one step with `sh -c` in its own process group and returns its
// exit code. On timeout or cancellation the whole group is killed; after the step
// exits, whatever it left running in its group is killed too. Under limits
// (lim not nil, set) the group is measured while it runs and killed when the
// job goes over one; the error is then a *limitError.
//
// Under the sandbox or container backend (x.mode) the step runs isolated:
// the kernel enforces memory and process limits through the step's cgroup,
// and ending the step ends every process it started (isolate_*.go).
func runStep(ctx context.Context, x *stepExec, step string, out io.Writer, deadline time.Time, lim *jobLimits) (int, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return -1, err
	}
	var cmd *exec.Cmd
	var iso *isolatedStep
	if x.mode != ExecHost {
		iso, err = startIsolated(x, step, pw, lim)
		if err != nil {
			pr.Close()
			pw.Close()
			return -1, err
		}
		cmd = iso.cmd
		defer iso.cleanup()
	} else {
		cmd = exec.Command("sh", "-c", step)
		cmd.Dir, cmd.Env = x.ws, x.env
		cmd.Stdin = nil
		cmd.Stdout, cmd.Stderr = pw, pw
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			pr.Close()
			pw.Close()
			return -1, fmt.Errorf("start step: %w", err)
		}
	}
	pw.Close() // the children hold the write end now
	copied := make(chan struct{})
	go func() {
		_, _ = io.Copy(out, pr)
		close(copied)
	}()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	kill := func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var overLimit <-chan *limitError
	stopWatch := make(chan struct{})
	switch {
	case iso != nil:
		kill = iso.kill
		if lim != nil && lim.CPUMs > 0 && iso.cg != nil {
			// Memory and processes the kernel enforces; CPU time it counts
			// for the whole group, and the runner kills at the limit.
			overLimit = lim.watchCPU(iso.cpu, kill, stopWatch)
		}
	case lim != nil && !lim.IsZero() && limitsEnforced:
		capForks(cmd.Process.Pid, lim.Limits)
		overLimit = lim.watch(cmd.Process.Pid, kill, stopWatch)
	}

	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	var waitErr, why error
	select {
	case waitErr = <-exited:
	case <-timer.C:
		why = errTimeout
		kill()
		waitErr = <-exited
	case <-ctx.Done():
		why = ctx.Err()
		kill()
		waitErr = <-exited
	}
	if iso != nil {
		iso.done.Store(true)
	}
	kill() // background children of the step
	close(stopWatch)
	if overLimit != nil {
		if e := <-overLimit; e != nil && why == nil {
			why = e
		}
	}
	if iso != nil {
		iso.waitEmpty(ctx)
		if e := iso.over(lim); e != nil && why == nil {
			why = e
		}
	}
	if lim != nil && iso != nil && iso.cg != nil {
		lim.cpuUsed += iso.cpu()
	} else if lim != nil && cmd.ProcessState != nil {
		lim.cpuUsed += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	select {
	case <-copied:
	case <-time.After(drainWait):
		// Something that left the group (setsid) still holds the output open:
		// stop reading, so it cannot hang the job (what cmd.WaitDelay does for
		// exec's own pipes; here the child writes straight into our pipe).
	}
	pr.Close()
	<-copied // the read fails at once on a closed pipe; no late write into the log
	var over *limitError
	if why != nil && !errors.As(why, &over) {
		return -1, why
	}
	var ee *exec.ExitError
	if errors.As(waitErr, &ee) {
		if st, ok := ee.Sys().(syscall.WaitStatus); ok && st.Signaled() {
			return 128 + int(st.Signal()), why
		}
		return ee.ExitCode(), why
	}
	if waitErr != nil {
		return -1, waitErr
	}
	return 0, why
}
