package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter"
)

// finishedWatch reports, for each commit, when its first final record appeared in
// the results bucket: what `jetci results` would show from that moment on.
type finishedWatch struct {
	w    jetstream.KeyWatcher
	seen map[string]time.Time
}

func watchFinished(tb testing.TB, url string) *finishedWatch {
	tb.Helper()
	nc, js, err := events.Connect(url, events.ConnectOptions{Name: "bench", Log: zerolog.Nop()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	kv, err := js.KeyValue(context.Background(), events.BucketResults)
	if err != nil {
		tb.Fatal(err)
	}
	w, err := kv.WatchAll(context.Background(), jetstream.UpdatesOnly())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { w.Stop() })
	return &finishedWatch{w: w, seen: map[string]time.Time{}}
}

// wait blocks until every commit has a final record and returns when each appeared.
func (f *finishedWatch) wait(tb testing.TB, commits ...string) map[string]time.Time {
	tb.Helper()
	deadline := time.After(2 * time.Minute)
	for {
		all := true
		for _, c := range commits {
			if _, ok := f.seen[c]; !ok {
				all = false
			}
		}
		if all {
			return f.seen
		}
		select {
		case e := <-f.w.Updates():
			if e == nil {
				continue
			}
			var r reporter.Record
			if json.Unmarshal(e.Value(), &r) == nil && r.Status.Final() {
				if _, ok := f.seen[r.Commit]; !ok {
					f.seen[r.Commit] = time.Now()
				}
			}
		case <-deadline:
			tb.Fatalf("no result for some of %d commits after 2 minutes", len(commits))
		}
	}
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(float64(len(s)-1) * p)
	return s[i]
}

// bareRun is the baseline: check the commit out with git and run its test, as one
// person would by hand, in a clone.
func bareRun(tb testing.TB, clone, commit string) time.Duration {
	tb.Helper()
	start := time.Now()
	for _, args := range [][]string{{"git", "-C", clone, "checkout", "-q", commit}, {"python3", "-m", "unittest", "discover", "-s", "tests"}} {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Dir = clone
		if out, err := cmd.CombinedOutput(); err != nil {
			tb.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	return time.Since(start)
}

// BenchmarkCommitToResult measures commit -> result latency with --poll 200ms, one
// commit at a time, next to the bare work (git checkout + the test) for each.
//
//	go test -run '^$' -bench CommitToResult -benchtime 1x ./cmd/jetci
func BenchmarkCommitToResult(b *testing.B) {
	const n = 15
	repo, fw, clone := benchSetup(b)
	b.ResetTimer()
	for range b.N {
		var lat, bare []time.Duration
		for i := range n {
			start := time.Now()
			c := repo.Commit("change "+strconv.Itoa(i), map[string]string{"n.txt": strconv.Itoa(i)})
			at := fw.wait(b, c)[c]
			lat = append(lat, at.Sub(start))
			exec.Command("git", "-C", clone, "fetch", "-q").Run()
			bare = append(bare, bareRun(b, clone, c))
		}
		b.ReportMetric(float64(percentile(lat, 0.5).Milliseconds()), "p50_ms")
		b.ReportMetric(float64(percentile(lat, 0.9).Milliseconds()), "p90_ms")
		b.ReportMetric(float64(percentile(bare, 0.5).Milliseconds()), "bare_p50_ms")
	}
}

// BenchmarkBurst20 commits 20 times in a row and measures the time until all 20
// have results, next to the bare sequential work (checkout + test for each).
//
//	go test -run '^$' -bench Burst20 -benchtime 1x ./cmd/jetci
func BenchmarkBurst20(b *testing.B) {
	repo, fw, clone := benchSetup(b)
	b.ResetTimer()
	for it := range b.N {
		start := time.Now()
		var commits []string
		for i := range 20 {
			commits = append(commits, repo.Commit(fmt.Sprintf("burst %d.%d", it, i), map[string]string{"burst.txt": strconv.Itoa(i)}))
		}
		seen := fw.wait(b, commits...)
		var last time.Time
		for _, c := range commits {
			if seen[c].After(last) {
				last = seen[c]
			}
		}
		b.ReportMetric(float64(last.Sub(start).Milliseconds()), "all20_ms")
		exec.Command("git", "-C", clone, "fetch", "-q").Run()
		var bare time.Duration
		for _, c := range commits {
			bare += bareRun(b, clone, c)
		}
		b.ReportMetric(float64(bare.Milliseconds()), "bare_seq_ms")
	}
}

// BenchmarkPush100 is the throughput goal: 100 commits pushed at once to a
// repository `jetci up --runners 2` watches, and the time until all 100 have
// results, next to the bare work done sequentially in the same run (for each
// commit: check it out, run its tests). The ratio is jetci's over the bare
// work's.
//
//	go test -run '^$' -bench Push100 -benchtime 1x ./cmd/jetci
func BenchmarkPush100(b *testing.B) {
	const n = 100
	repo, fw, clone := benchSetup(b)
	repo.Git("config", "receive.denyCurrentBranch", "updateInstead")
	side := filepath.Join(b.TempDir(), "side")
	if out, err := exec.Command("git", "clone", "-q", repo.Dir, side).CombinedOutput(); err != nil {
		b.Fatalf("clone: %v %s", err, out)
	}
	git := func(args ...string) string {
		out, err := exec.Command("git", append([]string{"-C", side, "-c", "user.name=Dev", "-c", "user.email=dev@example.com"}, args...)...).CombinedOutput()
		if err != nil {
			b.Fatalf("git %v: %v %s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	b.ResetTimer()
	for it := range b.N {
		var commits []string
		for i := range n {
			if err := os.WriteFile(filepath.Join(side, "n.txt"), []byte(fmt.Sprintf("%d.%d\n", it, i)), 0o644); err != nil {
				b.Fatal(err)
			}
			git("add", "n.txt")
			git("commit", "-q", "-m", fmt.Sprintf("c%d.%d", it, i))
			commits = append(commits, git("rev-parse", "HEAD"))
		}
		start := time.Now()
		git("push", "-q", "origin", "HEAD:main")
		seen := fw.wait(b, commits...)
		var last time.Time
		for _, c := range commits {
			if seen[c].After(last) {
				last = seen[c]
			}
		}
		took := last.Sub(start)
		exec.Command("git", "-C", clone, "fetch", "-q").Run()
		var bare time.Duration
		for _, c := range commits {
			bare += bareRun(b, clone, c)
		}
		b.ReportMetric(float64(took.Milliseconds()), "all_ms")
		b.ReportMetric(float64(bare.Milliseconds()), "bare_seq_ms")
		b.ReportMetric(took.Seconds()/bare.Seconds(), "ratio")
	}
}

// benchSetup runs jetci up (--poll 200ms) on a repo whose first commit has
// passed, and clones the repo for the bare-work baseline.
func benchSetup(b *testing.B) (*gitRepo, *finishedWatch, string) {
	b.Helper()
	repo := newGitRepo(b)
	repo.Commit("add tests", map[string]string{"tests/test_ok.py": passingTest})
	url := startUpBench(b, repo.Dir, "200ms")
	fw := watchFinished(b, url)
	fw.wait(b, repo.Git("rev-parse", "HEAD"))
	clone := filepath.Join(b.TempDir(), "clone")
	if out, err := exec.Command("git", "clone", "-q", repo.Dir, clone).CombinedOutput(); err != nil {
		b.Fatalf("clone: %v %s", err, out)
	}
	return repo, fw, clone
}

func startUpBench(b *testing.B, repo, poll string) string {
	b.Helper()
	natsAddr := reserveAddr(b)
	args := []string{"up", "--data", b.TempDir(), "--nats-listen", natsAddr, "--http", "", "--poll", poll, "--runners", "2", "--log-level", "warn", "--log-format", "json", "--repo", repo}
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	done := make(chan int, 1)
	go func() { done <- (&Main{Stdout: logs, Stderr: logs}).Run(ctx, args) }()
	b.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			b.Errorf("jetci up exited %d:\n%s", code, logs.String())
		}
	})
	url := "nats://" + natsAddr
	brokertest.CheckFor(b, 30*time.Second, 20*time.Millisecond, func() error {
		_, err := resultsJSON(b, url)
		return err
	})
	return url
}

// BenchmarkPushHookToStarted measures, with polling at 1 h so only the hook
// counts, the time from a push (commit + GitHub-format POST /hooks/git) until
// the job has started and until it has a result, next to the test's own run
// time (the bare work).
//
//	go test -run '^$' -bench PushHookToStarted -benchtime 1x ./cmd/jetci
func BenchmarkPushHookToStarted(b *testing.B) {
	const n = 15
	repo := newGitRepo(b)
	repo.Commit("add tests", map[string]string{"tests/test_ok.py": passingTest})
	secretFile := filepath.Join(b.TempDir(), "secret")
	os.WriteFile(secretFile, []byte("bench-secret"), 0o600)
	natsAddr, httpAddr := reserveAddr(b), reserveAddr(b)
	args := []string{"up", "--data", b.TempDir(), "--nats-listen", natsAddr, "--http", httpAddr, "--poll", "1h", "--runners", "2",
		"--hook-secret-file", secretFile, "--log-level", "warn", "--log-format", "json", "--repo", repo.Dir}
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	done := make(chan int, 1)
	go func() { done <- (&Main{Stdout: logs, Stderr: logs}).Run(ctx, args) }()
	b.Cleanup(func() { cancel(); <-done })
	url := "nats://" + natsAddr
	brokertest.CheckFor(b, 30*time.Second, 20*time.Millisecond, func() error { _, err := resultsJSON(b, url); return err })
	nc, js, err := events.Connect(url, events.ConnectOptions{Name: "bench", Log: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	kv, _ := js.KeyValue(context.Background(), events.BucketResults)
	w, err := kv.WatchAll(context.Background(), jetstream.UpdatesOnly())
	if err != nil {
		b.Fatal(err)
	}
	defer w.Stop()
	// A forge's push payload names the new head ("after"), so no two pushes
	// send the same body (the reporter refuses a body it saw as a replay).
	signed := func(after string) ([]byte, string) {
		body := []byte(`{"ref":"refs/heads/main","after":"` + after + `","repository":{"name":"proj"}}`)
		mac := hmac.New(sha256.New, []byte("bench-secret"))
		mac.Write(body)
		return body, "sha256=" + hex.EncodeToString(mac.Sum(nil))
	}
	clone := filepath.Join(b.TempDir(), "clone")
	if out, err := exec.Command("git", "clone", "-q", repo.Dir, clone).CombinedOutput(); err != nil {
		b.Fatalf("clone: %v %s", err, out)
	}
	b.ResetTimer()
	for range b.N {
		var started, result, bare []time.Duration
		for i := range n {
			start := time.Now()
			c := repo.Commit("push "+strconv.Itoa(i), map[string]string{"n.txt": strconv.Itoa(i)})
			body, sig := signed(c)
			req, _ := http.NewRequest("POST", "http://"+httpAddr+"/hooks/git", bytes.NewReader(body))
			req.Header.Set("X-GitHub-Event", "push")
			req.Header.Set("X-Hub-Signature-256", sig)
			resp, err := http.DefaultClient.Do(req)
			if err != nil || resp.StatusCode != http.StatusAccepted {
				b.Fatalf("hook: %v %v", err, resp)
			}
			resp.Body.Close()
			var st time.Time
			deadline := time.After(time.Minute)
			for loop := true; loop; {
				select {
				case e := <-w.Updates():
					var r reporter.Record
					if e == nil || json.Unmarshal(e.Value(), &r) != nil || r.Commit != c {
						continue
					}
					if st.IsZero() && !r.StartedAt.IsZero() {
						st = time.Now()
						started = append(started, st.Sub(start))
					}
					if r.Status.Final() {
						result = append(result, time.Since(start))
						loop = false
					}
				case <-deadline:
					b.Fatalf("no result for push %d", i)
				}
			}
			exec.Command("git", "-C", clone, "pull", "-q").Run()
			t0 := time.Now()
			if out, err := exec.Command("python3", "-m", "unittest", "discover", "-s", filepath.Join(clone, "tests")).CombinedOutput(); err != nil {
				b.Fatalf("bare test: %v %s", err, out)
			}
			bare = append(bare, time.Since(t0))
		}
		b.ReportMetric(float64(percentile(started, 0.5).Milliseconds()), "started_p50_ms")
		b.ReportMetric(float64(percentile(result, 0.5).Milliseconds()), "result_p50_ms")
		b.ReportMetric(float64(percentile(bare, 0.5).Milliseconds()), "test_p50_ms")
	}
}
