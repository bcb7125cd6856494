package main

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker"
	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter"
)

// startRunnerIn starts `jetci runner` with args from the working directory dir
// and waits until it is ready.
func startRunnerIn(t *testing.T, bin, dir, url string, args ...string) *child {
	t.Helper()
	c := &child{cmd: exec.Command(bin, append([]string{"runner", "--nats", url, "--slots", "1", "--log-format", "json"}, args...)...), logs: &syncBuffer{}}
	c.cmd.Dir = dir
	c.cmd.Stdout, c.cmd.Stderr = c.logs, c.logs
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.kill(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("runner log:\n%s", c.logs.String())
		}
	})
	brokertest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if !strings.Contains(c.logs.String(), "runner ready") {
			return fmt.Errorf("runner not ready: %s", lastLines(c.logs.String(), 3))
		}
		return nil
	})
	return c
}

// TestRunnersNeverShareAWorkDir: two runners started from one directory with
// the default --work each get their own (the second takes .jetci-runner-2), and
// a runner given a --work another runner holds refuses to start, naming the
// directory and the pid that holds it. A killed runner's lock goes with it.
func TestRunnersNeverShareAWorkDir(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := jetciBinary(t)
	repo := newGitRepo(t)
	repo.Commit("add tests", map[string]string{"tests/test_ok.py": passingTest})
	url, _ := startUpWith(t, t.TempDir(), []string{"--runners", "0"}, repo.Dir)
	cwd := t.TempDir()
	a := startRunnerIn(t, bin, cwd, url)
	b := startRunnerIn(t, bin, cwd, url)
	if !strings.Contains(b.logs.String(), `"work":".jetci-runner-2"`) {
		t.Fatalf("second runner from the same directory did not take .jetci-runner-2:\n%s", b.logs.String())
	}

	// An explicit --work held by a live runner: a clear refusal.
	held := filepath.Join(cwd, ".jetci-runner")
	out, err := exec.Command(bin, "runner", "--nats", url, "--work", held).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("a third runner on %s: %v, want a non-zero exit\n%s", held, err, out)
	}
	want := []string{held, "pid " + strconv.Itoa(a.cmd.Process.Pid), "--work"}
	for _, w := range want {
		if !strings.Contains(string(out), w) {
			t.Errorf("refusal %q does not name %q", strings.TrimSpace(string(out)), w)
		}
	}

	// kill -9 drops the lock with the process: the directory is free at once.
	a.kill(syscall.SIGKILL)
	c := startRunnerIn(t, bin, cwd, url, "--work", held)
	c.kill(syscall.SIGTERM)
}

// TestRunnerRestartedWithTheSameID: a runner killed mid-job (kill -9) and
// started again at once with the same --id, before its lease could expire. The
// new process's lease replaces the old one; the dispatcher sees another
// incarnation, takes the old process for dead and hands its job back (it
// claims the job's reap key) instead of leaving it to the 30 s ack wait. The
// killed attempt ends lost.
func TestRunnerRestartedWithTheSameID(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := jetciBinary(t)
	repo := newGitRepo(t)
	repo.Commit("add tests", map[string]string{"tests/test_ok.py": passingTest})
	url, _ := startUpWith(t, t.TempDir(), []string{"--runners", "0"}, repo.Dir)
	work := filepath.Join(t.TempDir(), "w")
	a := runnerProcess(t, bin, url, "same", work)
	c := repo.Commit("slow", map[string]string{"tests/test_slow.py": slowTest})
	var rec reporter.Record
	brokertest.CheckFor(t, 60*time.Second, 10*time.Millisecond, func() error {
		var err error
		if rec, err = recordOf(t, url, c); err != nil {
			return err
		}
		if rec.Status != "running" {
			return fmt.Errorf("status %s", rec.Status)
		}
		return nil
	})
	a.kill(syscall.SIGKILL)
	b := runnerProcess(t, bin, url, "same", work) // same id, same work directory: its lock died with a
	defer b.kill(syscall.SIGTERM)
	brokertest.CheckFor(t, 90*time.Second, 20*time.Millisecond, func() error {
		r, err := recordOf(t, url, c)
		if err != nil {
			return err
		}
		if r.Status != "passed" || r.Attempt != 2 {
			return fmt.Errorf("status %s attempt %d", r.Status, r.Attempt)
		}
		rec = r
		return nil
	})
	if rec.Attempts[0].Status != events.StatusLost {
		t.Errorf("killed attempt: %+v, want lost", rec.Attempts[0])
	}
	// It was the dispatcher that handed the job back, not the ack wait.
	nc, js, err := events.Connect(url, events.ConnectOptions{Name: "test", Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	kv, err := js.KeyValue(context.Background(), events.BucketReaped)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(context.Background(), events.ReapKey("same", rec.JobID, 1))
	// By the lease the new runner replaced, or, when the probe of the killed
	// process's connection came first, by the closed connection.
	if err != nil || string(e.Value()) != events.ReapedByLease && string(e.Value()) != events.ReapedByDisconnect {
		t.Fatalf("reap key of the killed attempt: %v %v; want claimed by the dispatcher", e, err)
	}
}

// TestRolePasswordFromItsServerVariable: the README's multi-machine block
// exports JETCI_<ROLE>_PASSWORD, the variables the shipped nats.conf reads; a
// client of user X finds its password in JETCI_X_PASSWORD, and a refused login
// says where the password came from and where it may come from.
func TestRolePasswordFromItsServerVariable(t *testing.T) {
	url, _ := startShippedBroker(t) // exports JETCI_<ROLE>_PASSWORD, as the README does
	t.Setenv("JETCI_NATS_PASSWORD", "")
	run := func(args ...string) (int, string) {
		var out, errb syncBuffer
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		code := (&Main{Stdout: &out, Stderr: &errb}).Run(ctx, append([]string{"results", "--nats", url, "--json"}, args...))
		return code, errb.String()
	}
	if code, errs := run("--nats-user", "admin"); code != 0 {
		t.Fatalf("jetci results --nats-user admin with $JETCI_ADMIN_PASSWORD set: code %d: %s", code, errs)
	}
	t.Setenv("JETCI_NATS_PASSWORD", "wrong")
	t.Setenv("JETCI_ADMIN_PASSWORD", "")
	code, errs := run("--nats-user", "admin")
	for _, want := range []string{"authorization violation", "$JETCI_NATS_PASSWORD", "$JETCI_ADMIN_PASSWORD"} {
		if code == 0 || !strings.Contains(strings.ToLower(errs), strings.ToLower(want)) {
			t.Errorf("refused login: code %d, stderr %q does not name %s", code, errs, want)
		}
	}
	t.Setenv("JETCI_NATS_PASSWORD", "")
	code, errs = run("--nats-user", "admin")
	if code == 0 || !strings.Contains(errs, "no password was given for user admin: set $JETCI_ADMIN_PASSWORD") {
		t.Errorf("login without a password: code %d, stderr %q", code, errs)
	}
}

// TestSetupWaitsForTheServer: `jetci setup --timeout` started before its
// server waits for it (as the README's order of commands on a fresh machine
// needs), and sets the streams up once the server is there; without a server
// it gives up after --timeout, saying so.
func TestSetupWaitsForTheServer(t *testing.T) {
	addr := reserveAddr(t)
	var out, errb syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- (&Main{Stdout: &out, Stderr: &errb}).Run(context.Background(),
			[]string{"setup", "--nats", "nats://" + addr, "--timeout", "60s", "--log-format", "json"})
	}()
	brokertest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		select {
		case code := <-done:
			t.Fatalf("setup ended (code %d) before the server started: %s %s", code, out.String(), errb.String())
		default:
		}
		if !strings.Contains(out.String()+errb.String(), "waiting for the nats server") {
			return fmt.Errorf("setup not waiting yet")
		}
		return nil
	})
	srv, err := broker.Start(broker.Config{Listen: addr, StoreDir: t.TempDir()}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	if code := <-done; code != 0 || !strings.Contains(out.String(), "jetci streams and buckets ready") {
		t.Fatalf("setup: code %d, %s %s", code, out.String(), errb.String())
	}

	errb = syncBuffer{}
	code := (&Main{Stdout: &out, Stderr: &errb}).Run(context.Background(),
		[]string{"setup", "--nats", "nats://" + reserveAddr(t), "--timeout", "1s", "--log-format", "json"})
	if code == 0 || !strings.Contains(errb.String(), "within --timeout 1s") {
		t.Fatalf("setup without a server: code %d, %s", code, errb.String())
	}
}
