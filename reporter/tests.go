package reporter

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/events"
)

// Per-test history. For each repo × branch × arch × job the jetci-tests
// bucket keeps one entry (events.TestsKey) holding every test seen there:
// runs, failures, durations, and the statuses seen on its last few commits.
// A test that both failed and passed on the same commit, across attempts,
// retries (retry:) and re-checks, is flaky on that commit.
//
// Bounds: an entry keeps at most MaxTestsPerJob tests (the least recently
// seen are dropped first, and more while the entry would pass maxTestsEntry
// bytes); a test keeps its last testCommits commits. Only the tests a
// JobFinished carries are seen (events.MaxTests of them, every failure first).

const (
	MaxTestsPerJob = 2000
	testCommits    = 5
	maxTestsEntry  = 900 << 10
	seenResults    = 64
)

// testHistory is one entry of the tests bucket.
type testHistory struct {
	Repo    string               `json:"repo"`
	Branch  string               `json:"branch"`
	Arch    string               `json:"arch"`
	Job     string               `json:"job"`
	Tests   map[string]*testStat `json:"tests"`
	Seen    []string             `json:"seen,omitempty"` // results already counted, newest last
	Updated time.Time            `json:"updated"`
}

// testStat is one test's history.
type testStat struct {
	Runs            int          `json:"runs"`
	Failures        int          `json:"failures"`
	Flakes          int          `json:"flakes"` // commits on which it failed and passed
	LastStatus      string       `json:"last_status"`
	LastMs          int64        `json:"last_ms"`
	MaxMs           int64        `json:"max_ms"`
	TotalMs         int64        `json:"total_ms"`
	Timed           int          `json:"timed"` // runs that count towards TotalMs
	LastCommit      string       `json:"last_commit"`
	LastJobID       string       `json:"last_job_id"`
	LastAt          time.Time    `json:"last_at"`
	LastFlakyCommit string       `json:"last_flaky_commit,omitempty"`
	LastFlakyAt     time.Time    `json:"last_flaky_at,omitzero"`
	Commits         []commitSeen `json:"commits,omitempty"` // newest last
}

// commitSeen is what a test did on one commit.
type commitSeen struct {
	Commit string `json:"c"`
	Passed bool   `json:"p,omitempty"`
	Failed bool   `json:"f,omitempty"`
}

// observe counts one run of the test on commit; timed says whether ms is its
// duration (an earlier failed try carries no duration). It reports whether
// the test just became flaky on that commit.
func (s *testStat) observe(status, commit, jobID string, ms int64, timed bool, at time.Time) bool {
	s.Runs++
	if events.Failing(status) {
		s.Failures++
	}
	if at.After(s.LastAt) || s.LastAt.IsZero() {
		s.LastStatus, s.LastCommit, s.LastJobID, s.LastAt = status, commit, jobID, at
		if timed {
			s.LastMs = ms
		}
	}
	if timed {
		s.MaxMs = max(s.MaxMs, ms)
		s.TotalMs += ms
		s.Timed++
	}
	if status == events.TestSkipped {
		return false
	}
	i := slices.IndexFunc(s.Commits, func(c commitSeen) bool { return c.Commit == commit })
	if i < 0 {
		s.Commits = append(s.Commits, commitSeen{Commit: commit})
		if len(s.Commits) > testCommits {
			s.Commits = s.Commits[len(s.Commits)-testCommits:]
		}
		i = len(s.Commits) - 1
	}
	c := &s.Commits[i]
	was := c.Passed && c.Failed
	if events.Failing(status) {
		c.Failed = true
	} else {
		c.Passed = true
	}
	if !was && c.Passed && c.Failed {
		s.Flakes++
		s.LastFlakyCommit, s.LastFlakyAt = commit, at
		return true
	}
	return false
}

// apply counts the tests of one result: the failures of its earlier tries
// (retry:), then its own tests. A result already counted (a redelivery) is
// not counted again. It reports whether the history changed.
func (h *testHistory) apply(e *events.JobFinished) bool {
	id := fmt.Sprintf("%s/%d/%d", e.JobID, e.QueueSeq, e.Attempt)
	if slices.Contains(h.Seen, id) || (len(e.Tests) == 0 && len(e.FailedTries) == 0) {
		return false
	}
	h.Seen = append(h.Seen, id)
	if len(h.Seen) > seenResults {
		h.Seen = h.Seen[len(h.Seen)-seenResults:]
	}
	if h.Tests == nil {
		h.Tests = map[string]*testStat{}
	}
	at := e.FinishedAt
	stat := func(name string) *testStat {
		s := h.Tests[name]
		if s == nil {
			s = &testStat{}
			h.Tests[name] = s
		}
		return s
	}
	for i, try := range e.FailedTries {
		// Earlier tries finished before the result: order them so.
		tat := at.Add(-time.Duration(len(e.FailedTries)-i) * time.Millisecond)
		for _, name := range try.FailedTests {
			stat(name).observe(events.TestFailed, e.Commit, e.JobID, 0, false, tat)
		}
	}
	for _, t := range e.Tests {
		stat(t.Name).observe(t.Status, e.Commit, e.JobID, t.DurationMs, true, at)
	}
	if at.After(h.Updated) {
		h.Updated = at
	}
	h.trim()
	return true
}

// trim keeps the entry within MaxTestsPerJob tests and maxTestsEntry bytes,
// dropping the tests seen longest ago.
func (h *testHistory) trim() {
	drop := func(n int) {
		names := make([]string, 0, len(h.Tests))
		for name := range h.Tests {
			names = append(names, name)
		}
		slices.SortFunc(names, func(a, b string) int {
			if c := h.Tests[a].LastAt.Compare(h.Tests[b].LastAt); c != 0 {
				return c
			}
			return cmp.Compare(a, b)
		})
		for _, name := range names[:min(n, len(names))] {
			delete(h.Tests, name)
		}
	}
	if n := len(h.Tests) - MaxTestsPerJob; n > 0 {
		drop(n)
	}
	for len(h.Tests) > 0 {
		data, err := json.Marshal(h)
		if err != nil || len(data) <= maxTestsEntry {
			return
		}
		drop(max(len(h.Tests)/10, 1))
	}
}

// TestStore keeps per-test history in the jetci-tests bucket, with
// compare-and-swap so several reporters can count results at once.
type TestStore struct {
	kv jetstream.KeyValue
}

// OpenTestStore opens (or, on a server set up before it existed, creates)
// the tests bucket.
func OpenTestStore(ctx context.Context, js jetstream.JetStream) (*TestStore, error) {
	kv, err := js.KeyValue(ctx, events.BucketTests)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: events.BucketTests,
			Description: "per-test history per repo, branch, arch and job", Storage: jetstream.FileStorage})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, events.BucketTests)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", events.BucketTests, err)
	}
	return &TestStore{kv: kv}, nil
}

// Observe counts a finished job's tests into its history.
func (s *TestStore) Observe(ctx context.Context, e *events.JobFinished) error {
	if len(e.Tests) == 0 && len(e.FailedTries) == 0 {
		return nil
	}
	// A module's job has its own history ("core/test"): modules' tests may
	// share names, and must not make each other look flaky.
	job := events.QualifiedJob(e.Module, e.Job)
	key := events.TestsKey(e.Repo, e.Branch, e.Arch, job)
	for {
		h := &testHistory{Repo: e.Repo, Branch: e.Branch, Arch: e.Arch, Job: job}
		var rev uint64
		entry, err := s.kv.Get(ctx, key)
		switch {
		case err == nil:
			if err := json.Unmarshal(entry.Value(), h); err != nil {
				return fmt.Errorf("tests %s: %w", key, err)
			}
			rev = entry.Revision()
		case errors.Is(err, jetstream.ErrKeyNotFound):
		default:
			return fmt.Errorf("get tests %s: %w", key, err)
		}
		if !h.apply(e) {
			return nil
		}
		data, err := json.Marshal(h)
		if err != nil {
			return err
		}
		if rev == 0 {
			_, err = s.kv.Create(ctx, key, data)
		} else {
			_, err = s.kv.Update(ctx, key, data, rev)
		}
		if err == nil {
			return nil
		}
		if !isConflict(err) && !errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("put tests %s: %w", key, err)
		}
	}
}

// TestFilter narrows the tests listed; empty fields match everything.
type TestFilter struct {
	Repo, Branch, Arch, Job string
	Limit                   int // 0: DefaultTestLimit
}

// DefaultTestLimit is how many tests a list shows unless asked.
const DefaultTestLimit = 50

// TestEntry is one test of one job on a branch and arch, as the API lists it.
type TestEntry struct {
	Repo            string    `json:"repo"`
	Branch          string    `json:"branch"`
	Arch            string    `json:"arch"`
	Job             string    `json:"job"`
	Name            string    `json:"name"`
	Runs            int       `json:"runs"`
	Failures        int       `json:"failures"`
	Flakes          int       `json:"flakes"`
	LastStatus      string    `json:"last_status"`
	LastMs          int64     `json:"last_ms"`
	AvgMs           int64     `json:"avg_ms"`
	MaxMs           int64     `json:"max_ms"`
	LastCommit      string    `json:"last_commit"`
	LastJobID       string    `json:"last_job_id"`
	LastAt          time.Time `json:"last_at"`
	LastFlakyCommit string    `json:"last_flaky_commit,omitempty"`
	LastFlakyAt     time.Time `json:"last_flaky_at,omitzero"`
}

// entries reads the histories the filter selects.
func (s *TestStore) entries(ctx context.Context, f TestFilter) ([]TestEntry, error) {
	tok := func(v string) string {
		if v == "" {
			return "*"
		}
		return events.Token(v)
	}
	keys, err := s.kv.ListKeysFiltered(ctx, tok(f.Repo)+"."+tok(f.Branch)+"."+tok(f.Arch)+"."+tok(f.Job))
	if err != nil {
		return nil, fmt.Errorf("list tests: %w", err)
	}
	var out []TestEntry
	for key := range keys.Keys() {
		entry, err := s.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("get tests %s: %w", key, err)
		}
		var h testHistory
		if json.Unmarshal(entry.Value(), &h) != nil {
			continue
		}
		for name, st := range h.Tests {
			e := TestEntry{Repo: h.Repo, Branch: h.Branch, Arch: h.Arch, Job: h.Job, Name: name,
				Runs: st.Runs, Failures: st.Failures, Flakes: st.Flakes, LastStatus: st.LastStatus,
				LastMs: st.LastMs, MaxMs: st.MaxMs, LastCommit: st.LastCommit, LastJobID: st.LastJobID, LastAt: st.LastAt,
				LastFlakyCommit: st.LastFlakyCommit, LastFlakyAt: st.LastFlakyAt}
			if st.Timed > 0 {
				e.AvgMs = st.TotalMs / int64(st.Timed)
			}
			out = append(out, e)
		}
	}
	return out, nil
}

func (f TestFilter) limit(es []TestEntry) []TestEntry {
	n := f.Limit
	if n <= 0 {
		n = DefaultTestLimit
	}
	if len(es) > n {
		es = es[:n]
	}
	return es
}

// Flaky lists the tests that were flaky at least once, the most recently
// flaky first.
func (s *TestStore) Flaky(ctx context.Context, f TestFilter) ([]TestEntry, error) {
	out, err := s.flaky(ctx, f)
	return f.limit(out), err
}

func (s *TestStore) flaky(ctx context.Context, f TestFilter) ([]TestEntry, error) {
	all, err := s.entries(ctx, f)
	if err != nil {
		return nil, err
	}
	out := slices.DeleteFunc(all, func(e TestEntry) bool { return e.Flakes == 0 })
	slices.SortFunc(out, func(a, b TestEntry) int {
		if c := b.LastFlakyAt.Compare(a.LastFlakyAt); c != 0 {
			return c
		}
		if c := cmp.Compare(b.Flakes, a.Flakes); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
	return out, nil
}

// Slowest lists the tests by their last duration, the slowest first.
func (s *TestStore) Slowest(ctx context.Context, f TestFilter) ([]TestEntry, error) {
	out, err := s.slowest(ctx, f)
	return f.limit(out), err
}

func (s *TestStore) slowest(ctx context.Context, f TestFilter) ([]TestEntry, error) {
	all, err := s.entries(ctx, f)
	if err != nil {
		return nil, err
	}
	out := slices.DeleteFunc(all, func(e TestEntry) bool { return e.LastMs == 0 && e.MaxMs == 0 })
	slices.SortFunc(out, func(a, b TestEntry) int {
		if c := cmp.Compare(b.LastMs, a.LastMs); c != 0 {
			return c
		}
		if c := cmp.Compare(b.MaxMs, a.MaxMs); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
	return out, nil
}

// TestGroup is one test across the branches (and archs) of its repo and
// job: the sums, and each branch × arch's own entry, in the list's order.
type TestGroup struct {
	Repo     string      `json:"repo"`
	Job      string      `json:"job"`
	Name     string      `json:"name"`
	Runs     int         `json:"runs"`
	Failures int         `json:"failures"`
	Flakes   int         `json:"flakes"`
	MaxMs    int64       `json:"max_ms"`
	Branches []TestEntry `json:"branches"`
}

// groupTests groups a sorted list by test (repo, job, name): a group stands
// where its first entry stood; at most limit groups (0: DefaultTestLimit).
func groupTests(es []TestEntry, limit int) []TestGroup {
	if limit <= 0 {
		limit = DefaultTestLimit
	}
	type key struct{ repo, job, name string }
	at := map[key]int{}
	var out []TestGroup
	for _, e := range es {
		k := key{e.Repo, e.Job, e.Name}
		i, ok := at[k]
		if !ok {
			if len(out) == limit {
				continue
			}
			i = len(out)
			at[k] = i
			out = append(out, TestGroup{Repo: e.Repo, Job: e.Job, Name: e.Name})
		}
		g := &out[i]
		g.Runs += e.Runs
		g.Failures += e.Failures
		g.Flakes += e.Flakes
		g.MaxMs = max(g.MaxMs, e.MaxMs)
		g.Branches = append(g.Branches, e)
	}
	return out
}

// FlakyGroups is Flaky grouped by test across branches.
func (s *TestStore) FlakyGroups(ctx context.Context, f TestFilter) ([]TestGroup, error) {
	es, err := s.flaky(ctx, f)
	return groupTests(es, f.Limit), err
}

// SlowestGroups is Slowest grouped by test across branches.
func (s *TestStore) SlowestGroups(ctx context.Context, f TestFilter) ([]TestGroup, error) {
	es, err := s.slowest(ctx, f)
	return groupTests(es, f.Limit), err
}
