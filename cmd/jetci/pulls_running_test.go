package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter"
)

// githubPullHook posts a signed GitHub pull_request hook for pull request 1
// of team/proj and returns its answer.
func githubPullHook(t *testing.T, web, secret, action, head string) map[string]any {
	t.Helper()
	// updated_at, as in GitHub's payloads: each delivery's body differs
	// (a body seen before is refused as a replay).
	body := []byte(fmt.Sprintf(`{"action":%q,"number":1,"pull_request":{"number":1,"title":"Make it faster","html_url":"https://github.com/team/proj/pull/1","updated_at":%q,`+
		`"head":{"sha":%q,"repo":{"id":7,"name":"proj","full_name":"team/proj"}},"base":{"repo":{"id":7,"name":"proj","full_name":"team/proj"}}},`+
		`"repository":{"id":7,"name":"proj","full_name":"team/proj"}}`, action, time.Now().UTC().Format(time.RFC3339Nano), head))
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	req, _ := http.NewRequest("POST", web+"/hooks/git", bytes.NewReader(body))
	req.Header.Set("X-GitHub-Event", "pull_request")
	req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(m.Sum(nil)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("%s hook: %d %s", action, resp.StatusCode, b)
	}
	var out map[string]any
	json.Unmarshal(b, &out)
	return out
}

// TestPullRequestSupersededRunsAreKilled: with --coalesce-running
// proj:pull/*, a pull request's new head kills its older head's run while
// it runs. On a real repository with refs/pull/1/head, driven by signed
// GitHub hooks: opened, pushed to twice while each older head's job is
// running (each is killed, recorded cancelled, "superseded by" the newer
// head), the last head passes; closed and its ref deleted, the request is
// no longer watched (its head is forgotten).
func TestPullRequestSupersededRunsAreKilled(t *testing.T) {
	repo := newGitRepo(t)
	flags := t.TempDir()
	// The job says it started, then holds until its commit's go file exists.
	pipeline := "jobs:\n  hold:\n    steps: ['touch " + flags + "/started-$JETCI_COMMIT; while [ ! -f " + flags + "/go-$JETCI_COMMIT ]; do sleep 0.05; done']\n"
	first := repo.Commit("first", map[string]string{".jetci.yml": pipeline})
	release := func(c string) {
		if err := os.WriteFile(filepath.Join(flags, "go-"+c), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	started := func(c string) {
		t.Helper()
		brokertest.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
			_, err := os.Stat(filepath.Join(flags, "started-"+c))
			return err
		})
	}
	release(first)
	secret := "hook-secret-pr-running"
	file := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(file, []byte(secret), 0o600)
	url, web, _ := startUpHTTP(t, t.TempDir(), []string{"--runners", "1", "--exec", "host", "--poll", "1h", "--hook-secret-file", file,
		"--pull-requests", "proj", "--coalesce-running", "proj:pull/*"}, repo.Dir)
	hook := func(action, head string) map[string]any { return githubPullHook(t, web, secret, action, head) }
	waitRecord := func(commit string, ok func(reporter.Record) bool) reporter.Record {
		t.Helper()
		var rec reporter.Record
		brokertest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
			var err error
			if rec, err = recordOf(t, url, commit); err != nil {
				return err
			}
			if !ok(rec) {
				return fmt.Errorf("%s: %s %s %q", commit[:8], rec.Branch, rec.Status, rec.Error)
			}
			return nil
		})
		return rec
	}
	head := ""
	pr := func(msg string) string {
		t.Helper()
		if head != "" {
			repo.Git("checkout", "-q", head)
		} else {
			repo.Git("checkout", "-q", "-b", "feature")
		}
		c := repo.Commit(msg, map[string]string{strings.ReplaceAll(msg, " ", "_") + ".txt": msg})
		repo.Git("checkout", "-q", "main")
		repo.Git("update-ref", "refs/pull/1/head", c)
		head = c
		return c
	}

	waitRecord(first, func(r reporter.Record) bool { return r.Status == "passed" })
	f1 := pr("pr one")
	repo.Git("branch", "-q", "-D", "feature") // only the pull request's ref has it
	hook("opened", f1)
	started(f1)
	waitRecord(f1, func(r reporter.Record) bool { return r.Branch == "pull/1" && r.Status == "running" })

	// A push while f1 runs: f1 is killed, f2 runs.
	f2 := pr("pr two")
	hook("synchronize", f2)
	killed := waitRecord(f1, func(r reporter.Record) bool { return r.Status == "cancelled" })
	if killed.Error != "superseded by "+events.Short(f2) || killed.Runner == "" || killed.StartedAt.IsZero() {
		t.Errorf("f1 was not killed running, superseded: %s %q by runner %q started %v", killed.Status, killed.Error, killed.Runner, killed.StartedAt)
	}
	started(f2)
	waitRecord(f2, func(r reporter.Record) bool { return r.Status == "running" })

	// Again: f2 is killed, f3 runs and passes.
	f3 := pr("pr three")
	hook("synchronize", f3)
	killed = waitRecord(f2, func(r reporter.Record) bool { return r.Status == "cancelled" })
	if killed.Error != "superseded by "+events.Short(f3) || killed.Runner == "" {
		t.Errorf("f2 was not killed running, superseded: %s %q by runner %q", killed.Status, killed.Error, killed.Runner)
	}
	started(f3)
	release(f3)
	waitRecord(f3, func(r reporter.Record) bool { return r.Branch == "pull/1" && r.Status == "passed" })
	// The killed runs did not go on: their go files never came, and the
	// runner took f3 (one slot).
	for _, c := range []string{f1, f2} {
		if r, _ := recordOf(t, url, c); r.Status != "cancelled" {
			t.Errorf("%s ended %s after it was killed", c[:8], r.Status)
		}
	}

	// Closed, its ref deleted (as Gitea and GitLab do): its head is
	// forgotten after the observer's next listings (each hook polls).
	repo.Git("update-ref", "-d", "refs/pull/1/head")
	if out := hook("closed", f3); out["cancelled"] != float64(0) {
		t.Errorf("closed: %v", out)
	}
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	heads, err := js.KeyValue(context.Background(), events.BucketHeads)
	if err != nil {
		t.Fatal(err)
	}
	brokertest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		_, err := heads.Get(context.Background(), events.HeadKey("proj", "pull/1"))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil
		}
		hook("closed", f3) // another listing
		return fmt.Errorf("pull/1's head is still watched: %v", err)
	})
	if _, err := heads.Get(context.Background(), events.HeadKey("proj", "main")); err != nil {
		t.Errorf("main's head: %v", err)
	}
}
