package reporter

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/forge"
	"github.com/jetci/jetci/forge/forgetest"
)

// TestCombinedStatus: with combined: jetci, each commit gets one more
// context, the worst state of its jobs, posted once per change of that
// state: pending while its jobs wait, failure as soon as one fails (the
// others passing after it change nothing), success when all pass. A job's
// result that comes again (a redelivery) posts nothing new, and a combined
// state recorded by a reporter that died before its outbox put is posted
// when the job status comes again, once.
func TestCombinedStatus(t *testing.T) {
	fs := forgetest.Start(t, forge.GitHub, "octo/proj", "tok")
	repo := fs.Repo("proj")
	repo.Combined = "jetci"
	f, _ := newNotifyFixture(t, nil, NotifyConfig{PublicURL: "https://ci.example.com", Forges: []forge.Repo{repo}})
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		_, err := f.s.JS.Consumer(f.ctx, events.StreamResults, events.ConsumerNotifierQueued)
		return err
	})
	n := f.rep.notifier
	combined := func(commit string) []forgetest.Posted {
		var out []forgetest.Posted
		for _, p := range fs.Posted() {
			if p.SHA == commit && p.Context == "jetci" {
				out = append(out, p)
			}
		}
		return out
	}
	// waitCombined waits for the outbox to be empty with commit's combined
	// statuses those given (states), and checks the last one's description.
	waitCombined := func(commit string, desc string, states ...string) {
		t.Helper()
		brokertest.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
			got := combined(commit)
			if len(got) < len(states) {
				return fmt.Errorf("combined statuses of %s: %+v, want %v", commit[:4], got, states)
			}
			if err := outboxEmpty(f); err != nil {
				return err
			}
			for i, p := range got {
				if i >= len(states) || p.State != states[i] {
					t.Fatalf("combined statuses of %s: %+v, want %v", commit[:4], got, states)
				}
			}
			if last := got[len(got)-1]; last.Description != desc ||
				last.TargetURL != "https://ci.example.com/commit?branch=main&commit="+commit+"&repo=proj" {
				t.Errorf("combined status %+v, want description %q", last, desc)
			}
			return nil
		})
	}
	p := events.Person{Name: "Bob", Email: "bob@example.com"}
	jobs := []struct{ job, arch string }{{"test", "amd64"}, {"test", "arm64"}, {"lint", "amd64"}}
	queue := func(commit string, seq0 uint64) []events.JobRef {
		var refs []events.JobRef
		for i, j := range jobs {
			ref := jref("proj", "main", commit, j.job, j.arch)
			f.publish(&events.JobQueued{JobRef: ref, Pool: "default", Class: events.ClassFirst, QueueSeq: seq0 + uint64(i), QueuedAt: time.Now(), Author: p, Subject: "change"})
			refs = append(refs, ref)
		}
		return refs
	}
	finish := func(ref events.JobRef, seq uint64, st events.Status) {
		fin := &events.JobFinished{JobRef: ref, QueueSeq: seq, Attempt: 1, Runner: "r1", Status: st, FinishedAt: time.Now(), Author: p, Subject: "change", DurationMs: 10}
		if st == events.StatusFailed {
			fin.ExitCode = 1
		}
		f.publish(fin)
		f.waitFor(ref.JobID, func(r Record) bool { return r.Status == st })
	}

	a := sha('a')
	refs := queue(a, 1)
	waitCombined(a, "waiting or running", "pending")
	finish(refs[0], 1, events.StatusPassed)
	finish(refs[2], 3, events.StatusFailed)
	waitCombined(a, "1 of 3 jobs failed, 1 still to run", "pending", "failure")
	finish(refs[1], 2, events.StatusPassed)
	// The last result changes nothing: wait until the notifier has taken
	// it (its job's own status is posted), then look again.
	brokertest.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
		for _, p := range fs.Posted() {
			if p.SHA == a && p.Context == "jetci/test (arm64)" && p.State == "success" {
				return outboxEmpty(f)
			}
		}
		return fmt.Errorf("test (arm64)'s result not posted yet")
	})
	waitCombined(a, "1 of 3 jobs failed, 1 still to run", "pending", "failure")

	// lint's result again, as after a crash before its ack: nothing new.
	rec, err := f.rep.store.Get(f.ctx, refs[2].JobID)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Observe(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	posted := len(fs.Posted())
	waitCombined(a, "1 of 3 jobs failed, 1 still to run", "pending", "failure")

	// A re-check of lint passes. The reporter that records the combined
	// success dies before its outbox put; the status comes again (its
	// event is redelivered) and the success is posted, once.
	d := n.statusNote("proj", "main", a, refs[2].JobID, "jetci/lint (amd64)", forge.Success, "passed", 2*10+1).Status
	if note, err := n.decideCombined(context.Background(), d, "main"); err != nil || note == nil || note.Status.State != forge.Success {
		t.Fatalf("the re-check's combined state: %+v %v", note, err)
	}
	if err := outboxEmpty(f); err != nil {
		t.Fatal(err)
	}
	if got := len(fs.Posted()); got != posted {
		t.Fatalf("%d statuses posted, want %d: the lost put went out", got, posted)
	}
	for range 2 {
		if err := n.combine(context.Background(), d, "main"); err != nil {
			t.Fatal(err)
		}
	}
	waitCombined(a, "3 jobs passed", "pending", "failure", "success")

	// A commit whose jobs all pass: pending, then success.
	b := sha('b')
	refs = queue(b, 20)
	waitCombined(b, "waiting or running", "pending")
	for i, r := range refs {
		finish(r, 20+uint64(i), events.StatusPassed)
	}
	waitCombined(b, "3 jobs passed", "pending", "success")
}

// TestCombinedDecide: the combined state is the worst of its jobs': a
// failure at once, a cancelled job only once none is waiting.
func TestCombinedDecide(t *testing.T) {
	for _, tt := range []struct {
		states      []string
		state, desc string
	}{
		{[]string{"success", "success"}, "success", "2 jobs passed"},
		{[]string{"success", "pending"}, "pending", "1 of 2 jobs waiting or running"},
		{[]string{"pending", "pending"}, "pending", "waiting or running"},
		{[]string{"failure", "pending", "success"}, "failure", "1 of 3 jobs failed, 1 still to run"},
		{[]string{"error", "failure"}, "failure", "2 of 2 jobs failed"},
		{[]string{"error", "success"}, "error", "1 of 2 jobs failed"},
		{[]string{"cancelled", "pending"}, "pending", "1 of 2 jobs waiting or running"},
		{[]string{"cancelled", "success"}, "cancelled", "1 of 2 jobs cancelled"},
		{[]string{"success"}, "success", "1 job passed"},
	} {
		c := combinedState{Jobs: map[string]jobState{}}
		for i, s := range tt.states {
			c.Jobs[fmt.Sprint(i)] = jobState{State: s}
		}
		if st, desc := c.decide(); st != tt.state || desc != tt.desc {
			t.Errorf("%v: %s %q, want %s %q", tt.states, st, desc, tt.state, tt.desc)
		}
	}
}
