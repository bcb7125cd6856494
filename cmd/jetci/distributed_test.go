package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/reporter"
)

// TestSeparateServices runs jetci as a deployment would: `jetci server` with the
// repository's nats.conf (one user per role), and each service as its own
// command against it with its own user. A commit gets its result, and trigger,
// re-check, notify, artifacts, logs, cancel and webhooks all work; no role is
// ever refused anything (the permissions cover what each service does).
func TestSeparateServices(t *testing.T) {
	pw := setRolePasswords(t)
	repo := newGitRepo(t)
	first := repo.Commit("add tests", map[string]string{
		"tests/test_ok.py": passingTest,
		".jetci.yml": "jobs:\n  test:\n    steps: [python3 -m unittest discover -s tests -v, mkdir -p out, echo hi > out/a.txt]\n    artifacts: [out]\n" +
			"  build:\n    steps: [echo built]\n    pool: builders\n", // for the runner that jetci pool starts
	})
	natsAddr, httpAddr := reserveAddr(t), reserveAddr(t)
	url := "nats://" + natsAddr
	data := t.TempDir()
	hooks := make(chan string, 100)
	hookSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hooks <- r.Header.Get("X-Jetci-Event")
	}))
	t.Cleanup(hookSrv.Close)
	secret := filepath.Join(data, "hook-secret")
	os.WriteFile(secret, []byte("webhook-secret"), 0o600)
	ctx, startIn, logs := serviceGroup(t)
	start := func(args ...string) { startIn(ctx, args...) }
	start(append([]string{"server", "--config", "../../nats.conf", "--listen", natsAddr, "--monitor", "127.0.0.1:0", "--store", data + "/nats", "--log-format", "json"}, as(pw, "admin")...)...)
	admin := as(pw, "admin")
	// The services start once the admin has set up every stream and bucket: the
	// others may only look them up.
	brokertest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(logs.String(), "jetci streams ready") {
			return fmt.Errorf("streams not set up yet")
		}
		return nil
	})
	start(append([]string{"observer", "--nats", url, "--repo", repo.Dir, "--poll", "100ms", "--cache", data + "/obs", "--log-format", "json"}, as(pw, "observer")...)...)
	start(append([]string{"dispatcher", "--nats", url, "--gate", "proj", "--coalesce", "proj", "--metrics", "127.0.0.1:0", "--log-format", "json"}, as(pw, "dispatcher")...)...)
	start(append([]string{"reporter", "--nats", url, "--http", httpAddr, "--admin-token", "test-admin-token", "--metrics", "127.0.0.1:0",
		"--webhook", hookSrv.URL, "--webhook-secret-file", secret, "--log-format", "json"}, as(pw, "reporter")...)...)
	start(append(append([]string{"runner", "--nats", url, "--id", "r1", "--work", data + "/r1", "--log-format", "json"}, as(pw, "runner")...),
		identity(t, url, pw, "r1")...)...)
	start(append(append([]string{"runner", "--nats", url, "--id", "r2", "--work", data + "/r2", "--slots", "2", "--log-format", "json"}, as(pw, "runner")...),
		identity(t, url, pw, "r2")...)...)
	start(append(append([]string{"pool", "--nats", url, "--pool", "builders", "--min", "1", "--max", "1", "--work", data + "/pool",
		"--runner-bin", jetciBinary(t), "--log-format", "json"}, as(pw, "pool")...), identity(t, url, pw, "builders")...)...)
	read := func() ([]reporter.Record, error) { return resultsJSON(t, url, admin...) }
	var recs []reporter.Record
	brokertest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		recs = waitStatus(t, read, first, "passed")
		if len(recs) != 2 {
			return fmt.Errorf("%d of 2 jobs passed", len(recs))
		}
		return nil
	})
	var jobID string
	for _, r := range recs {
		if r.Job == "test" {
			jobID = r.JobID
		}
	}
	if len(recs) != 2 || jobID == "" {
		t.Fatalf("records %+v: want the test and build jobs", recs)
	}

	run := func(args ...string) (string, string, int) {
		var out, errb strings.Builder
		code := (&Main{Stdout: &out, Stderr: &errb}).Run(ctx, args)
		return out.String(), errb.String(), code
	}
	// jetci trigger (admin) re-runs the head at the user class; the record is updated in place.
	if out, errs, code := run(append([]string{"trigger", "--nats", url, "--repo", "proj", "--branch", "main"}, admin...)...); code != 0 || !strings.Contains(out, first) {
		t.Fatalf("jetci trigger: code %d, out %q, err %q", code, out, errs)
	}
	brokertest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		recs, err := read()
		if err != nil {
			return err
		}
		for _, r := range recs {
			if n := len(r.Attempts); n == 0 || r.Attempts[n-1].Class != "user" || r.Status != "passed" {
				return fmt.Errorf("records %+v: want both re-run at class user and passed", recs)
			}
		}
		return nil
	})
	if _, errs, code := run(append([]string{"trigger", "--nats", url, "--repo", "nope", "--branch", "main"}, admin...)...); code == 0 ||
		!strings.Contains(errs, `no observer watches a repo named "nope"`) {
		t.Fatalf("trigger of an unwatched repo: code %d, err %q", code, errs)
	}
	// jetci recheck (admin) asks the dispatchers; jetci notify (hook) pokes the observers.
	if out, errs, code := run(append([]string{"recheck", "--nats", url, "--repo", "proj", "--branch", "main"}, admin...)...); code != 0 || !strings.Contains(out, first) {
		t.Fatalf("jetci recheck: code %d, out %q, err %q", code, out, errs)
	}
	if out, errs, code := run(append([]string{"notify", "--nats", url, "--repo", "proj"}, as(pw, "hook")...)...); code != 0 || !strings.Contains(out, "observers told") {
		t.Fatalf("jetci notify: code %d, out %q, err %q", code, out, errs)
	}
	// The runners stored the log and the artifact; the reporter and the admin read them.
	brokertest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		recs, err := read()
		if err != nil || len(recs) != 2 {
			return fmt.Errorf("records %+v (%v)", recs, err)
		}
		for _, r := range recs {
			if r.Status != "passed" || r.Attempt < 3 {
				return fmt.Errorf("records %+v: want the re-check's attempt 3 passed", recs)
			}
		}
		return nil
	})
	outDir := t.TempDir()
	if out, errs, code := run(append([]string{"artifacts", "--nats", url, "--job", jobID, "--out", outDir}, admin...)...); code != 0 {
		t.Fatalf("jetci artifacts: code %d, out %q, err %q", code, out, errs)
	}
	if b, err := os.ReadFile(filepath.Join(outDir, "out", "a.txt")); err != nil || strings.TrimSpace(string(b)) != "hi" {
		t.Fatalf("artifact out/a.txt: %q, %v", b, err)
	}
	web := "http://" + httpAddr
	if body := httpGet(t, web+"/api/v1/jobs/"+jobID+"/log?attempt=1"); !strings.Contains(body, "OK") {
		t.Fatalf("log of attempt 1: %q", body)
	}
	// The queue, runners and metrics pages read the work queue and the leases.
	for path, want := range map[string]string{"/api/v1/queue": `"partitions"`, "/api/v1/runners": `"runners"`, "/metrics": "jetci_queue_depth"} {
		if body := httpGet(t, web+path); !strings.Contains(body, want) {
			t.Errorf("%s lacks %s: %.300s", path, want, body)
		}
	}
	// A long job is cancelled through the API: the reporter asks, the runner stops it.
	slow := repo.Commit("slow", map[string]string{".jetci.yml": "jobs:\n  test:\n    steps: [echo started; sleep 120]\n"})
	var slowID string
	brokertest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		recs, err := resultsJSON(t, url, append(admin, "--all", "--commit", slow)...)
		if err != nil || len(recs) != 1 || recs[0].Status != "running" {
			return fmt.Errorf("records %+v (%v): want the slow job running", recs, err)
		}
		slowID = recs[0].JobID
		return nil
	})
	// Its live log streams from JETCI_LOGS through the reporter (once the
	// reporter's view, a moment behind the records, has it running).
	brokertest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
		defer scancel()
		sreq, _ := http.NewRequestWithContext(sctx, "GET", web+"/api/v1/jobs/"+slowID+"/log/stream", nil)
		sresp, err := http.DefaultClient.Do(sreq)
		if err != nil {
			return err
		}
		defer sresp.Body.Close()
		var seen strings.Builder
		buf := make([]byte, 4096)
		for !strings.Contains(seen.String(), "started") {
			n, err := sresp.Body.Read(buf)
			seen.Write(buf[:n])
			if err != nil {
				return fmt.Errorf("live log: %v after %q", err, seen.String())
			}
		}
		return nil
	})
	req, _ := http.NewRequest("POST", web+"/api/v1/jobs/"+slowID+"/cancel", nil)
	req.Header.Set("Authorization", "Bearer test-admin-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("cancel: %v %v", resp, err)
	}
	resp.Body.Close()
	waitStatus(t, read, slow, "cancelled")
	select {
	case ev := <-hooks:
		t.Logf("webhook delivered: %s", ev)
	case <-time.After(30 * time.Second):
		t.Fatal("no webhook delivery")
	}
	if l := logs.String(); strings.Contains(l, "Violation") || strings.Contains(l, "permission denied") {
		for _, line := range strings.Split(l, "\n") {
			if strings.Contains(line, "Violation") || strings.Contains(line, "permission denied") {
				t.Errorf("refused: %s", line)
			}
		}
	}
}

// TestServiceMetricsFlag: a service started with --metrics serves /metrics and
// /healthz there.
func TestServiceMetricsFlag(t *testing.T) {
	natsAddr, maddr := reserveAddr(t), reserveAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	args := []string{"server", "--listen", natsAddr, "--store", t.TempDir(), "--metrics", maddr, "--log-format", "json"}
	wg.Add(1)
	go func() {
		defer wg.Done()
		(&Main{Stdout: io.Discard, Stderr: io.Discard}).Run(ctx, args)
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	brokertest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		for path, want := range map[string]string{"/healthz": "ok", "/metrics": "process_resident_memory_bytes"} {
			resp, err := http.Get("http://" + maddr + path)
			if err != nil {
				return err
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.Contains(string(b), want) {
				return fmt.Errorf("%s lacks %s", path, want)
			}
		}
		return nil
	})
}
