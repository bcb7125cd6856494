package reporter

import (
	"errors"
	"testing"
	"time"

	"github.com/jetci/jetci/events"
)

func runEv(kind string, seq, delivery uint64, runner, run, token string, st events.Status) any {
	ref := events.JobRef{JobID: "0123456789abcdef0123", Repo: "r", Branch: "main", Commit: "c", Job: "test", Arch: "amd64"}
	if kind == events.KindStarted {
		return &events.JobStarted{JobRef: ref, QueueSeq: seq, Attempt: delivery, Runner: runner, Run: run, Token: token}
	}
	return &events.JobFinished{JobRef: ref, QueueSeq: seq, Attempt: delivery, Runner: runner, Run: run, Token: token, Status: st}
}

// holds: runner "a" is alive and holds its job; the others are gone.
func holds(runner, _ string) bool { return runner == "a" }

// fold admits and applies an event the way Store.apply does.
func fold(t *testing.T, r *Record, ev any, resultSeq uint64) error {
	t.Helper()
	why, err := r.Admit(ev, resultSeq, holds)
	if err != nil {
		return err
	}
	if why != "" {
		r.Dispute(ev, why)
		return &DisputedError{Why: why}
	}
	r.Apply(ev)
	if fin, ok := ev.(*events.JobFinished); ok {
		r.markResult(fin.Run, resultSeq)
	}
	return nil
}

// TestRecordTwoRunsOfOneDelivery: the server delivered a job twice as
// delivery 1 (it lost its consumer state): both runs are in the history, the
// second disputed, and the first's result stands; a third run naming the first
// one's delivery token, and a replay of the first's result, are refused.
func TestRecordTwoRunsOfOneDelivery(t *testing.T) {
	r := &Record{}
	r.Apply(queued(5))
	if err := fold(t, r, runEv(events.KindStarted, 5, 1, "a", "run-a", "10.111", ""), 1); err != nil {
		t.Fatal(err)
	}
	var d *DisputedError
	if err := fold(t, r, runEv(events.KindStarted, 5, 1, "b", "run-b", "3.222", ""), 2); !errors.As(err, &d) {
		t.Fatalf("second run of delivery 1: %v, want disputed", err)
	}
	if err := fold(t, r, runEv(events.KindFinished, 5, 1, "b", "run-b", "3.222", events.StatusFailed), 3); !errors.As(err, &d) {
		t.Fatalf("second run's result: %v, want disputed", err)
	}
	if r.Status != events.StatusRunning || r.Runner != "a" {
		t.Fatalf("the disputed run changed the record: %s by %s", r.Status, r.Runner)
	}
	if err := fold(t, r, runEv(events.KindFinished, 5, 1, "a", "run-a", "10.111", events.StatusPassed), 4); err != nil {
		t.Fatal(err)
	}
	if r.Status != events.StatusPassed || r.Runner != "a" || r.Attempt != 1 || len(r.Attempts) != 2 {
		t.Fatalf("record: %s by %s, attempt %d of %d", r.Status, r.Runner, r.Attempt, len(r.Attempts))
	}
	if a := r.Attempts[1]; a.Runner != "b" || a.Status != events.StatusFailed || a.Disputed == "" {
		t.Errorf("the second run in the history: %+v", a)
	}
	if err := fold(t, r, runEv(events.KindFinished, 5, 1, "c", "run-c", "10.111", events.StatusFailed), 5); !errors.Is(err, events.ErrForged) {
		t.Errorf("a claim on run-a's delivery token: %v, want forged", err)
	}
	if err := fold(t, r, runEv(events.KindFinished, 5, 1, "a", "run-a", "10.111", events.StatusPassed), 6); !errors.Is(err, events.ErrForged) {
		t.Errorf("a replay of run-a's result: %v, want forged", err)
	}
	if err := fold(t, r, runEv(events.KindFinished, 5, 1, "a", "run-a", "10.111", events.StatusPassed), 4); err != nil {
		t.Errorf("the same result redelivered to the reporter: %v", err)
	}
	// A genuine redelivery (delivery 2) after a hand-back is a new attempt.
	if err := fold(t, r, runEv(events.KindStarted, 5, 2, "c", "run-c2", "11.333", ""), 7); err != nil {
		t.Fatal(err)
	}
	if r.Attempt != 3 || r.Runner != "c" {
		t.Errorf("delivery 2: attempt %d by %s", r.Attempt, r.Runner)
	}
}

// TestLimiterBackoff: three wrong tokens are free, then each doubles the wait;
// the right one clears it.
func TestLimiterBackoff(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newLimiter()
	l.now = func() time.Time { return now }
	var last time.Duration
	for i := 1; i <= 8; i++ {
		fails, backoff, logNow, _ := l.fail("1.2.3.4")
		if fails != i || (i <= freeFails) != (backoff == 0) {
			t.Fatalf("fail %d: %d, backoff %s", i, fails, backoff)
		}
		if i > freeFails+1 && backoff != 2*last {
			t.Errorf("fail %d: backoff %s after %s", i, backoff, last)
		}
		if logNow != (i == 1) {
			t.Errorf("fail %d logged: %v", i, logNow)
		}
		last = backoff
	}
	if w := l.wait("1.2.3.4"); w != last {
		t.Errorf("wait %s, want %s", w, last)
	}
	if l.wait("5.6.7.8") != 0 {
		t.Error("another client waits")
	}
	now = now.Add(time.Hour)
	if _, _, logNow, held := l.fail("1.2.3.4"); !logNow || held != 7 {
		t.Errorf("a minute later: logged %v with %d held", logNow, held)
	}
	l.ok("1.2.3.4")
	if l.wait("1.2.3.4") != 0 {
		t.Error("the right token did not clear the backoff")
	}
}

// TestPowerCutRunOfOneDeliveryTakesOver: the runner of a delivery died with
// the server (a power cut); the server lost its consumer state and delivered
// the job again as delivery 1. The new run is an ordinary attempt and its
// result is the record's.
func TestPowerCutRunOfOneDeliveryTakesOver(t *testing.T) {
	r := &Record{}
	r.Apply(queued(5))
	if err := fold(t, r, runEv(events.KindStarted, 5, 1, "dead", "run-1", "10.111", ""), 1); err != nil {
		t.Fatal(err)
	}
	for i, ev := range []any{runEv(events.KindStarted, 5, 1, "b", "run-2", "1.999", ""),
		runEv(events.KindFinished, 5, 1, "b", "run-2", "1.999", events.StatusPassed)} {
		if err := fold(t, r, ev, uint64(2+i)); err != nil {
			t.Fatalf("event %d of the second run: %v", i, err)
		}
	}
	if r.Status != events.StatusPassed || r.Runner != "b" || len(r.Attempts) != 2 || r.Attempt != 2 {
		t.Fatalf("record: %s by %s, attempt %d of %d", r.Status, r.Runner, r.Attempt, len(r.Attempts))
	}
}
