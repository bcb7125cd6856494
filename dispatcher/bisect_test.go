package dispatcher

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

// newRange is a bisection over commits c0 (passed) … c<n-1> (failed), the
// ones between untested.
func newRange(n int) *events.Bisection {
	b := &events.Bisection{ID: "0123456789abcdef0123", Repo: "proj", Branch: "a>b", Job: "test", Arch: "amd64", State: events.BisectRunning}
	for i := range n {
		c := events.BisectCommit{Commit: fmt.Sprintf("c%d", i)}
		switch i {
		case 0:
			c.Status = events.StatusPassed
		case n - 1:
			c.Status = events.StatusFailed
		}
		b.Commits = append(b.Commits, c)
	}
	b.Good, b.Bad = b.Commits[0].Commit, b.Commits[n-1].Commit
	return b
}

// simulate runs a bisection to its end, answering each run with result(commit
// index, step kind, how many times that commit ran before).
func simulate(t *testing.T, d *Dispatcher, b *events.Bisection, result func(i int, kind string, runs int) events.Status) {
	t.Helper()
	index := map[string]int{}
	for i, c := range b.Commits {
		index[c.Commit] = i
	}
	ran := map[int]int{}
	asks := d.advance(b)
	for guard := 0; !b.Done(); guard++ {
		if guard > 200 || len(asks) == 0 {
			t.Fatalf("bisection stuck in %s after %d steps", b.State, len(b.Steps))
		}
		var next []int
		for _, s := range asks {
			st := &b.Steps[s]
			i := index[st.Commit]
			st.Status = result(i, st.Kind, ran[i])
			ran[i]++
			if st.Kind == events.StepBisect {
				b.Commits[i].Status = st.Status
			}
			next = append(next, d.advance(b)...)
		}
		asks = next
	}
}

func TestBisectFindsEveryCulpritWithinLog2Runs(t *testing.T) {
	d, err := New(DefaultConfig(), nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{3, 4, 10, 64, 65, 257} {
		limit := 0
		for 1<<limit < n-1 {
			limit++ // ceil(log2(candidates)): the n-1 commits after the good one may each be the culprit
		}
		for culprit := 1; culprit < n; culprit++ {
			b := newRange(n)
			simulate(t, d, b, func(i int, _ string, _ int) events.Status {
				if i >= culprit {
					return events.StatusFailed
				}
				return events.StatusPassed
			})
			if b.State != events.BisectFound || b.Culprit.Commit != fmt.Sprintf("c%d", culprit) || b.LastGood.Commit != fmt.Sprintf("c%d", culprit-1) {
				t.Fatalf("n %d culprit %d: %s (%s), culprit %+v", n, culprit, b.State, b.Reason, b.Culprit)
			}
			if b.Runs > limit {
				t.Fatalf("n %d culprit %d: %d runs, want at most %d", n, culprit, b.Runs, limit)
			}
			if n == 64 && b.Runs > 7 {
				t.Fatalf("64 commits: %d runs, the issue allows 7", b.Runs)
			}
			last := b.Steps[len(b.Steps)-2:]
			if last[0].Kind != events.StepVerifyCulprit || last[1].Kind != events.StepVerifyParent {
				t.Fatalf("the last steps are %+v, want the two verification runs", last)
			}
		}
	}
}

func TestBisectVerificationAndSkips(t *testing.T) {
	d, err := New(DefaultConfig(), nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	d.now = func() time.Time { return time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC) }
	const n, culprit = 16, 9
	deterministic := func(i int) events.Status {
		if i >= culprit {
			return events.StatusFailed
		}
		return events.StatusPassed
	}
	tests := []struct {
		name   string
		result func(i int, kind string, runs int) events.Status
		state  string
		reason string
	}{
		{"found", func(i int, _ string, _ int) events.Status { return deterministic(i) }, events.BisectFound, "failed twice"},
		{"culprit passes on its re-run", func(i int, kind string, _ int) events.Status {
			if kind == events.StepVerifyCulprit {
				return events.StatusPassed
			}
			return deterministic(i)
		}, events.BisectFlaky, "passed when run again"},
		{"parent fails on its re-run", func(i int, kind string, _ int) events.Status {
			if kind == events.StepVerifyParent {
				return events.StatusFailed
			}
			return deterministic(i)
		}, events.BisectFlaky, "parent"},
		{"an error counts as a failure", func(i int, _ string, _ int) events.Status {
			if i >= culprit {
				return events.StatusError
			}
			return events.StatusPassed
		}, events.BisectFound, ""},
		{"a skipped commit next to the culprit leaves two candidates", func(i int, _ string, _ int) events.Status {
			if i == culprit-1 {
				return events.StatusSkipped
			}
			return deterministic(i)
		}, events.BisectUnresolved, "one of 2 commits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newRange(n)
			simulate(t, d, b, tt.result)
			if b.State != tt.state || !strings.Contains(b.Reason, tt.reason) {
				t.Fatalf("state %s (%s), want %s (%q)", b.State, b.Reason, tt.state, tt.reason)
			}
			if b.EndedAt.IsZero() {
				t.Error("no end time")
			}
			for i, s := range b.Steps {
				if want := fmt.Sprintf("bisect-%s-%d", b.ID, i); s.TriggerID != want {
					t.Errorf("step %d trigger %q, want %q", i, s.TriggerID, want)
				}
				key, j, ok := stepOf(b.Repo, b.Branch, s.TriggerID)
				if !ok || j != i || key != events.BisectKey(b.Repo, b.Branch, b.ID) {
					t.Errorf("stepOf(%q) = %q %d %v", s.TriggerID, key, j, ok)
				}
			}
		})
	}
	// A skipped commit away from the culprit is stepped around.
	b := newRange(n)
	simulate(t, d, b, func(i int, _ string, _ int) events.Status {
		if i == 7 {
			return events.StatusSkipped
		}
		return deterministic(i)
	})
	if b.State != events.BisectFound || b.Culprit.Commit != fmt.Sprintf("c%d", culprit) {
		t.Fatalf("with a skipped commit: %s (%s)", b.State, b.Reason)
	}
}

func TestStepOfRefusesOtherTriggers(t *testing.T) {
	for _, id := range []string{"bisect-", "bisect-xyz-1", "bisect-0123456789abcdef0123", "bisect-0123456789abcdef0123-x", "bisect-0123456789abcdef0123--1"} {
		if _, _, ok := stepOf("r", "b", id); ok {
			t.Errorf("stepOf(%q) accepted it", id)
		}
	}
}

// TestBisectDecidesFromTheHistory feeds real commit and result events through
// JetStream: a failure waits while a commit of its range is still queued,
// starts a bisection over the held, superseded and never-queued commits once
// that commit is settled, and starts none when its parent failed or passed.
func TestBisectDecidesFromTheHistory(t *testing.T) {
	s := brokertest.Run(t)
	cfg := DefaultConfig()
	cfg.Arch = []string{"amd64"}
	cfg.Bisect = []GateRule{{Repo: "proj"}}
	cfg.BisectTick = 20 * time.Millisecond
	d, err := New(cfg, s.JS, brokertest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.RunBisect(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunBisect: %v", err)
		}
	})
	const repo, branch = "proj", "a>b"
	sha := func(i int) string { return fmt.Sprintf("%040x", i) }
	for i := 1; i <= 7; i++ {
		ev := &events.CommitDetected{Repo: repo, Branch: branch, Commit: sha(i), Class: events.ClassFirst,
			Author: events.Person{Name: "Dev", Email: "dev@example.com"}, Subject: fmt.Sprintf("commit %d", i)}
		if i > 1 {
			ev.Parents = []string{sha(i - 1)}
		}
		publishCommit(t, s.JS, ev)
	}
	ref := func(i int, job string) events.JobRef {
		return events.JobRef{JobID: events.JobID(repo, branch, sha(i), job, "amd64"), Repo: repo, Branch: branch, Commit: sha(i), Job: job, Arch: "amd64"}
	}
	seq := uint64(0)
	signed := events.SigningJetStream(s.JS, events.LazyServiceSigner(s.JS)) // as the dispatcher and the reporter sign
	queued := func(i int, job string, held bool) {
		seq++
		q := &events.JobQueued{JobRef: ref(i, job), Pool: "default", Class: events.ClassFirst, Held: held}
		if !held {
			q.QueueSeq = seq
		}
		if err := publish(ctx, signed, events.ResultSubject(repo, branch, events.KindQueued), q, fmt.Sprint("q", seq)); err != nil {
			t.Fatal(err)
		}
	}
	finished := func(i int, job string, st events.Status) {
		seq++
		f := &events.JobFinished{JobRef: ref(i, job), QueueSeq: seq, Status: st, Class: events.ClassFirst, FinishedAt: time.Now().UTC()}
		if err := publish(ctx, signed, events.ResultSubject(repo, branch, events.KindFinished), f, fmt.Sprint("f", seq)); err != nil {
			t.Fatal(err)
		}
	}
	kv, err := s.JS.KeyValue(ctx, events.BucketBisect)
	if err != nil {
		t.Fatal(err)
	}
	keys := func(prefix string) []string {
		var out []string
		if l, err := kv.ListKeysFiltered(ctx, prefix+".>"); err == nil {
			for k := range l.Keys() {
				out = append(out, k)
			}
		}
		return out
	}
	// Failures before bisecting was turned on start nothing: wait for that
	// moment before any result.
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		_, err := kv.Get(ctx, "since")
		return err
	})
	// c1 passed; c2 held; c3 superseded; c4 never queued for test; c5 still
	// queued; c6 fails.
	queued(1, "test", false)
	finished(1, "test", events.StatusPassed)
	queued(2, "test", true)
	finished(3, "test", events.StatusCancelled)
	queued(5, "test", false)
	// lint passed at c5 and fails at c6: tested one by one, nothing to bisect.
	finished(5, "lint", events.StatusPassed)
	finished(6, "lint", events.StatusFailed)
	finished(6, "test", events.StatusFailed)
	pendingKey := branchKey("p", repo, branch, ref(6, "test").JobID)
	brokertest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if p := keys("p"); len(p) != 1 || p[0] != pendingKey {
			return fmt.Errorf("pending %v, want only the test failure at c6 (c5 is queued)", p)
		}
		return nil
	})
	if b := keys("b"); len(b) != 0 {
		t.Fatalf("bisections %v while c5 is queued", b)
	}
	// c5's run is superseded after all: the range c2..c5 is untested.
	finished(5, "test", events.StatusCancelled)
	var b *events.Bisection
	brokertest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		e, err := kv.Get(ctx, events.BisectKey(repo, branch, ref(6, "test").JobID))
		if err != nil {
			return err
		}
		b, err = events.DecodeAs[events.Bisection](e.Value())
		return err
	})
	var got []string
	for _, c := range b.Commits {
		got = append(got, fmt.Sprintf("%s:%s", strings.TrimLeft(c.Commit, "0"), c.Status))
	}
	if strings.Join(got, " ") != "1:passed 2: 3: 4: 5: 6:failed" || b.State != events.BisectRunning || b.Good != sha(1) || b.Bad != sha(6) {
		t.Fatalf("bisection %s over %v", b.State, got)
	}
	if len(b.Steps) != 1 || b.Steps[0].Commit != sha(3) || b.Steps[0].Kind != events.StepBisect || b.Runs != 1 {
		t.Fatalf("steps %+v, want one bisection run of c3", b.Steps)
	}
	brokertest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if p := keys("p"); len(p) != 0 {
			return fmt.Errorf("pending %v after the decision", p)
		}
		return nil
	})
	// c7 fails after c6 failed: not a first failure.
	finished(7, "test", events.StatusFailed)
	brokertest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if p := keys("p"); len(p) != 0 {
			return fmt.Errorf("pending %v", p)
		}
		if _, err := kv.Get(ctx, branchKey("o", repo, branch, ref(7, "test").JobID)); err != nil {
			return fmt.Errorf("c7 not seen yet: %w", err)
		}
		return nil
	})
	if bs := keys("b"); len(bs) != 1 {
		t.Errorf("bisections %v, want only c6's", bs)
	}
	// Its state was published.
	if n := streamCount(t, s.JS, events.StreamBisect, events.BisectSubject(repo, branch)); n == 0 {
		t.Error("no bisection state on JETCI_BISECT")
	}
}

// FuzzStepOf: a trigger id read from a result names at most one step of one
// bisection, never panics, and what it names prints back as the same id.
func FuzzStepOf(f *testing.F) {
	f.Add("bisect-0123456789abcdef0123-4")
	f.Add("bisect--1")
	f.Add("bisect-0123456789abcdef0123-99999999999999999999")
	f.Fuzz(func(t *testing.T, id string) {
		key, i, ok := stepOf("r", "b", id)
		if !ok {
			return
		}
		if i < 0 || !strings.HasPrefix(key, "b.") {
			t.Fatalf("stepOf(%q) = %q, %d", id, key, i)
		}
	})
}
