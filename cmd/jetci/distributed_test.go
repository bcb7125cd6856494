package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/reporter"
)

// TestSeparateServices runs jetci as a deployment would: `jetci server` with the
// repository's nats.conf, and each service as its own command against it.
func TestSeparateServices(t *testing.T) {
	repo := newGitRepo(t)
	first := repo.Commit("add tests", map[string]string{"tests/test_ok.py": passingTest})
	natsAddr := freeAddr(t)
	url := "nats://" + natsAddr
	data := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	logs := &syncBuffer{}
	start := func(args ...string) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code := (&Main{Stdout: logs, Stderr: logs}).Run(ctx, args); code != 0 {
				t.Errorf("jetci %s exited %d", args[0], code)
			}
		}()
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		if t.Failed() {
			t.Logf("logs:\n%s", logs.String())
		}
	})
	start("server", "--config", "../../nats.conf", "--listen", natsAddr, "--store", data+"/nats", "--log-format", "json")
	brokertest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		_, err := resultsJSON(t, url)
		return err
	})
	start("observer", "--nats", url, "--repo", repo.Dir, "--poll", "100ms", "--cache", data+"/obs", "--log-format", "json")
	start("dispatcher", "--nats", url, "--log-format", "json")
	start("reporter", "--nats", url, "--http", "", "--log-format", "json")
	start("runner", "--nats", url, "--work", data+"/r1", "--log-format", "json")
	start("runner", "--nats", url, "--work", data+"/r2", "--slots", "2", "--log-format", "json")
	read := func() ([]reporter.Record, error) { return resultsJSON(t, url) }
	waitStatus(t, read, first, "passed")

	// jetci trigger re-runs the head at the user class; the record is updated in place.
	var out, errb strings.Builder
	code := (&Main{Stdout: &out, Stderr: &errb}).Run(ctx, []string{"trigger", "--nats", url, "--repo", "proj", "--branch", "main"})
	if code != 0 || !strings.Contains(out.String(), first) {
		t.Fatalf("jetci trigger: code %d, out %q, err %q", code, out.String(), errb.String())
	}
	brokertest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		recs, err := read()
		if err != nil {
			return err
		}
		if len(recs) != 1 || recs[0].Class != "user" || recs[0].Status != "passed" {
			return fmt.Errorf("records %+v: want one, re-run at class user and passed", recs)
		}
		return nil
	})
	if code := (&Main{Stdout: &out, Stderr: &errb}).Run(ctx, []string{"trigger", "--nats", url, "--repo", "nope", "--branch", "main"}); code == 0 {
		t.Fatal("trigger of an unwatched repo: want a failure")
	}
	if !strings.Contains(errb.String(), `no observer watches a repo named "nope"`) {
		t.Fatalf("trigger error: %q", errb.String())
	}
}

// TestServiceMetricsFlag: a service started with --metrics serves /metrics and
// /healthz there.
func TestServiceMetricsFlag(t *testing.T) {
	natsAddr, maddr := freeAddr(t), freeAddr(t)
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
