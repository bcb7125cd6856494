package reporter

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

var testsT0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// result is a finished job "unit" on proj main amd64 at commit, with tests
// given as name → status.
func result(commit string, seq, attempt uint64, tests map[string]string, failedTries ...[]string) *events.JobFinished {
	e := &events.JobFinished{JobRef: events.JobRef{JobID: "job-" + commit, Repo: "proj", Branch: "main", Commit: commit, Job: "unit", Arch: "amd64"},
		QueueSeq: seq, Attempt: attempt, Status: events.StatusPassed, FinishedAt: testsT0.Add(time.Duration(seq) * time.Minute)}
	for name, st := range tests {
		e.Tests = append(e.Tests, events.TestResult{Name: name, Status: st, DurationMs: int64(len(name)) * 10})
		if events.Failing(st) {
			e.Status = events.StatusFailed
		}
	}
	for _, f := range failedTries {
		e.FailedTries = append(e.FailedTries, events.FailedTry{ExitCode: 1, FailedTests: f})
	}
	return e
}

func TestTestHistoryFindsFlakes(t *testing.T) {
	h := &testHistory{}
	// c1: a fails, b passes. A re-check of c1: a passes → flaky on c1.
	h.apply(result("c1", 1, 1, map[string]string{"a": events.TestFailed, "b": events.TestPassed}))
	if h.Tests["a"].Flakes != 0 {
		t.Fatal("flaky after one run")
	}
	h.apply(result("c1", 2, 1, map[string]string{"a": events.TestPassed, "b": events.TestPassed}))
	if a := h.Tests["a"]; a.Flakes != 1 || a.LastFlakyCommit != "c1" || a.Runs != 2 || a.Failures != 1 || a.LastStatus != events.TestPassed {
		t.Fatalf("a after the re-check: %+v", a)
	}
	// The same result again (a redelivery) counts nothing.
	if h.apply(result("c1", 2, 1, map[string]string{"a": events.TestPassed, "b": events.TestPassed})) || h.Tests["a"].Runs != 2 {
		t.Fatalf("a redelivered result was counted: %+v", h.Tests["a"])
	}
	// A third run on c1 that fails again does not count a second flake on c1.
	h.apply(result("c1", 3, 1, map[string]string{"a": events.TestFailed}))
	if h.Tests["a"].Flakes != 1 {
		t.Fatalf("flakes %d, want still 1", h.Tests["a"].Flakes)
	}
	// Failing on c2 and passing on c3 is a regression and a fix, not a flake.
	h.apply(result("c2", 4, 1, map[string]string{"b": events.TestFailed}))
	h.apply(result("c3", 5, 1, map[string]string{"b": events.TestPassed}))
	if b := h.Tests["b"]; b.Flakes != 0 || b.Failures != 1 || b.Runs != 4 {
		t.Fatalf("b: %+v", b)
	}
	// A retry inside one job (retry: 1): b failed in the first try, passed in
	// the second → flaky on c4.
	h.apply(result("c4", 6, 1, map[string]string{"b": events.TestPassed}, []string{"b"}))
	if b := h.Tests["b"]; b.Flakes != 1 || b.LastFlakyCommit != "c4" || b.LastStatus != events.TestPassed {
		t.Fatalf("b after a retry: %+v", b)
	}
	// Skips are runs but never flakes; durations: last, max, average.
	h.apply(result("c5", 7, 1, map[string]string{"s": events.TestSkipped}))
	h.apply(result("c5", 8, 1, map[string]string{"s": events.TestPassed}))
	if s := h.Tests["s"]; s.Flakes != 0 || s.Runs != 2 || s.LastMs != 10 {
		t.Fatalf("s: %+v", s)
	}
	// Commits kept per test are bounded.
	for i := range 70 {
		h.apply(result(fmt.Sprintf("x%d", i), uint64(100+i), 1, map[string]string{"a": events.TestPassed}))
	}
	if n := len(h.Tests["a"].Commits); n != testCommits {
		t.Fatalf("a keeps %d commits, want %d", n, testCommits)
	}
	if len(h.Seen) != seenResults {
		t.Fatalf("seen %d, want %d", len(h.Seen), seenResults)
	}
}

func TestTestHistoryIsBounded(t *testing.T) {
	h := &testHistory{}
	for i := range 6 {
		tests := map[string]string{}
		for j := range events.MaxTests {
			tests[fmt.Sprintf("run%d.%s.test_%04d", i, "", j)] = events.TestPassed
		}
		h.apply(result(fmt.Sprintf("c%d", i), uint64(i+1), 1, tests))
	}
	if len(h.Tests) != MaxTestsPerJob {
		t.Fatalf("%d tests kept, want %d", len(h.Tests), MaxTestsPerJob)
	}
	if _, ok := h.Tests["run5..test_0000"]; !ok {
		t.Fatal("the newest tests were dropped")
	}
	if _, ok := h.Tests["run0..test_0000"]; ok {
		t.Fatal("the oldest tests were kept")
	}
	// Long names: the entry stays within its byte bound.
	h = &testHistory{}
	tests := map[string]string{}
	for j := range events.MaxTests {
		tests[fmt.Sprintf("%0250d", j)] = events.TestPassed
	}
	for i := range 4 {
		e := result(fmt.Sprintf("c%d", i), uint64(i+1), 1, nil)
		for name := range tests {
			e.Tests = append(e.Tests, events.TestResult{Name: fmt.Sprint(i) + name, Status: events.TestPassed, DurationMs: 1})
		}
		h.apply(e)
	}
	if data, _ := jsonSize(h); data > maxTestsEntry {
		t.Fatalf("entry of %d bytes", data)
	}
}

// Several reporters counting into the same entry lose nothing; the lists
// filter and sort.
func TestTestStoreConcurrentAndLists(t *testing.T) {
	s := brokertest.Run(t)
	ctx := context.Background()
	st, err := OpenTestStore(ctx, s.JS)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status := events.TestPassed
			if i%2 == 0 {
				status = events.TestFailed
			}
			e := result("c1", uint64(i+1), 1, map[string]string{"flaky": status, "slow_one": events.TestPassed, "ab": events.TestPassed})
			if err := st.Observe(ctx, e); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	other := result("c9", 50, 1, map[string]string{"flaky": events.TestFailed})
	other.Branch, other.JobID = "dev", "job-dev"
	if err := st.Observe(ctx, other); err != nil {
		t.Fatal(err)
	}
	flaky, err := st.Flaky(ctx, TestFilter{Repo: "proj", Branch: "main"})
	if err != nil {
		t.Fatal(err)
	}
	if len(flaky) != 1 || flaky[0].Name != "flaky" || flaky[0].Runs != 8 || flaky[0].Failures != 4 || flaky[0].Flakes != 1 || flaky[0].LastFlakyCommit != "c1" {
		t.Fatalf("flaky %+v", flaky)
	}
	slow, err := st.Slowest(ctx, TestFilter{Repo: "proj", Limit: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(slow) != 2 || slow[0].Name != "slow_one" || slow[0].LastMs != 80 || slow[1].Name != "flaky" {
		t.Fatalf("slowest %+v", slow)
	}
	if none, _ := st.Flaky(ctx, TestFilter{Repo: "nope"}); len(none) != 0 {
		t.Fatalf("other repo: %+v", none)
	}
	if dev, _ := st.Slowest(ctx, TestFilter{Branch: "dev"}); len(dev) != 1 || dev[0].Branch != "dev" {
		t.Fatalf("dev: %+v", dev)
	}
}

func jsonSize(v any) (int, error) {
	data, err := json.Marshal(v)
	return len(data), err
}

// TestTestHistoryPerModule: two modules' jobs of one name whose tests share a
// name have their own histories: one failing and the other passing on the
// same commit is no flake, and each is listed under its module's job.
func TestTestHistoryPerModule(t *testing.T) {
	s := brokertest.Run(t)
	ctx := context.Background()
	st, err := OpenTestStore(ctx, s.JS)
	if err != nil {
		t.Fatal(err)
	}
	core := result("c1", 1, 1, map[string]string{"test_api": events.TestFailed})
	core.Module, core.JobID = "core", "job-core"
	app := result("c1", 2, 1, map[string]string{"test_api": events.TestPassed})
	app.Module, app.JobID = "app", "job-app"
	for _, e := range []*events.JobFinished{core, app} {
		if err := st.Observe(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if flaky, err := st.Flaky(ctx, TestFilter{Repo: "proj"}); err != nil || len(flaky) != 0 {
		t.Fatalf("flaky %+v (%v): two modules' tests of one name are not one flaky test", flaky, err)
	}
	slow, err := st.Slowest(ctx, TestFilter{Repo: "proj", Job: "core/unit"})
	if err != nil || len(slow) != 1 || slow[0].Job != "core/unit" || slow[0].LastStatus != events.TestFailed {
		t.Fatalf("core/unit's tests: %+v (%v)", slow, err)
	}
}

// TestTestListsGroupOneTestAcrossBranches: a test flaky on two branches is
// one group with a line per branch, on the API (?group=1) and the page.
func TestTestListsGroupOneTestAcrossBranches(t *testing.T) {
	f := newWebFixture(t, "")
	ctx := context.Background()
	for _, branch := range []string{"main", "dev"} {
		for i, st := range []string{events.TestFailed, events.TestPassed} {
			e := result("c-"+branch, uint64(10*len(branch)+i), uint64(i+1), map[string]string{"flaky_one": st, "steady": events.TestPassed})
			e.Branch, e.JobID = branch, "job-"+branch
			if err := f.rep.tests.Observe(ctx, e); err != nil {
				t.Fatal(err)
			}
		}
	}
	select { // the lists answer 503 until the read model has caught up
	case <-f.rep.View().Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("the reporter's read model did not catch up")
	}
	var flaky struct{ Groups []TestGroup }
	f.getJSON("/api/v1/tests/flaky?group=1&repo=proj", &flaky)
	if len(flaky.Groups) != 1 {
		t.Fatalf("groups %+v", flaky.Groups)
	}
	g := flaky.Groups[0]
	if g.Name != "flaky_one" || g.Flakes != 2 || g.Runs != 4 || g.Failures != 2 || len(g.Branches) != 2 ||
		g.Branches[0].Branch == g.Branches[1].Branch {
		t.Fatalf("group %+v", g)
	}
	var slow struct{ Groups []TestGroup }
	f.getJSON("/api/v1/tests/slowest?group=1&repo=proj", &slow)
	if len(slow.Groups) != 2 || len(slow.Groups[0].Branches) != 2 || len(slow.Groups[1].Branches) != 2 {
		t.Fatalf("slowest groups %+v", slow.Groups)
	}
	var plain struct{ Tests []TestEntry }
	f.getJSON("/api/v1/tests/flaky?repo=proj", &plain)
	if len(plain.Tests) != 2 {
		t.Fatalf("the ungrouped list changed: %+v", plain.Tests)
	}
	_, body, _ := f.get("/tests?repo=proj")
	flakyTable := body[strings.Index(body, `id="flaky"`):strings.Index(body, `id="slowest"`)]
	if strings.Count(flakyTable, `class="test-group"`) != 1 || strings.Count(flakyTable, `class="branch"`) != 2 ||
		!strings.Contains(flakyTable, "main · amd64") || !strings.Contains(flakyTable, "dev · amd64") {
		t.Errorf("flaky table:\n%s", flakyTable)
	}
}
