package reporter

import (
	"errors"
	"testing"
	"time"

	"github.com/jetci/jetci/events"
)

var tA = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func runEv(kind string, seq, delivery uint64, runner, run, token string, st events.Status) any {
	ref := events.JobRef{JobID: "0123456789abcdef0123", Repo: "r", Branch: "main", Commit: "c", Job: "test", Arch: "amd64"}
	if kind == events.KindStarted {
		return &events.JobStarted{JobRef: ref, QueueSeq: seq, Attempt: delivery, Runner: runner, Run: run, Token: token}
	}
	return &events.JobFinished{JobRef: ref, QueueSeq: seq, Attempt: delivery, Runner: runner, Run: run, Token: token, Status: st,
		FinishedAt: tA.Add(10 * time.Second)}
}

// holds: runner "a" is alive and holds its job; the others are gone.
func holds(runner, _ string) bool { return runner == "a" }

// fold admits and applies an event stored at at, the way Store.apply does.
func fold(t *testing.T, r *Record, ev any, resultSeq uint64, at time.Time) error {
	t.Helper()
	why, err := r.Admit(ev, resultSeq, at, holds)
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

// TestRecordClaimsOfOneDelivery: while run-a holds delivery 1, other runs'
// claims on it wait; once run-a has ended (at +10 s), a claim stored before
// that is refused (same delivery token) or disputed (another), a replay of
// run-a's result is refused, and a run that began after run-a ended is a
// second run, kept as an attempt.
func TestRecordClaimsOfOneDelivery(t *testing.T) {
	r := &Record{}
	r.Apply(queued(5))
	if err := fold(t, r, runEv(events.KindStarted, 5, 1, "a", "run-a", "10.111", ""), 1, tA); err != nil {
		t.Fatal(err)
	}
	madeUp := runEv(events.KindFinished, 5, 1, "b", "run-b", "3.222", events.StatusFailed)
	sameToken := runEv(events.KindFinished, 5, 1, "c", "run-c", "10.111", events.StatusFailed)
	for _, ev := range []any{madeUp, sameToken} {
		if err := fold(t, r, ev, 2, tA.Add(time.Second)); !errors.Is(err, ErrWait) {
			t.Fatalf("a claim while run-a runs: %v, want ErrWait", err)
		}
	}
	if err := fold(t, r, runEv(events.KindFinished, 5, 1, "a", "run-a", "10.111", events.StatusPassed), 4, tA.Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	var d *DisputedError
	if err := fold(t, r, madeUp, 2, tA.Add(time.Second)); !errors.As(err, &d) {
		t.Errorf("a made-up claim made while run-a ran: %v, want disputed", err)
	}
	if err := fold(t, r, sameToken, 3, tA.Add(time.Second)); !errors.Is(err, events.ErrForged) {
		t.Errorf("a claim on the token run-a held: %v, want forged", err)
	}
	if r.Status != events.StatusPassed || r.Runner != "a" || r.Attempt != 1 || len(r.Attempts) != 2 {
		t.Fatalf("record: %s by %s, attempt %d of %d", r.Status, r.Runner, r.Attempt, len(r.Attempts))
	}
	if a := r.Attempts[1]; a.Runner != "b" || a.Status != events.StatusFailed || a.Disputed == "" {
		t.Errorf("the disputed run in the history: %+v", a)
	}
	if err := fold(t, r, runEv(events.KindFinished, 5, 1, "a", "run-a", "10.111", events.StatusPassed), 6, tA.Add(20*time.Second)); !errors.Is(err, events.ErrForged) {
		t.Errorf("a replay of run-a's result: %v, want forged", err)
	}
	if err := fold(t, r, runEv(events.KindFinished, 5, 1, "a", "run-a", "10.111", events.StatusPassed), 4, tA.Add(10*time.Second)); err != nil {
		t.Errorf("the same result redelivered to the reporter: %v", err)
	}
	// The server delivered the job again as delivery 1 after run-a ended (its
	// ack was lost with the server's state): a second run, an attempt.
	if err := fold(t, r, runEv(events.KindStarted, 5, 1, "e", "run-e", "10.111", ""), 7, tA.Add(30*time.Second)); err != nil {
		t.Errorf("a run that began after run-a ended: %v", err)
	}
	if len(r.Attempts) != 3 || r.Status != events.StatusPassed || r.Runner != "a" {
		t.Errorf("after the second run began: %d attempts, %s by %s", len(r.Attempts), r.Status, r.Runner)
	}
	// A genuine redelivery (delivery 2) after a hand-back is a new attempt.
	if err := fold(t, r, runEv(events.KindStarted, 5, 2, "f", "run-f", "11.333", ""), 8, tA.Add(40*time.Second)); err != nil {
		t.Fatal(err)
	}
	if r.Attempt != 4 || r.Runner != "f" {
		t.Errorf("delivery 2: attempt %d by %s", r.Attempt, r.Runner)
	}
}

// TestPowerCutRunOfOneDeliveryTakesOver: the runner of a delivery died with
// the server (a power cut); the server lost its consumer state and delivered
// the job again as delivery 1, with the same token. Once the dead runner's
// lease is gone the new run is an ordinary attempt and its result is the
// record's.
func TestPowerCutRunOfOneDeliveryTakesOver(t *testing.T) {
	r := &Record{}
	r.Apply(queued(5))
	if err := fold(t, r, runEv(events.KindStarted, 5, 1, "dead", "run-1", "10.111", ""), 1, tA); err != nil {
		t.Fatal(err)
	}
	for i, ev := range []any{runEv(events.KindStarted, 5, 1, "b", "run-2", "10.111", ""),
		runEv(events.KindFinished, 5, 1, "b", "run-2", "10.111", events.StatusPassed)} {
		if err := fold(t, r, ev, uint64(2+i), tA.Add(time.Minute)); err != nil {
			t.Fatalf("event %d of the second run: %v", i, err)
		}
	}
	if r.Status != events.StatusPassed || r.Runner != "b" || len(r.Attempts) != 2 || r.Attempt != 2 {
		t.Fatalf("record: %s by %s, attempt %d of %d", r.Status, r.Runner, r.Attempt, len(r.Attempts))
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
