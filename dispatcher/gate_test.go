package dispatcher

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

// gateHarness is a dispatcher with the broken-build flow on every branch of
// proj, driven by hand: commits go on JETCI_COMMITS, and the test calls the
// steps (hold, onResult, noteCheckJobs, release) that the consumers would.
type gateHarness struct {
	t   *testing.T
	d   *Dispatcher
	js  jetstream.JetStream
	ctx context.Context
	n   int // trigger ids made
}

func newGateHarness(t *testing.T) *gateHarness {
	s := brokertest.Run(t)
	ctx := context.Background()
	if err := events.DefaultSetup().Ensure(ctx, s.JS); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Arch = []string{"amd64"}
	cfg.Gate = []GateRule{{Repo: "proj"}}
	d, err := New(cfg, s.JS, brokertest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.openGate(ctx); err != nil {
		t.Fatal(err)
	}
	return &gateHarness{t: t, d: d, js: s.JS, ctx: ctx}
}

const onePipeline = "jobs:\n  test:\n    steps: [\"true\"]\n"

// commit publishes a commit of branch on JETCI_COMMITS and returns it with
// its sequence.
func (h *gateHarness) commit(branch, sha string) (*events.CommitDetected, uint64) {
	h.t.Helper()
	ev := commit(onePipeline)
	ev.Branch, ev.Commit, ev.Subject = branch, sha, "change "+sha
	ev.Author = events.Person{Name: sha, Email: sha + "@example.com"}
	data, err := events.Encode(ev)
	if err != nil {
		h.t.Fatal(err)
	}
	ack, err := h.js.Publish(h.ctx, events.CommitSubject(ev.Repo, ev.Branch), data)
	if err != nil {
		h.t.Fatal(err)
	}
	return ev, ack.Sequence
}

// arrive is what the commit consumer does with a first check: hold it, or
// dispatch it.
func (h *gateHarness) arrive(ev *events.CommitDetected, seq uint64) bool {
	h.t.Helper()
	held, err := h.d.hold(h.ctx, ev, seq)
	if err != nil {
		h.t.Fatal(err)
	}
	if !held {
		if err := h.d.dispatch(h.ctx, ev, seq, "", h.d.log); err != nil {
			h.t.Fatal(err)
		}
	}
	return held
}

func (h *gateHarness) state(branch string) *events.BranchState {
	h.t.Helper()
	st, _, err := h.d.branchState(h.ctx, "proj", branch)
	if err != nil {
		h.t.Fatal(err)
	}
	return st
}

// queued returns the commits whose jobs wait in the work queue for branch,
// in queue order.
func (h *gateHarness) queued(branch string) []string {
	h.t.Helper()
	stream, err := h.js.Stream(h.ctx, events.StreamJobs)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []string
	subject := events.JobSubject("default", "amd64", events.ClassFirst, "proj", branch)
	for seq := uint64(1); ; {
		raw, err := stream.GetMsg(h.ctx, seq, jetstream.WithGetMsgSubject(subject))
		if err != nil {
			break
		}
		seq = raw.Sequence + 1
		j, err := events.DecodeAs[events.JobQueued](raw.Data)
		if err != nil {
			h.t.Fatal(err)
		}
		out = append(out, j.Commit)
	}
	return out
}

// take removes a queued job from the work queue as a runner would, and
// returns it.
func (h *gateHarness) take(branch, sha string) *events.JobQueued {
	h.t.Helper()
	stream, _ := h.js.Stream(h.ctx, events.StreamJobs)
	subject := events.JobSubject("default", "amd64", events.ClassFirst, "proj", branch)
	for seq := uint64(1); ; {
		raw, err := stream.GetMsg(h.ctx, seq, jetstream.WithGetMsgSubject(subject))
		if err != nil {
			h.t.Fatalf("no queued job of %s on %s", sha, branch)
		}
		seq = raw.Sequence + 1
		j, _ := events.DecodeAs[events.JobQueued](raw.Data)
		if j.Commit == sha {
			if err := stream.DeleteMsg(h.ctx, raw.Sequence); err != nil {
				h.t.Fatal(err)
			}
			j.QueueSeq = raw.Sequence
			return j
		}
	}
}

func (h *gateHarness) finish(j *events.JobQueued, status events.Status) {
	h.t.Helper()
	fin := &events.JobFinished{JobRef: j.JobRef, QueueSeq: j.QueueSeq, Attempt: 1, Status: status, FinishedAt: time.Now().UTC(),
		Author: j.Author, Subject: j.Subject, Class: j.Class, TriggerID: j.TriggerID, Origin: j.Origin}
	if err := h.d.onResult(h.ctx, fin, 0); err != nil {
		h.t.Fatal(err)
	}
}

func (h *gateHarness) heldKeys(branch string) []string {
	h.t.Helper()
	l, err := h.d.gate.held.ListKeysFiltered(h.ctx, events.BranchKey("proj", branch)+".*")
	if err != nil {
		h.t.Fatal(err)
	}
	var out []string
	for k := range l.Keys() {
		out = append(out, k)
	}
	return out
}

// check runs the head of branch as a check of kind (as the observer would
// answer the trigger) and passes or fails its one job.
func (h *gateHarness) check(branch, kind, head string, status events.Status) {
	h.t.Helper()
	h.n++
	id := fmt.Sprintf("t%d-%s-%s", h.n, kind, head)
	class := events.ClassUser
	if kind == "second" {
		class = events.ClassSecond
	}
	if kind != "trigger" {
		if _, _, err := h.d.updateBranch(h.ctx, "proj", branch, func(st *events.BranchState) bool {
			st.Check = &events.BranchCheck{Kind: kind, TriggerID: id}
			return true
		}); err != nil {
			h.t.Fatal(err)
		}
	}
	ev := commit(onePipeline)
	ev.Branch, ev.Commit, ev.Class, ev.TriggerID = branch, head, class, id
	data, _ := events.Encode(ev)
	ack, err := h.js.Publish(h.ctx, events.CommitSubject(ev.Repo, ev.Branch), data)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := h.d.dispatch(h.ctx, ev, ack.Sequence, "", h.d.log); err != nil {
		h.t.Fatal(err)
	}
	stream, _ := h.js.Stream(h.ctx, events.StreamJobs)
	raw, err := stream.GetLastMsgForSubject(h.ctx, events.JobSubject("default", "amd64", class, "proj", branch))
	if err != nil {
		h.t.Fatal(err)
	}
	j, _ := events.DecodeAs[events.JobQueued](raw.Data)
	_ = stream.DeleteMsg(h.ctx, raw.Sequence)
	j.QueueSeq = raw.Sequence
	h.finish(j, status)
}

// TestReleasePastSequenceEightOnSeveralBranches: held keys end in a
// zero-padded decimal sequence; a release well past sequence 8, with three
// gated branches' commits interleaved on the stream, queues exactly the
// commits held on that branch, oldest first, and leaves nothing held.
func TestReleasePastSequenceEightOnSeveralBranches(t *testing.T) {
	h := newGateHarness(t)
	branches := []string{"main", "dev", "rel"}
	// Ten passing commits on each branch: sequences 1..30, interleaved.
	for i := range 10 {
		for _, b := range branches {
			ev, seq := h.commit(b, fmt.Sprintf("%s-ok%02d", b, i))
			h.arrive(ev, seq)
			h.finish(h.take(b, ev.Commit), events.StatusPassed)
		}
	}
	// Each branch breaks; then three more commits each come and are held.
	for _, b := range branches {
		ev, seq := h.commit(b, b+"-break")
		h.arrive(ev, seq)
		h.finish(h.take(b, ev.Commit), events.StatusFailed)
		if st := h.state(b); st.State != events.BranchBroken {
			t.Fatalf("%s: %s after a failed first check", b, st.State)
		}
	}
	want := map[string][]string{}
	for _, name := range []string{"fix", "notes", "more"} {
		for _, b := range branches {
			ev, seq := h.commit(b, b+"-"+name)
			if !h.arrive(ev, seq) {
				t.Fatalf("%s was not held", ev.Commit)
			}
			want[b] = append(want[b], ev.Commit)
		}
	}
	for _, b := range branches {
		if st := h.state(b); st.Held != 3 || st.Head != b+"-more" {
			t.Fatalf("%s: held %d head %q, want 3 and %s-more", b, st.Held, st.Head, b)
		}
		if got := h.queued(b); len(got) != 0 {
			t.Fatalf("%s: queued %v while broken", b, got)
		}
	}
	// The second check of each head passes: open; exactly that branch's held
	// commits are queued, oldest first.
	for _, b := range branches {
		h.check(b, "second", b+"-more", events.StatusPassed)
		st := h.state(b)
		if st.State != events.BranchOpen || st.Held != 0 {
			t.Fatalf("%s: %s with %d held after the second check passed", b, st.State, st.Held)
		}
		if got := h.queued(b); !slices.Equal(got, want[b]) {
			t.Errorf("%s released %v, want %v", b, got, want[b])
		}
		if k := h.heldKeys(b); len(k) != 0 {
			t.Errorf("%s: still held: %v", b, k)
		}
		if len(st.Fixes) != 1 || st.Fixes[0].BrokenBy != b+"-break" || st.Fixes[0].FixedBy != b+"-more" || st.Fixes[0].Released != 3 {
			t.Errorf("%s fixes %+v", b, st.Fixes)
		}
		// fix and notes are older than the check's commit: covered.
		if cov := st.Fixes[0].Covered; !slices.Equal(cov, []string{b + "-fix", b + "-notes"}) {
			t.Errorf("%s covered %v", b, cov)
		}
	}
}

// TestHeldSeqIsDecimal pins the parse that once read 010 as octal 8.
func TestHeldSeqIsDecimal(t *testing.T) {
	prefix := events.BranchKey("proj", "main") + "."
	for _, seq := range []uint64{1, 7, 8, 9, 10, 13, 18, 100, 1 << 40} {
		got, err := heldSeq(heldKey("proj", "main", seq), prefix)
		if err != nil || got != seq {
			t.Errorf("heldSeq(heldKey(%d)) = %d, %v", seq, got, err)
		}
	}
	for _, bad := range []string{"", "x", "00000000000000000000", "-1", "1.2", "0x10", "99999999999999999999999"} {
		if _, err := heldSeq(prefix+bad, prefix); err == nil {
			t.Errorf("heldSeq(%q): no error", bad)
		}
	}
	if _, err := heldSeq("other.main.00000000000000000010", prefix); err == nil {
		t.Error("another branch's key was read")
	}
}

func FuzzHeldSeq(f *testing.F) {
	prefix := events.BranchKey("proj", "main") + "."
	for _, s := range []string{"00000000000000000010", "00000000000000000018", "1", "", "0x1f", "１"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, rest string) {
		seq, err := heldSeq(prefix+rest, prefix)
		if err != nil {
			return
		}
		if seq == 0 || strings.TrimLeft(rest, "0") != fmt.Sprint(seq) {
			t.Fatalf("heldSeq(%q) = %d", rest, seq)
		}
	})
}

// TestBreakPausesWaitingJobsOfLaterCommits: commits queued before the break
// and not taken by a runner are held when the branch breaks, and queued
// again (not taken for duplicates) when it opens. A failure of a released
// commit older than the fix neither breaks the branch nor counts as new.
func TestBreakPausesWaitingJobsOfLaterCommits(t *testing.T) {
	h := newGateHarness(t)
	for i := range 9 { // past sequence 8
		ev, seq := h.commit("main", fmt.Sprintf("ok%d", i))
		h.arrive(ev, seq)
		h.finish(h.take("main", ev.Commit), events.StatusPassed)
	}
	bad, seq := h.commit("main", "break")
	h.arrive(bad, seq)
	running := h.take("main", "break") // a runner has it
	later, lseq := h.commit("main", "notes")
	h.arrive(later, lseq) // queued: the branch is still open
	taken, tseq := h.commit("main", "taken")
	h.arrive(taken, tseq)
	takenJob := h.take("main", "taken") // a runner has this one too: it runs
	if got := h.queued("main"); !slices.Equal(got, []string{"notes"}) {
		t.Fatalf("queued %v", got)
	}
	h.finish(running, events.StatusFailed)
	st := h.state("main")
	if st.State != events.BranchBroken || st.Held != 1 || st.Head != "notes" {
		t.Fatalf("after the break: %s held %d head %q", st.State, st.Held, st.Head)
	}
	if got := h.queued("main"); len(got) != 0 {
		t.Fatalf("still queued after the break: %v", got)
	}
	// A redelivered result changes nothing.
	h.finish(running, events.StatusFailed)
	if st := h.state("main"); st.Held != 1 {
		t.Fatalf("held %d after a redelivered result", st.Held)
	}
	h.finish(takenJob, events.StatusFailed) // ran; the branch is broken already
	// A commit arrives while broken: held, and it is the head now.
	fix, fseq := h.commit("main", "fix")
	if !h.arrive(fix, fseq) {
		t.Fatal("fix not held")
	}
	h.check("main", "second", "fix", events.StatusPassed)
	st = h.state("main")
	if st.State != events.BranchOpen || st.Held != 0 {
		t.Fatalf("after the check: %s held %d", st.State, st.Held)
	}
	if got := h.queued("main"); !slices.Equal(got, []string{"notes", "fix"}) {
		t.Fatalf("released %v", got)
	}
	// notes contains the break: it fails, and that is the break's failure.
	h.finish(h.take("main", "notes"), events.StatusFailed)
	st = h.state("main")
	if st.State != events.BranchOpen {
		t.Fatalf("a covered commit's failure moved the branch to %s: %s", st.State, st.Reason)
	}
	if f := st.CoveredBy("notes"); f == nil || f.BrokenBy != "break" || f.FixedBy != "fix" {
		t.Fatalf("notes covered by %+v", f)
	}
	if st.CoveredBy("fix") != nil {
		t.Error("the fix itself is covered")
	}
	// A new commit after the fix that fails breaks it again.
	h.finish(h.take("main", "fix"), events.StatusPassed)
	nb, nseq := h.commit("main", "new-break")
	h.arrive(nb, nseq)
	h.finish(h.take("main", "new-break"), events.StatusFailed)
	if st := h.state("main"); st.State != events.BranchBroken || st.BrokenBy.Commit != "new-break" {
		t.Fatalf("a new failure after the fix: %s by %v", st.State, st.BrokenBy)
	}
}

// TestTriggerOfTheHeadOpensAFailedBranch: the rule is that any full passing
// run of the head of a broken or failed branch opens it; `jetci trigger`
// of the head is such a run. A failing trigger leaves a failed branch failed
// and a broken branch broken (its second check still comes); a run of an
// older commit, or of one job, decides nothing.
func TestTriggerOfTheHeadOpensAFailedBranch(t *testing.T) {
	h := newGateHarness(t)
	for i := range 9 {
		ev, seq := h.commit("main", fmt.Sprintf("ok%d", i))
		h.arrive(ev, seq)
		h.finish(h.take("main", ev.Commit), events.StatusPassed)
	}
	bad, seq := h.commit("main", "break")
	h.arrive(bad, seq)
	h.finish(h.take("main", "break"), events.StatusFailed)
	// A failing trigger of the head inside the window: still broken.
	h.check("main", "trigger", "break", events.StatusFailed)
	if st := h.state("main"); st.State != events.BranchBroken || st.Check != nil {
		t.Fatalf("after a failing trigger inside the window: %s, check %+v", st.State, st.Check)
	}
	h.check("main", "second", "break", events.StatusFailed)
	st := h.state("main")
	if st.State != events.BranchFailed || st.FailedCheck != "break" {
		t.Fatalf("after the failing second check: %s failed check %q", st.State, st.FailedCheck)
	}
	fix, fseq := h.commit("main", "fix")
	h.arrive(fix, fseq)
	// A trigger of an older commit is no check.
	h.check("main", "trigger", "break", events.StatusPassed)
	if st := h.state("main"); st.State != events.BranchFailed {
		t.Fatalf("a passing run of an older commit opened the branch: %s", st.State)
	}
	// The head, triggered, passes: open, and the held fix is released.
	h.check("main", "trigger", "fix", events.StatusPassed)
	st = h.state("main")
	if st.State != events.BranchOpen || st.Held != 0 || len(st.Fixes) != 1 || st.Fixes[0].Kind != "trigger" || st.Fixes[0].FixedBy != "fix" {
		t.Fatalf("after a passing trigger of the head: %s held %d fixes %+v", st.State, st.Held, st.Fixes)
	}
	if got := h.queued("main"); !slices.Equal(got, []string{"fix"}) {
		t.Errorf("released %v", got)
	}
}

// TestCancelledCheckDecidesNothing: a check whose run someone cancels is
// dropped, so that the second check can run when the window ends.
func TestCancelledCheckDecidesNothing(t *testing.T) {
	h := newGateHarness(t)
	bad, seq := h.commit("main", "break")
	h.arrive(bad, seq)
	h.finish(h.take("main", "break"), events.StatusFailed)
	if _, _, err := h.d.updateBranch(h.ctx, "proj", "main", func(st *events.BranchState) bool {
		st.Check = &events.BranchCheck{Kind: "second", TriggerID: "t-cancelled"}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	ref := events.JobRef{Repo: "proj", Branch: "main", Commit: "break", Job: "test", Arch: "amd64"}
	ref.JobID = events.JobID(ref.Repo, ref.Branch, ref.Commit, ref.Job, ref.Arch)
	fin := &events.JobFinished{JobRef: ref, QueueSeq: 99, Attempt: 1, Status: events.StatusCancelled, Error: "cancelled by admin",
		Class: events.ClassSecond, TriggerID: "t-cancelled", FinishedAt: time.Now().UTC()}
	if err := h.d.onResult(h.ctx, fin, 0); err != nil {
		t.Fatal(err)
	}
	if st := h.state("main"); st.State != events.BranchBroken || st.Check != nil {
		t.Fatalf("after a cancelled check: %s, check %+v", st.State, st.Check)
	}
}
