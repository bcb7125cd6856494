package reporter

import (
	"testing"
	"time"

	"github.com/jetci/jetci/events"
)

var ref = events.JobRef{JobID: events.JobID("r", "main", "c1", "test", "amd64"), Repo: "r", Branch: "main", Commit: "c1", Job: "test", Arch: "amd64"}

func queued(seq uint64) *events.JobQueued {
	return &events.JobQueued{JobRef: ref, Pool: "default", Class: events.ClassFirst, QueueSeq: seq, QueuedAt: time.Unix(100, 0),
		Author: events.Person{Name: "Dev", Email: "dev@example.com"}, Subject: "add tests"}
}
func started(seq, attempt uint64, runner string) *events.JobStarted {
	return &events.JobStarted{JobRef: ref, QueueSeq: seq, Attempt: attempt, Runner: runner, StartedAt: time.Unix(101, 0)}
}
func finished(seq, attempt uint64, runner string, st events.Status) *events.JobFinished {
	return &events.JobFinished{JobRef: ref, QueueSeq: seq, Attempt: attempt, Runner: runner, Status: st, FinishedAt: time.Unix(102, 0), DurationMs: 7}
}

func TestRecordApply(t *testing.T) {
	tests := []struct {
		name       string
		evs        []any
		status     events.Status
		attempt    uint64
		runner     string
		wantAuthor bool
	}{
		{"in order", []any{queued(5), started(5, 1, "a"), finished(5, 1, "a", events.StatusPassed)}, events.StatusPassed, 1, "a", true},
		{"queued event arrives last", []any{started(5, 1, "a"), finished(5, 1, "a", events.StatusFailed), queued(5)}, events.StatusFailed, 1, "a", true},
		{"redelivered: attempt 2 wins", []any{queued(5), started(5, 1, "a"), started(5, 2, "b"), finished(5, 2, "b", events.StatusPassed)}, events.StatusPassed, 2, "b", true},
		{"stale runner reports late", []any{queued(5), started(5, 1, "a"), started(5, 2, "b"), finished(5, 2, "b", events.StatusPassed), finished(5, 1, "a", events.StatusFailed)}, events.StatusPassed, 2, "b", true},
		{"late start after finish", []any{finished(5, 1, "a", events.StatusPassed), started(5, 1, "a")}, events.StatusPassed, 1, "a", false},
		{"duplicate finish", []any{finished(5, 1, "a", events.StatusPassed), finished(5, 1, "a", events.StatusFailed)}, events.StatusPassed, 1, "a", false},
		{"re-run resets", []any{queued(5), finished(5, 1, "a", events.StatusFailed), queued(9)}, events.StatusQueued, 0, "", true},
		{"re-run finishes", []any{queued(5), finished(5, 1, "a", events.StatusFailed), queued(9), started(9, 1, "b"), finished(9, 1, "b", events.StatusPassed)}, events.StatusPassed, 2, "b", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r Record
			for _, ev := range tt.evs {
				r.Apply(ev)
			}
			if r.Status != tt.status || r.Attempt != tt.attempt || r.Runner != tt.runner {
				t.Fatalf("got status %s attempt %d runner %q, want %s %d %q", r.Status, r.Attempt, r.Runner, tt.status, tt.attempt, tt.runner)
			}
			if r.Commit != "c1" || r.Job != "test" || r.Arch != "amd64" || r.Branch != "main" {
				t.Fatalf("identity lost: %+v", r)
			}
			if got := r.Author.Name == "Dev"; got != tt.wantAuthor {
				t.Fatalf("author set %v, want %v", got, tt.wantAuthor)
			}
		})
	}
}

func TestRecordApplyReportsNoChangeForDuplicates(t *testing.T) {
	var r Record
	if !r.Apply(finished(5, 1, "a", events.StatusPassed)) {
		t.Fatal("first finish: want a change")
	}
	if r.Apply(finished(5, 1, "a", events.StatusPassed)) {
		t.Fatal("duplicate finish: want no change")
	}
}

func TestRecordKeepsEveryAttempt(t *testing.T) {
	var r Record
	for _, ev := range []any{
		queued(5), started(5, 1, "a"), started(5, 2, "b"), finished(5, 2, "b", events.StatusFailed),
		finished(5, 1, "a", events.StatusPassed), // the presumed-dead runner reports late
		queued(9), started(9, 1, "c"), finished(9, 1, "c", events.StatusPassed),
	} {
		r.Apply(ev)
	}
	if len(r.Attempts) != 3 || r.Attempt != 3 || r.Status != events.StatusPassed {
		t.Fatalf("attempt %d status %s history %+v", r.Attempt, r.Status, r.Attempts)
	}
	want := []struct {
		n, seq, delivery uint64
		runner           string
		status           events.Status
	}{{1, 5, 1, "a", events.StatusPassed}, {2, 5, 2, "b", events.StatusFailed}, {3, 9, 1, "c", events.StatusPassed}}
	for i, w := range want {
		a := r.Attempts[i]
		if a.N != w.n || a.QueueSeq != w.seq || a.Delivery != w.delivery || a.Runner != w.runner || a.Status != w.status || a.Class != events.ClassFirst {
			t.Errorf("attempt %d = %+v, want %+v", i, a, w)
		}
	}
	if !r.Attempts[0].QueuedAt.Equal(time.Unix(100, 0)) || !r.Attempts[2].QueuedAt.Equal(time.Unix(100, 0)) {
		t.Errorf("attempts lack their queue time: %v %v", r.Attempts[0].QueuedAt, r.Attempts[2].QueuedAt)
	}
	if r.Find(2) == nil || r.Find(4) != nil {
		t.Fatal("Find")
	}
}

func TestRecordHistoryIsBounded(t *testing.T) {
	var r Record
	for seq := uint64(1); seq <= MaxAttempts+10; seq++ {
		r.Apply(queued(seq))
		r.Apply(finished(seq, 1, "a", events.StatusPassed))
	}
	if len(r.Attempts) != MaxAttempts || r.Dropped != 10 || r.Attempt != MaxAttempts+10 || r.Attempts[0].N != 11 {
		t.Fatalf("len %d dropped %d attempt %d first %d", len(r.Attempts), r.Dropped, r.Attempt, r.Attempts[0].N)
	}
}

// TestRecordKeepsItsPlaceInTheBranch: a job superseded before it ran (no
// attempt) and later run by a culprit search keeps the time it was first
// queued, so the old commit does not move to the top of its branch.
func TestRecordKeepsItsPlaceInTheBranch(t *testing.T) {
	var r Record
	r.Apply(queued(5))
	cancelled := finished(5, 0, "", events.StatusCancelled)
	r.Apply(cancelled)
	later := queued(9)
	later.Class, later.TriggerID, later.QueuedAt = events.ClassBisect, "bisect-x-0", time.Unix(5000, 0)
	r.Apply(later)
	if r.QueueSeq != 9 || !r.QueuedAt.Equal(time.Unix(5000, 0)) {
		t.Fatalf("the bisection run is the record's current run: %+v", r)
	}
	if got := firstSeen(&r); !got.Equal(time.Unix(100, 0)) {
		t.Fatalf("first seen %v, want the first queue time %v", got, time.Unix(100, 0))
	}
}

// TestRecordFromBeforeFirstQueuedAt: a record stored by a version without
// first_queued_at keeps its place when a later run of it is queued.
func TestRecordFromBeforeFirstQueuedAt(t *testing.T) {
	var r Record
	r.Apply(queued(5))
	r.Apply(finished(5, 0, "", events.StatusCancelled))
	r.FirstQueuedAt = time.Time{} // as the earlier version stored it
	later := queued(9)
	later.Class, later.QueuedAt = events.ClassBisect, time.Unix(5000, 0)
	r.Apply(later)
	if got := firstSeen(&r); !got.Equal(time.Unix(100, 0)) {
		t.Fatalf("first seen %v, want %v", got, time.Unix(100, 0))
	}
}

// TestRecordKeepsEachWaitingRunsClass: a trigger queues a run of a job whose
// periodic run still waits; the trigger's run goes first. Both runs are
// attempts with their own class, trigger and queue time, and nothing waits
// after both ran.
func TestRecordKeepsEachWaitingRunsClass(t *testing.T) {
	var r Record
	periodic := queued(5)
	periodic.Class, periodic.QueuedAt = events.ClassPeriodic, time.Unix(50, 0)
	user := queued(9)
	user.Class, user.TriggerID, user.QueuedAt = events.ClassUser, "t1", time.Unix(90, 0)
	r.Apply(periodic)
	r.Apply(user)
	if len(r.Waiting) != 2 || r.Class != events.ClassUser {
		t.Fatalf("waiting %+v class %s", r.Waiting, r.Class)
	}
	for _, ev := range []any{started(9, 1, "a"), finished(9, 1, "a", events.StatusPassed), started(5, 1, "a"), finished(5, 1, "a", events.StatusFailed)} {
		r.Apply(ev)
	}
	if len(r.Attempts) != 2 || len(r.Waiting) != 0 {
		t.Fatalf("attempts %+v waiting %+v", r.Attempts, r.Waiting)
	}
	p, u := r.Attempts[0], r.Attempts[1]
	if p.QueueSeq != 5 || p.Class != events.ClassPeriodic || !p.QueuedAt.Equal(time.Unix(50, 0)) || p.Status != events.StatusFailed {
		t.Errorf("the periodic run's attempt: %+v", p)
	}
	if u.QueueSeq != 9 || u.Class != events.ClassUser || u.TriggerID != "t1" || !u.QueuedAt.Equal(time.Unix(90, 0)) {
		t.Errorf("the triggered run's attempt: %+v", u)
	}
}

// TestRecordWithdrawnJobIsPaused: a queued job withdrawn from the queue when
// its branch broke shows as paused, and as queued again when released.
func TestRecordWithdrawnJobIsPaused(t *testing.T) {
	var r Record
	r.Apply(queued(5))
	w := queued(5)
	w.Held = true
	if !r.Apply(w) || r.Status != events.StatusHeld || len(r.Waiting) != 0 {
		t.Fatalf("withdrawn: %s waiting %+v", r.Status, r.Waiting)
	}
	r.Apply(queued(8))
	if r.Status != events.StatusQueued || r.QueueSeq != 8 {
		t.Fatalf("released: %s at %d", r.Status, r.QueueSeq)
	}
	// A withdrawn event for a run that started is too late: it runs.
	r.Apply(started(8, 1, "a"))
	w8 := queued(8)
	w8.Held = true
	r.Apply(w8)
	if r.Status != events.StatusRunning {
		t.Fatalf("a started job was paused: %s", r.Status)
	}
}

// TestRecordAgedRunIsTheSameRun: aging queues a waiting run anew at a higher
// class; the record waits for it once, not for both queue entries.
func TestRecordAgedRunIsTheSameRun(t *testing.T) {
	var r Record
	periodic := queued(5)
	periodic.Class = events.ClassPeriodic
	first := queued(6)
	r.Apply(periodic)
	r.Apply(first)
	aged := queued(9)
	aged.Class, aged.Origin = events.ClassFirst, events.ClassPeriodic
	r.Apply(aged)
	if len(r.Waiting) != 2 || r.Waiting[0].QueueSeq != 6 || r.Waiting[1].QueueSeq != 9 || r.Waiting[1].Origin != events.ClassPeriodic {
		t.Fatalf("waiting %+v", r.Waiting)
	}
}

// TestRecordSaysHowTheStepsRan: the record carries the backend and the
// emulation of the attempt that finished, and a new attempt clears them.
func TestRecordSaysHowTheStepsRan(t *testing.T) {
	var r Record
	f := finished(5, 1, "a", events.StatusPassed)
	f.Exec, f.Emulation = "sandbox", "qemu-aarch64 user emulation (binfmt_misc) on amd64"
	r.Apply(queued(5))
	r.Apply(started(5, 1, "a"))
	r.Apply(f)
	if r.Exec != "sandbox" || r.Emulation != f.Emulation {
		t.Fatalf("record %+v", r)
	}
	r.Apply(started(5, 2, "b"))
	if r.Exec != "" || r.Emulation != "" {
		t.Fatalf("a new attempt kept the old one's: %+v", r)
	}
}
