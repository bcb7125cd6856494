package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jetci/jetci/reporter"
)

// syncBuffer is a bytes.Buffer safe for the logger and the test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startUp runs `jetci up` in this process and returns its NATS URL and a stop func.
func startUp(t testing.TB, data string, repos ...string) (string, func()) {
	t.Helper()
	return startUpWith(t, data, []string{"--runners", "2"}, repos...)
}

// startUpWith runs `jetci up` in this process with extra flags.
func startUpWith(t testing.TB, data string, extra []string, repos ...string) (string, func()) {
	t.Helper()
	natsURL, _, stop := startUpHTTP(t, data, extra, repos...)
	return natsURL, stop
}

// startUpHTTP runs `jetci up` in this process and returns its NATS URL, the
// base URL of its web UI, and a stop func.
func startUpHTTP(t testing.TB, data string, extra []string, repos ...string) (string, string, func()) {
	t.Helper()
	// Port 0: the servers bind any free port and jetci up logs the ones
	// they got (upAddrs), so no port is chosen before its bind.
	args := append([]string{"up", "--data", data, "--nats-listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--poll", "100ms", "--log-format", "json"}, extra...)
	for _, r := range repos {
		args = append(args, "--repo", r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	done := make(chan int, 1)
	go func() { done <- (&Main{Stdout: logs, Stderr: logs}).Run(ctx, args) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("jetci up exited %d; log:\n%s", code, logs.String())
			}
		case <-time.After(30 * time.Second):
			t.Errorf("jetci up did not stop within 30s")
		}
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("jetci up log:\n%s", logs.String())
		}
	})
	natsURL, httpAddr := upAddrs(t, logs, done)
	return natsURL, "http://" + httpAddr, stop
}

// upAddrs waits for jetci up's "jetci is up" log line (JSON) and returns the
// NATS URL and HTTP address it names: those its servers bound.
func upAddrs(t testing.TB, logs *syncBuffer, done chan int) (string, string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		for _, line := range strings.Split(logs.String(), "\n") {
			var l struct{ Message, NATS, HTTP string }
			if json.Unmarshal([]byte(line), &l) == nil && l.Message == "jetci is up" {
				return l.NATS, l.HTTP
			}
		}
		select {
		case code := <-done:
			done <- code
			t.Fatalf("jetci up exited %d before it was up; log:\n%s", code, logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("jetci up did not say it was up within 60s; log:\n%s", logs.String())
	return "", ""
}

// TestUpFiveHundredLinesScenario is the 500-lines chapter's scenario on the whole
// pipeline in one process: a passing unittest suite, a failing test, a fix.
func TestUpFiveHundredLinesScenario(t *testing.T) {
	repo := newGitRepo(t)
	first := repo.Commit("add tests", map[string]string{"tests/test_ok.py": passingTest})
	url, _ := startUp(t, t.TempDir(), repo.Dir)
	read := func() ([]reporter.Record, error) { return resultsJSON(t, url) }

	recs := waitStatus(t, read, first, "passed")
	if r := recs[0]; r.Repo != "proj" || r.Branch != "main" || r.Job != "test" || r.Attempt != 1 || r.Runner == "" || r.FinishedAt.IsZero() {
		t.Fatalf("record %+v: want repo proj, branch main, job test, attempt 1, a runner and a finish time", r)
	}
	bad := repo.Commit("add failing test", map[string]string{"tests/test_bad.py": failingTest})
	recs = waitStatus(t, read, bad, "failed")
	if recs[0].ExitCode == 0 {
		t.Fatalf("failed job has exit code 0")
	}
	fixed := repo.Commit("fix it", map[string]string{"tests/test_bad.py": strings.Replace(failingTest, "self.fail('I will fail')", "pass", 1)})
	waitStatus(t, read, fixed, "passed")

	all, err := read()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 3 {
		t.Fatalf("%d records, want exactly 3 (one per commit): %+v", len(all), all)
	}
}

// TestUpBadInputGetsErrorResults: a repo with no pipeline and a broken pipeline
// file each get an error result saying why, and jetci goes on testing.
func TestUpBadInputGetsErrorResults(t *testing.T) {
	none := newGitRepo(t)
	c1 := none.Commit("readme only", map[string]string{"README": "hi\n"})
	broken := newGitRepo(t)
	c2 := broken.Commit("bad pipeline", map[string]string{".jetci.yml": "jobs:\n  test:\n    stesp: [true]\n"})
	url, _ := startUp(t, t.TempDir(), "none="+none.Dir, "broken="+broken.Dir)
	read := func() ([]reporter.Record, error) { return resultsJSON(t, url) }
	r1 := waitStatus(t, read, c1, "error")
	if !strings.Contains(r1[0].Error, "no pipeline") {
		t.Errorf("no-pipeline error %q does not say 'no pipeline'", r1[0].Error)
	}
	r2 := waitStatus(t, read, c2, "error")
	if !strings.Contains(r2[0].Error, ":3") || !strings.Contains(r2[0].Error, "stesp") {
		t.Errorf("pipeline error %q does not quote line 3 and the bad key", r2[0].Error)
	}
	// Fixing the file makes the next commit run.
	c3 := broken.Commit("fix pipeline", map[string]string{".jetci.yml": "jobs:\n  test:\n    steps: [\"test -f .jetci.yml\"]\n"})
	waitStatus(t, read, c3, "passed")
}

// TestUpServesMetrics: jetci up serves /metrics and /healthz on its HTTP address.
func TestUpServesMetrics(t *testing.T) {
	repo := newGitRepo(t)
	first := repo.Commit("add tests", map[string]string{"tests/test_ok.py": passingTest})
	url, web, _ := startUpHTTP(t, t.TempDir(), []string{"--runners", "1"}, repo.Dir)
	waitStatus(t, func() ([]reporter.Record, error) { return resultsJSON(t, url) }, first, "passed")
	resp, err := http.Get(web + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`jetci_jobs_finished_total{arch="` + runtime.GOARCH + `",pool="default",status="passed"} 1`, "jetci_commits_detected_total", "jetci_queue_depth"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
