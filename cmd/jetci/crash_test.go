package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter"
)

// child is a jetci process started by a test.
type child struct {
	cmd  *exec.Cmd
	logs *syncBuffer
}

// runnerProcess starts `jetci runner` as a child process and waits until it is ready.
func runnerProcess(t testing.TB, bin, url, id, work string) *child {
	t.Helper()
	c := &child{cmd: exec.Command(bin, "runner", "--nats", url, "--id", id, "--work", work, "--log-format", "json"), logs: &syncBuffer{}}
	c.cmd.Stdout, c.cmd.Stderr = c.logs, c.logs
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.kill(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("runner %s log:\n%s", id, c.logs.String())
		}
	})
	brokertest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if !strings.Contains(c.logs.String(), "runner ready") {
			return fmt.Errorf("runner %s not ready", id)
		}
		return nil
	})
	return c
}

func (c *child) kill(sig syscall.Signal) {
	if c.cmd.ProcessState == nil {
		_ = c.cmd.Process.Signal(sig)
		_ = c.cmd.Wait()
	}
}

// recordOf returns the one record of commit (all states), or an error.
func recordOf(t testing.TB, url, commit string) (reporter.Record, error) {
	recs, err := resultsJSON(t, url, "--all", "--commit", commit)
	if err != nil {
		return reporter.Record{}, err
	}
	if len(recs) != 1 {
		return reporter.Record{}, fmt.Errorf("%d records for %s, want 1", len(recs), commit[:8])
	}
	return recs[0], nil
}

const slowTest = "import time, unittest\nclass S(unittest.TestCase):\n    def test_slow(self):\n        time.sleep(2)\n"

// killRunnerMidJob commits a slow test, waits until runner A runs it, starts an
// idle runner B, kills A with SIGKILL, and returns how long until B runs the job.
// It checks that the commit ends with one record: passed, attempt 2, on B.
func killRunnerMidJob(t testing.TB, bin, url string, repo *gitRepo, round int) time.Duration {
	t.Helper()
	work := t.TempDir()
	idA, idB := "A"+strconv.Itoa(round), "B"+strconv.Itoa(round)
	a := runnerProcess(t, bin, url, idA, filepath.Join(work, "a"))
	c := repo.Commit(fmt.Sprintf("slow %d", round), map[string]string{"tests/test_slow.py": slowTest, "round.txt": strconv.Itoa(round)})
	brokertest.CheckFor(t, 60*time.Second, 10*time.Millisecond, func() error {
		r, err := recordOf(t, url, c)
		if err != nil {
			return err
		}
		if r.Status != "running" || r.Runner != idA {
			return fmt.Errorf("status %s on %q", r.Status, r.Runner)
		}
		return nil
	})
	b := runnerProcess(t, bin, url, idB, filepath.Join(work, "b"))
	defer b.kill(syscall.SIGTERM)
	a.kill(syscall.SIGKILL)
	killed := time.Now()
	var took time.Duration
	brokertest.CheckFor(t, 60*time.Second, 10*time.Millisecond, func() error {
		r, err := recordOf(t, url, c)
		if err != nil {
			return err
		}
		if took == 0 && r.Attempt >= 2 {
			took = time.Since(killed)
		}
		if r.Status != "passed" {
			return fmt.Errorf("status %s attempt %d", r.Status, r.Attempt)
		}
		return nil
	})
	r, _ := recordOf(t, url, c)
	if r.Attempt != 2 || r.Runner != idB {
		t.Fatalf("record %+v: want passed, attempt 2, on %s", r, idB)
	}
	// The killed attempt does not stay "running": it is lost, and says why.
	if len(r.Attempts) != 2 || r.Attempts[0].Status != events.StatusLost || !strings.Contains(r.Attempts[0].Error, idA) {
		t.Fatalf("attempts %+v: want the first lost on %s", r.Attempts, idA)
	}
	// Handed back by the dispatcher because A's connection closed, not
	// because its lease expired: the claim in jetci-reaped says which.
	if by := reapedBy(t, url, idA, r.JobID, 1); by != events.ReapedByDisconnect {
		t.Fatalf("attempt 1 of %s on %s handed back by %s, want %s", r.JobID, idA, by, events.ReapedByDisconnect)
	}
	return took
}

// reapedBy returns the claim on one attempt of a job in jetci-reaped: who
// handed it back (events.ReapedBy...), or "" when no one did.
func reapedBy(t testing.TB, url, runnerID, jobID string, attempt uint64) string {
	t.Helper()
	nc, js, err := events.Connect(url, events.ConnectOptions{Name: "test", Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, events.BucketReaped)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, events.ReapKey(runnerID, jobID, attempt))
	if err != nil {
		return ""
	}
	return string(e.Value())
}

// TestRunnerKilledMidJob: kill -9 of a runner in the middle of a job; the job
// runs again on another runner (the dispatcher finds the runner's connection
// closed and hands the job back without waiting for the lease to expire), and
// the record holds one result, attempt 2.
func TestRunnerKilledMidJob(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := jetciBinary(t)
	repo := newGitRepo(t)
	repo.Commit("add tests", map[string]string{"tests/test_ok.py": passingTest})
	url, _ := startUpWith(t, t.TempDir(), []string{"--runners", "0"}, repo.Dir)
	took := killRunnerMidJob(t, bin, url, repo, 1)
	t.Logf("kill -9 -> job running on another runner: %v", took)
}

// BenchmarkKillToRedelivery kills a runner mid-job 10 times and reports how long
// until the job runs elsewhere; the ack wait (30 s) is the baseline it replaces.
//
//	go test -run '^$' -bench KillToRedelivery -benchtime 1x ./cmd/jetci
func BenchmarkKillToRedelivery(b *testing.B) {
	bin := jetciBinary(b)
	repo := newGitRepo(b)
	repo.Commit("add tests", map[string]string{"tests/test_ok.py": passingTest})
	url, _ := startUpWith(b, b.TempDir(), []string{"--runners", "0"}, repo.Dir)
	for range b.N {
		var ds []time.Duration
		for i := range 10 {
			ds = append(ds, killRunnerMidJob(b, bin, url, repo, i))
		}
		b.ReportMetric(float64(percentile(ds, 0.5).Milliseconds()), "p50_ms")
		b.ReportMetric(float64(percentile(ds, 1).Milliseconds()), "max_ms")
	}
}

// TestStaleRunnerReportsLate: a runner frozen mid-job (SIGSTOP) loses its lease;
// the job runs again elsewhere. When the frozen runner wakes and finishes, its
// late result neither adds a record nor overwrites the newer attempt.
func TestStaleRunnerReportsLate(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := jetciBinary(t)
	repo := newGitRepo(t)
	repo.Commit("add tests", map[string]string{"tests/test_ok.py": passingTest})
	url, _ := startUpWith(t, t.TempDir(), []string{"--runners", "0"}, repo.Dir)
	work := t.TempDir()
	a := runnerProcess(t, bin, url, "A", filepath.Join(work, "a"))
	c := repo.Commit("slow", map[string]string{"tests/test_slow.py": slowTest})
	brokertest.CheckFor(t, 60*time.Second, 10*time.Millisecond, func() error {
		r, err := recordOf(t, url, c)
		if err == nil && (r.Status != "running" || r.Runner != "A") {
			err = fmt.Errorf("status %s on %q", r.Status, r.Runner)
		}
		return err
	})
	_ = a.cmd.Process.Signal(syscall.SIGSTOP)
	runnerProcess(t, bin, url, "B", filepath.Join(work, "b"))
	brokertest.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
		r, err := recordOf(t, url, c)
		if err == nil && (r.Status != "passed" || r.Runner != "B" || r.Attempt != 2) {
			err = fmt.Errorf("record %s attempt %d on %q", r.Status, r.Attempt, r.Runner)
		}
		return err
	})
	// A frozen process keeps its connection (its subject has a subscriber
	// that does not answer): the lease's expiry, not the disconnect probe,
	// handed the job back.
	if r, _ := recordOf(t, url, c); reapedBy(t, url, "A", r.JobID, 1) != events.ReapedByLease {
		t.Fatalf("attempt 1 handed back by %q, want the lease expiry", reapedBy(t, url, "A", r.JobID, 1))
	}
	_ = a.cmd.Process.Signal(syscall.SIGCONT)
	brokertest.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(a.logs.String(), "job finished") {
			return fmt.Errorf("runner A has not finished its stale attempt")
		}
		return nil
	})
	brokertest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if !strings.Contains(a.logs.String(), "a dispatcher handed it back: taking it back") {
			return fmt.Errorf("runner A did not find its job handed back")
		}
		return nil
	})
	// Once the reporter has folded every result event in, nothing has changed.
	nc, js, err := events.Connect(url, events.ConnectOptions{Name: "test", Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	brokertest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		cons, err := js.Consumer(context.Background(), events.StreamResults, events.ConsumerReporter)
		if err != nil {
			return err
		}
		info, err := cons.Info(context.Background())
		if err != nil {
			return err
		}
		if info.NumPending+uint64(info.NumAckPending) != 0 {
			return fmt.Errorf("reporter has %d events to go", info.NumPending+uint64(info.NumAckPending))
		}
		return nil
	})
	r, err := recordOf(t, url, c)
	if err != nil {
		t.Fatal(err)
	}
	if r.Runner != "B" || r.Attempt != 2 || r.Status != "passed" {
		t.Fatalf("after the late report: %+v, want attempt 2 on B", r)
	}
}
