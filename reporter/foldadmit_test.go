package reporter

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

// TestFoldAdmitsBeforeItWrites: the SQL fold checks signatures and claims
// before it writes a record. An unsigned result is recorded as a refused bad
// event and kept in jetci-forgeries, and the record stays as it was; a claim
// on a delivery a live run holds waits in the record (not shown to readers)
// and, once that run ends, is refused (same delivery token) without changing
// the record; a rebuild refuses the same events.
func TestFoldAdmitsBeforeItWrites(t *testing.T) {
	s := brokertest.Run(t)
	ctx := context.Background()
	dsn := filepath.Join(t.TempDir(), DBFile)
	r, stop := runReporter(t, s.JS, dsn, "")
	ts := newTestSigner(s.JS)
	ref := events.JobRef{JobID: "0123456789abcdef0123", Repo: "r", Branch: "main", Commit: "c0ffee", Job: "test", Arch: "amd64"}
	subj := func(kind string) string { return events.ResultSubject(ref.Repo, ref.Branch, kind) }

	ts.publish(ctx, t, subj(events.KindQueued), &events.JobQueued{JobRef: ref, Pool: "default", Class: events.ClassFirst, QueueSeq: 5, QueuedAt: time.Now()})
	// Runner a holds delivery 1 of run 5: its lease names the job.
	runners, err := s.JS.KeyValue(ctx, events.BucketRunners)
	if err != nil {
		t.Fatal(err)
	}
	lease, _ := json.Marshal(events.Lease{ID: "a", Arch: "amd64", Pool: "default", Slots: 1, Busy: 1,
		Jobs: []events.LeasedJob{{JobID: ref.JobID, Attempt: 1}}, HeartbeatAt: time.Now()})
	if _, err := runners.Put(ctx, events.LeaseKey("a"), lease); err != nil {
		t.Fatal(err)
	}
	ts.publish(ctx, t, subj(events.KindStarted), &events.JobStarted{JobRef: ref, QueueSeq: 5, Attempt: 1, Runner: "a", Run: "run-a", Token: "5.1", StartedAt: time.Now()})

	// An unsigned "passed" for run-a.
	forged, _ := events.Encode(&events.JobFinished{JobRef: ref, QueueSeq: 5, Attempt: 1, Runner: "a", Run: "run-a", Token: "5.1",
		Status: events.StatusPassed, FinishedAt: time.Now()})
	if _, err := s.JS.Publish(ctx, subj(events.KindFinished), forged); err != nil {
		t.Fatal(err)
	}
	// Runner b claims the same delivery, with the same token, while a runs.
	ts.publish(ctx, t, subj(events.KindStarted), &events.JobStarted{JobRef: ref, QueueSeq: 5, Attempt: 1, Runner: "b", Run: "run-b", Token: "5.1", StartedAt: time.Now()})
	waitApplied(t, s.JS, r.View().DB())

	rec, ok := r.View().Job(ref.JobID)
	if !ok || rec.Status != events.StatusRunning || rec.Runner != "a" || len(rec.Pending) != 0 {
		t.Fatalf("record after the forged result and the waiting claim: ok %v status %s runner %s pending %d", ok, rec.Status, rec.Runner, len(rec.Pending))
	}
	row, err := r.View().DB().Job(ctx, ref.JobID)
	if err != nil {
		t.Fatal(err)
	}
	var stored Record
	if err := json.Unmarshal(row.Data, &stored); err != nil || len(stored.Pending) != 1 {
		t.Fatalf("stored record: %d pending, want run-b's claim waiting (%v)", len(stored.Pending), err)
	}

	// Run a ends: run-b's claim, made while it ran with its token, is refused.
	ts.publish(ctx, t, subj(events.KindFinished), &events.JobFinished{JobRef: ref, QueueSeq: 5, Attempt: 1, Runner: "a", Run: "run-a", Token: "5.1",
		Status: events.StatusFailed, ExitCode: 1, FinishedAt: time.Now().Add(time.Minute)})
	waitApplied(t, s.JS, r.View().DB())
	rec, _ = r.View().Job(ref.JobID)
	if rec.Status != events.StatusFailed || rec.Runner != "a" || len(rec.Attempts) != 1 {
		t.Fatalf("record: status %s runner %s, %d attempts; want failed by a, one attempt", rec.Status, rec.Runner, len(rec.Attempts))
	}
	refusedIn := func() []string {
		t.Helper()
		bad, err := r.View().DB().BadEvents(ctx, 10)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, b := range bad {
			if strings.HasPrefix(b.Error, "refused: ") {
				out = append(out, fmt.Sprintf("%d", b.Seq))
			}
		}
		return out
	}
	if got := refusedIn(); len(got) != 2 {
		t.Fatalf("refused bad events %v, want the unsigned result and run-b's claim", got)
	}
	fg, err := s.JS.KeyValue(ctx, events.BucketForgeries)
	if err != nil {
		t.Fatal(err)
	}
	brokertest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		keys, _ := fg.Keys(ctx)
		if len(keys) < 2 {
			return fmt.Errorf("%d forgeries kept, want 2", len(keys))
		}
		return nil
	})
	stop()

	// A rebuild from the stream refuses the same events.
	live := dump(t, dsn)
	other := filepath.Join(t.TempDir(), DBFile)
	st, err := Reindex(ctx, s.JS, other, brokertest.Logger(t))
	if err != nil || st.Bad != 2 {
		t.Fatalf("reindex: %+v %v, want 2 refused", st, err)
	}
	if rebuilt := dump(t, other); rebuilt != live {
		t.Fatalf("the rebuild differs from the live read model:\nlive    %.400s\nrebuilt %.400s", live, rebuilt)
	}
}

// TestFoldClaimWaitingOnAGoneRunner: after a power cut the server hands a
// job out again as the same delivery. The new run's events wait in the
// record while the dead runner's lease still names the job; when the lease
// goes (the reaper deletes it), the fold judges them again without any new
// event for that job, and the new run's result becomes the record's.
func TestFoldClaimWaitingOnAGoneRunner(t *testing.T) {
	s := brokertest.Run(t)
	ctx := context.Background()
	r, _ := runReporter(t, s.JS, filepath.Join(t.TempDir(), DBFile), "")
	ts := newTestSigner(s.JS)
	ref := events.JobRef{JobID: "00112233445566778899", Repo: "r", Branch: "main", Commit: "c0ffee", Job: "test", Arch: "amd64"}
	subj := func(kind string) string { return events.ResultSubject(ref.Repo, ref.Branch, kind) }

	ts.publish(ctx, t, subj(events.KindQueued), &events.JobQueued{JobRef: ref, Pool: "default", Class: events.ClassFirst, QueueSeq: 7, QueuedAt: time.Now()})
	runners, err := s.JS.KeyValue(ctx, events.BucketRunners)
	if err != nil {
		t.Fatal(err)
	}
	lease, _ := json.Marshal(events.Lease{ID: "dead", Arch: "amd64", Pool: "default", Slots: 1, Busy: 1,
		Jobs: []events.LeasedJob{{JobID: ref.JobID, Attempt: 1}}, HeartbeatAt: time.Now()})
	if _, err := runners.Put(ctx, events.LeaseKey("dead"), lease); err != nil {
		t.Fatal(err)
	}
	ts.publish(ctx, t, subj(events.KindStarted), &events.JobStarted{JobRef: ref, QueueSeq: 7, Attempt: 1, Runner: "dead", Run: "run-1", Token: "7.1", StartedAt: time.Now()})
	// The power comes back: runner b runs delivery 1 again and finishes it
	// while the dead runner's lease is still there.
	ts.publish(ctx, t, subj(events.KindStarted), &events.JobStarted{JobRef: ref, QueueSeq: 7, Attempt: 1, Runner: "b", Run: "run-2", Token: "7.1", StartedAt: time.Now()})
	ts.publish(ctx, t, subj(events.KindFinished), &events.JobFinished{JobRef: ref, QueueSeq: 7, Attempt: 1, Runner: "b", Run: "run-2", Token: "7.1",
		Status: events.StatusPassed, FinishedAt: time.Now()})
	waitApplied(t, s.JS, r.View().DB())
	if rec, _ := r.View().Job(ref.JobID); rec.Status != events.StatusRunning || rec.Runner != "dead" {
		t.Fatalf("while the dead runner's lease names the job: %s by %s, want running by dead", rec.Status, rec.Runner)
	}
	if ids, err := r.View().DB().Waiting(ctx, 10); err != nil || len(ids) != 1 || ids[0] != ref.JobID {
		t.Fatalf("waiting jobs %v (%v), want %s", ids, err, ref.JobID)
	}

	// The reaper deletes the lease; no event for the job comes.
	if err := runners.Delete(ctx, events.LeaseKey("dead")); err != nil {
		t.Fatal(err)
	}
	brokertest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		rec, _ := r.View().Job(ref.JobID)
		if rec.Status != events.StatusPassed || rec.Runner != "b" || rec.Attempt != 2 {
			return fmt.Errorf("record: %s by %s, attempt %d; want passed by b, attempt 2", rec.Status, rec.Runner, rec.Attempt)
		}
		return nil
	})
	if ids, err := r.View().DB().Waiting(ctx, 10); err != nil || len(ids) != 0 {
		t.Fatalf("waiting jobs after the rejudge: %v (%v)", ids, err)
	}
}

// TestTestHistoryOnlyFromTakenResults: the test history takes a runner's
// result the fold took (without checking its signature a second time: the
// fold did), never an unsigned result claiming the same run, and takes a
// service's result with tests after checking its signature.
func TestTestHistoryOnlyFromTakenResults(t *testing.T) {
	s := brokertest.Run(t)
	ctx := context.Background()
	runReporter(t, s.JS, filepath.Join(t.TempDir(), DBFile), "")
	ts := newTestSigner(s.JS)
	ref := events.JobRef{JobID: "0123456789abcdef0124", Repo: "r", Branch: "main", Commit: "c0ffee", Job: "test", Arch: "amd64"}
	subj := func(kind string) string { return events.ResultSubject(ref.Repo, ref.Branch, kind) }
	tests := func(name string) []events.TestResult {
		return []events.TestResult{{Name: name, Status: "passed", DurationMs: 1}}
	}
	ts.publish(ctx, t, subj(events.KindQueued), &events.JobQueued{JobRef: ref, Pool: "default", Class: events.ClassFirst, QueueSeq: 5, QueuedAt: time.Now()})
	ts.publish(ctx, t, subj(events.KindStarted), &events.JobStarted{JobRef: ref, QueueSeq: 5, Attempt: 1, Runner: "a", Run: "run-a", Token: "5.1", StartedAt: time.Now()})
	forged, _ := events.Encode(&events.JobFinished{JobRef: ref, QueueSeq: 5, Attempt: 1, Runner: "a", Run: "run-a", Token: "5.1",
		Status: events.StatusPassed, FinishedAt: time.Now(), Tests: tests("TestForged")})
	if _, err := s.JS.Publish(ctx, subj(events.KindFinished), forged); err != nil {
		t.Fatal(err)
	}
	ts.publish(ctx, t, subj(events.KindFinished), &events.JobFinished{JobRef: ref, QueueSeq: 5, Attempt: 1, Runner: "a", Run: "run-a", Token: "5.1",
		Status: events.StatusPassed, FinishedAt: time.Now(), Tests: tests("TestReal")})
	// A service's result with tests (another job): no run to mark, its
	// signature is checked.
	ref2 := ref
	ref2.JobID, ref2.Job = "0123456789abcdef0125", "other"
	ts.publish(ctx, t, events.ResultSubject(ref2.Repo, ref2.Branch, events.KindFinished), &events.JobFinished{JobRef: ref2,
		Status: events.StatusError, FinishedAt: time.Now(), Tests: tests("TestService")})
	kv, err := s.JS.KeyValue(ctx, events.BucketTests)
	if err != nil {
		t.Fatal(err)
	}
	history := func(ref events.JobRef) string {
		e, err := kv.Get(ctx, events.TestsKey(ref.Repo, ref.Branch, ref.Arch, ref.Job))
		if err != nil {
			return ""
		}
		return string(e.Value())
	}
	brokertest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(history(ref), "TestReal") || !strings.Contains(history(ref2), "TestService") {
			return fmt.Errorf("test history: %q, %q", history(ref), history(ref2))
		}
		return nil
	})
	// The forged result came first: by the time the real one is in, it was
	// judged (and refused).
	if h := history(ref); strings.Contains(h, "TestForged") {
		t.Fatalf("the unsigned result reached the test history: %s", h)
	}
}
