package runner

import (
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

// flakyTest is a unittest suite whose test_flaky fails on its first run and
// passes afterwards: it leaves a marker file outside the workspace ($MARKER).
const flakyTest = `import os, unittest

class T(unittest.TestCase):
    def test_flaky(self):
        marker = os.environ["MARKER"]
        if not os.path.exists(marker):
            open(marker, "w").close()
            self.fail("first run")
    def test_steady(self):
        pass
    def test_left_behind(self):
        # The retry runs on a fresh checkout: nothing the first try wrote stays.
        self.assertFalse(os.path.exists("scratch.txt"))
        open("scratch.txt", "w").close()
`

func enqueueJob(t *testing.T, s *brokertest.Server, commit string, timeoutMs int64, j *events.JobQueued) *events.JobQueued {
	t.Helper()
	j.Class, j.TimeoutMs = events.ClassFirst, timeoutMs
	return publishJob(t, s, commit, j, nil)
}

func testNamed(tests []events.TestResult, name string) (events.TestResult, bool) {
	i := slices.IndexFunc(tests, func(r events.TestResult) bool { return r.Name == name })
	if i < 0 {
		return events.TestResult{}, false
	}
	return tests[i], true
}

// retry: 1 on a job whose test fails once: the job is passed and flaky, the
// test passed (flaky), the failed try kept; one result, one attempt.
func TestRetryClassifiesAFlake(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("flaky", map[string]string{"tests/test_flaky.py": flakyTest})
	startRunner(t, s, nil)
	marker := filepath.Join(t.TempDir(), "marker")
	step := "echo try $JETCI_RETRY; python3 -m unittest discover -v -s tests"

	j := enqueueJob(t, s, c, 60000, &events.JobQueued{RepoURL: repo.Dir, Steps: []string{step},
		Env: map[string]string{"MARKER": marker}, Retry: 1})
	r := res.wait(t, j.JobID)
	if r.Status != events.StatusPassed || !r.Flaky || r.Retries != 1 || r.Attempt != 1 || r.ExitCode != 0 {
		t.Fatalf("result %+v, want passed, flaky, 1 retry, attempt 1", r)
	}
	if len(r.FailedTries) != 1 || r.FailedTries[0].ExitCode != 1 ||
		!slices.Equal(r.FailedTries[0].FailedTests, []string{"test_flaky.T.test_flaky"}) {
		t.Fatalf("failed tries %+v", r.FailedTries)
	}
	flaky, ok := testNamed(r.Tests, "test_flaky.T.test_flaky")
	if !ok || flaky.Status != events.TestPassed || !flaky.Flaky {
		t.Fatalf("tests %+v: want test_flaky passed and flaky", r.Tests)
	}
	if st, ok := testNamed(r.Tests, "test_flaky.T.test_steady"); !ok || st.Flaky || st.Status != events.TestPassed {
		t.Fatalf("test_steady %+v", st)
	}
	if s := r.TestSummary; s == nil || s.Total != 3 || s.Passed != 3 || s.Flaky != 1 {
		t.Fatalf("summary %+v", r.TestSummary)
	}
	log := readLog(t, s, r.Log)
	for _, want := range []string{"try 0\n", "try 1\n", "try 1 failed (exit code 1); retry 1 of 1", "recorded as passed (flaky)"} {
		if !strings.Contains(log, want) {
			t.Fatalf("log lacks %q:\n%s", want, log)
		}
	}

	// Fails every time: failed, not flaky, after its one retry.
	j = enqueueJob(t, s, c, 60000, &events.JobQueued{RepoURL: repo.Dir, Steps: []string{"echo run; exit 4"}, Retry: 1})
	r = res.wait(t, j.JobID)
	if r.Status != events.StatusFailed || r.Flaky || r.Retries != 1 || r.ExitCode != 4 || len(r.FailedTries) != 1 {
		t.Fatalf("always failing: %+v", r)
	}
	if n := strings.Count(readLog(t, s, r.Log), "$ echo run; exit 4"); n != 2 {
		t.Fatalf("the step ran %d times, want 2", n)
	}

	// Without retry: a failure is a failure.
	j = enqueueJob(t, s, c, 60000, &events.JobQueued{RepoURL: repo.Dir, Steps: []string{"exit 4"}})
	if r = res.wait(t, j.JobID); r.Status != events.StatusFailed || r.Retries != 0 || r.FailedTries != nil {
		t.Fatalf("no retry: %+v", r)
	}

	// An error (here a timeout) is not a flake to retry.
	j = enqueueJob(t, s, c, 200, &events.JobQueued{RepoURL: repo.Dir, Steps: []string{"sleep 30"}, Retry: 1})
	if r = res.wait(t, j.JobID); r.Status != events.StatusError || r.Retries != 0 {
		t.Fatalf("timeout: %+v", r)
	}
}

// Results come from the log (go test -json, unittest -v) and from JUnit
// reports the reports: globs name, merged into one list.
func TestTestResultsFromLogAndReports(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("tests", map[string]string{"tests/test_flaky.py": flakyTest})
	startRunner(t, s, nil)
	junit := `<testsuite><testcase classname="report" name="ok" time="1.5"/><testcase classname="report" name="bad"><failure/></testcase></testsuite>`
	steps := []string{
		"mkdir -p out && printf '%s' '" + junit + "' > out/unit.xml",
		`echo '{"Action":"pass","Package":"example.com/m","Test":"TestGo","Elapsed":0.25}'`,
		"python3 -m unittest discover -v -s tests; exit 1",
	}
	j := enqueueJob(t, s, c, 60000, &events.JobQueued{RepoURL: repo.Dir, Steps: steps,
		Env: map[string]string{"MARKER": filepath.Join(t.TempDir(), "m")}, Reports: []string{"out/*.xml", "missing/*.xml"}})
	r := res.wait(t, j.JobID)
	if r.Status != events.StatusFailed {
		t.Fatalf("result %+v", r)
	}
	want := map[string]string{"report.ok": events.TestPassed, "report.bad": events.TestFailed, "example.com/m.TestGo": events.TestPassed,
		"test_flaky.T.test_flaky": events.TestFailed, "test_flaky.T.test_steady": events.TestPassed, "test_flaky.T.test_left_behind": events.TestPassed}
	for name, st := range want {
		if got, ok := testNamed(r.Tests, name); !ok || got.Status != st {
			t.Errorf("test %s: %+v, want %s", name, got, st)
		}
	}
	if got, _ := testNamed(r.Tests, "report.ok"); got.DurationMs != 1500 {
		t.Errorf("report.ok took %d ms, want 1500", got.DurationMs)
	}
	if s := r.TestSummary; s == nil || s.Total != 6 || s.Failed != 2 || strings.Join(s.Sources, ",") != "go-test-json,junit,unittest" {
		t.Fatalf("summary %+v", r.TestSummary)
	}
	if log := readLog(t, s, r.Log); !strings.Contains(log, `reports: pattern "missing/*.xml" matched no file`) {
		t.Fatalf("log:\n%s", log)
	}
}

// TestRetryStartsClean: a retry gets an empty TMPDIR, like the first try; a
// job a resource limit killed is not retried; a secret in a test's name is
// masked in the result, as in the log.
func TestRetryStartsClean(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("c", map[string]string{"a.txt": "a"})
	const secret = "s3cr3t-in-a-test-name"
	startRunner(t, s, func(c *Config) {
		c.Secrets = []Secret{{Name: "TOKEN", Value: secret}}
	})
	marker := filepath.Join(t.TempDir(), "failed-once")
	j := enqueueMod(t, s, repo, c, func(j *events.JobQueued) { j.Retry = 1; j.Env = map[string]string{"MARKER": marker} },
		`test ! -e "$TMPDIR/left-by-try-1"`,
		`touch "$TMPDIR/left-by-try-1"`,
		`if [ ! -e "$MARKER" ]; then touch "$MARKER"; exit 1; fi`)
	if r := res.wait(t, j.JobID); r.Status != events.StatusPassed || !r.Flaky || r.Retries != 1 {
		t.Fatalf("retry after a try that left TMPDIR files: %+v\n%s", r, readLog(t, s, r.Log))
	}

	if runtime.GOOS == "linux" {
		j = enqueueMod(t, s, repo, c, func(j *events.JobQueued) { j.Retry = 1; j.Limits = &events.Limits{Processes: 3} },
			"for i in 1 2 3 4 5 6; do sleep 30 & done; wait")
		if r := res.wait(t, j.JobID); r.Status != events.StatusFailed || r.Retries != 0 || !strings.Contains(r.Error, "process limit") {
			t.Fatalf("a limit's kill: %+v, want failed and not retried", r)
		}
	}

	j = enqueueMod(t, s, repo, c, func(j *events.JobQueued) { j.Secrets = []string{"TOKEN"} },
		`echo "{\"Action\":\"fail\",\"Package\":\"example.com/p\",\"Test\":\"TestLogin/$TOKEN\",\"Elapsed\":0.1}"; exit 1`)
	r := res.wait(t, j.JobID)
	if len(r.Tests) != 1 || strings.Contains(r.Tests[0].Name, secret) || !strings.Contains(r.Tests[0].Name, "***") {
		t.Fatalf("tests %+v: the secret must be masked in test names", r.Tests)
	}
}
