package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/internal/smtptest"
	"github.com/jetci/jetci/reporter"
)

// flakyUnittest fails test_flaky the first time it runs anywhere (it leaves
// a marker file outside the workspace, named by $MARKER) and passes after.
const flakyUnittest = `import os, unittest

class T(unittest.TestCase):
    def test_flaky(self):
        marker = os.path.join(os.environ["HOME"], "flaky-marker")
        if not os.path.exists(marker):
            open(marker, "w").close()
            self.fail("first run fails")
    def test_steady(self):
        pass
`

const goModTests = `package m

import (
	"testing"
	"time"
)

func TestQuick(t *testing.T) {}
func TestSlow(t *testing.T)  { time.Sleep(60 * time.Millisecond) }
`

const junitReport = `<?xml version="1.0"?>
<testsuites><testsuite name="report">
<testcase classname="report.Suite" name="test_one" time="0.001"/>
<testcase classname="report.Suite" name="test_skipped" time="0"><skipped/></testcase>
</testsuite></testsuites>`

// TestTestResultsAndFlakes runs the whole pipeline (jetci up: embedded
// JetStream, observer, dispatcher with the broken-build flow, runner,
// reporter with mail) on a repo whose jobs print go test -json and unittest -v
// output and leave a JUnit report: every job's record carries its tests; a
// test that fails once and passes on the retry (retry: 1) leaves the job
// passed (flaky), is listed as flaky, and breaks nothing; a real failure
// still breaks the branch.
func TestTestResultsAndFlakes(t *testing.T) {
	// The flaky test's marker lives in the job's HOME, which a retry keeps
	// (the sandbox lets a job write nothing outside its own directories).
	pipeline := `jobs:
  unit:
    steps: python3 -m unittest discover -v -s tests
    retry: 1
  gotest:
    steps: cd gomod && go test -json -count=1 ./...
    env: {GOWORK: "off", GOFLAGS: "", GOTOOLCHAIN: local}
  junit:
    steps: mkdir -p out && cp fixtures/report.xml out/report.xml
    reports: [out/*.xml]
`
	repo := newGitRepo(t)
	first := repo.Commit("tests", map[string]string{
		".jetci.yml": pipeline, "tests/test_flaky.py": flakyUnittest,
		"gomod/go.mod": "module example.com/m\n\ngo 1.21\n", "gomod/m_test.go": goModTests,
		"fixtures/report.xml": junitReport,
	})
	sink := smtptest.Start(t)
	var hookMu sync.Mutex
	hooks := map[string]reporter.WebhookPayload{} // by job
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var p reporter.WebhookPayload
		if err := json.NewDecoder(r.Body).Decode(&p); err == nil && p.Commit == first {
			hookMu.Lock()
			hooks[p.Job] = p
			hookMu.Unlock()
		}
	}))
	defer hook.Close()
	secret := filepath.Join(t.TempDir(), "hook-secret")
	if err := os.WriteFile(secret, []byte("webhook-secret-1"), 0o600); err != nil {
		t.Fatal(err)
	}
	url, web, _ := startUpHTTP(t, t.TempDir(), []string{"--runners", "1", "--gate", "proj:main", "--fix-window", "1h",
		"--smtp", sink.Addr, "--smtp-tls", "none", "--mail-from", "ci@example.com",
		"--webhook", hook.URL, "--webhook-secret-file", secret, "--webhook-events", "finished"}, repo.Dir)
	all := func() ([]reporter.Record, error) { return resultsJSON(t, url, "--all") }
	recs := waitStatus(t, all, first, "passed")
	if len(recs) != 3 {
		t.Fatalf("%d records, want 3", len(recs))
	}
	byJob := map[string]reporter.Record{}
	for _, r := range recs {
		byJob[r.Job] = r
	}
	test := func(r reporter.Record, name string) events.TestResult {
		t.Helper()
		i := slices.IndexFunc(r.Tests, func(x events.TestResult) bool { return x.Name == name })
		if i < 0 {
			t.Fatalf("job %s has no test %s: %+v", r.Job, name, r.Tests)
		}
		return r.Tests[i]
	}

	// unittest, retried once: passed, flaky; the test says so too.
	unit := byJob["unit"]
	if !unit.Flaky || unit.Retries != 1 || unit.Attempt != 1 || len(unit.FailedTries) != 1 ||
		!slices.Equal(unit.FailedTries[0].FailedTests, []string{"test_flaky.T.test_flaky"}) {
		t.Fatalf("unit record %+v", unit)
	}
	if x := test(unit, "test_flaky.T.test_flaky"); x.Status != events.TestPassed || !x.Flaky {
		t.Fatalf("test_flaky %+v", x)
	}
	if a := unit.Attempts[0]; !a.Flaky || a.TestSummary == nil || a.TestSummary.Flaky != 1 {
		t.Fatalf("attempt %+v", a)
	}
	// go test -json, with durations.
	gt := byJob["gotest"]
	if x := test(gt, "example.com/m.TestSlow"); x.Status != events.TestPassed || x.DurationMs < 60 {
		t.Fatalf("TestSlow %+v", x)
	}
	if gt.TestSummary == nil || gt.TestSummary.Total != 2 || gt.Flaky {
		t.Fatalf("gotest summary %+v", gt.TestSummary)
	}
	// The JUnit report named by reports:.
	ju := byJob["junit"]
	if x := test(ju, "report.Suite.test_skipped"); x.Status != events.TestSkipped {
		t.Fatalf("junit %+v", x)
	}
	if s := ju.TestSummary; s == nil || strings.Join(s.Sources, ",") != "junit" || s.Passed != 1 || s.Skipped != 1 {
		t.Fatalf("junit summary %+v", s)
	}

	// The API: the job, the flaky list, the slowest list.
	var job reporter.Record
	if err := getJSON(web+"/api/v1/jobs/"+unit.JobID, &job); err != nil || !job.Flaky || job.Status != events.StatusPassed {
		t.Fatalf("GET job: %v %+v", err, job)
	}
	// A job has every test it carried; lists (held in the reporter's memory)
	// only the failing and flaky ones, with the whole summary.
	if err := getJSON(web+"/api/v1/jobs/"+gt.JobID, &job); err != nil || len(job.Tests) != 2 {
		t.Fatalf("GET gotest job: %v %+v", err, job.Tests)
	}
	var listed struct{ Results []reporter.Record }
	if err := getJSON(web+"/api/v1/results?repo=proj&branch=main&commit="+first, &listed); err != nil || len(listed.Results) != 3 {
		t.Fatalf("GET results: %v %+v", err, listed)
	}
	for _, r := range listed.Results {
		if want := map[string]int{"unit": 1, "gotest": 0, "junit": 0}[r.Job]; len(r.Tests) != want || r.TestSummary == nil {
			t.Errorf("listed %s: %d tests (%+v), want %d and a summary", r.Job, len(r.Tests), r.Tests, want)
		}
	}
	var flaky, slowest struct{ Tests []reporter.TestEntry }
	brokertest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if err := getJSON(web+"/api/v1/tests/flaky?repo=proj&branch=main&arch="+recs[0].Arch, &flaky); err != nil {
			return err
		}
		if len(flaky.Tests) != 1 || flaky.Tests[0].Name != "test_flaky.T.test_flaky" || flaky.Tests[0].Flakes != 1 ||
			flaky.Tests[0].LastFlakyCommit != first || flaky.Tests[0].Job != "unit" {
			return fmt.Errorf("flaky tests %+v", flaky.Tests)
		}
		if err := getJSON(web+"/api/v1/tests/slowest?repo=proj&branch=main&limit=3", &slowest); err != nil {
			return err
		}
		if len(slowest.Tests) == 0 || slowest.Tests[0].Name != "example.com/m.TestSlow" || slowest.Tests[0].LastMs < 60 {
			return fmt.Errorf("slowest tests %+v", slowest.Tests)
		}
		return nil
	})
	// The pages: the job says passed (flaky) and lists the flaky test; /tests lists it.
	page, err := getText(web + "/job/" + unit.JobID)
	if err != nil || !strings.Contains(page, "passed (flaky)") || !strings.Contains(page, "test_flaky.T.test_flaky") || !strings.Contains(page, "1 flaky") {
		t.Fatalf("job page: %v\n%s", err, page)
	}
	page, err = getText(web + "/tests?repo=proj&branch=main")
	if err != nil || !strings.Contains(page, "test_flaky.T.test_flaky") || !strings.Contains(page, "example.com/m.TestSlow") {
		t.Fatalf("tests page: %v\n%s", err, page)
	}

	// The webhook says so too.
	brokertest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		hookMu.Lock()
		defer hookMu.Unlock()
		p, ok := hooks["unit"]
		if !ok {
			return fmt.Errorf("no webhook for the unit job yet")
		}
		if p.Status != events.StatusPassed || !p.Flaky || p.TestSummary == nil || p.TestSummary.Flaky != 1 || p.Transition != "" {
			t.Fatalf("webhook %+v", p)
		}
		return nil
	})

	// The flake broke nothing: the gated branch is open. A real failure then
	// breaks it, named by its own commit, and mails about that commit only.
	nc, js, err := events.Connect(url, events.ConnectOptions{Name: "test", Wait: true, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	branch := func() (events.BranchState, error) {
		var st events.BranchState
		kv, err := js.KeyValue(context.Background(), events.BucketBranches)
		if err != nil {
			return st, err
		}
		e, err := kv.Get(context.Background(), events.BranchKey("proj", "main"))
		if err != nil {
			return st, err
		}
		return st, json.Unmarshal(e.Value(), &st)
	}
	if st, err := branch(); err == nil && st.State != events.BranchOpen {
		t.Fatalf("after a flake the branch is %q (%s)", st.State, st.Reason)
	}
	broke := repo.Commit("a real failure", map[string]string{"tests/test_bad.py": failingTest})
	brokertest.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
		st, err := branch()
		if err != nil {
			return err
		}
		if st.State != events.BranchBroken || st.BrokenBy == nil {
			return fmt.Errorf("branch %q", st.State)
		}
		if st.BrokenBy.Commit != broke || st.BrokenBy.Job != "unit" {
			t.Fatalf("broken by %+v, want the unit job of %s", st.BrokenBy, broke[:10])
		}
		return nil
	})
	bad := waitStatus(t, func() ([]reporter.Record, error) {
		rs, err := all()
		return slices.DeleteFunc(rs, func(r reporter.Record) bool { return r.Job != "unit" }), err
	}, broke, "failed")
	if bad[0].Flaky || bad[0].Retries != 1 {
		t.Fatalf("a failure on both tries: %+v", bad[0])
	}
	brokertest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		for _, m := range sink.Mails() {
			if strings.Contains(m.Subject, "FAILED") && strings.Contains(m.Subject, broke[:10]) {
				return nil
			}
		}
		return fmt.Errorf("no FAILED mail for %s among %d", broke[:10], len(sink.Mails()))
	})
	for _, m := range sink.Mails() {
		if strings.Contains(m.Subject, first[:10]) {
			t.Errorf("a mail about the flaky commit: %q", m.Subject)
		}
	}
}
