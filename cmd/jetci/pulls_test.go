package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/reporter"
)

// TestPullRequestEndToEnd runs a pull request through jetci up on a real
// repository with a refs/pull/1/head ref, driven by signed GitHub hooks (the
// poll interval is an hour): opened, pushed to twice while no runner is free
// (each older head's waiting run is superseded), its last head tested, a
// push left waiting when it is closed (cancelled), and the pull request kept
// with its number and title.
func TestPullRequestEndToEnd(t *testing.T) {
	bin := jetciBinary(t)
	repo := newGitRepo(t)
	first := repo.Commit("first", map[string]string{"tests/test_ok.py": passingTest})
	secret := "hook-secret-pr"
	file := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(file, []byte(secret), 0o600)
	url, web, _ := startUpHTTP(t, t.TempDir(), []string{"--runners", "0", "--poll", "1h", "--hook-secret-file", file, "--pull-requests", "proj"}, repo.Dir)

	hook := func(action string, head string) map[string]any {
		t.Helper()
		body := []byte(fmt.Sprintf(`{"action":%q,"number":1,"pull_request":{"number":1,"title":"Make it faster","html_url":"https://github.com/team/proj/pull/1",`+
			`"head":{"sha":%q,"repo":{"id":7,"name":"proj","full_name":"team/proj"}},"base":{"repo":{"id":7,"name":"proj","full_name":"team/proj"}}},`+
			`"repository":{"id":7,"name":"proj","full_name":"team/proj"}}`, action, head))
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
	// pr moves refs/pull/1/head to a new commit on top of its head, as a
	// push to the pull request's branch does on GitHub.
	head := ""
	pr := func(msg string) string {
		t.Helper()
		if head != "" {
			repo.Git("checkout", "-q", head)
		} else {
			repo.Git("checkout", "-q", "-b", "feature")
		}
		c := repo.Commit(msg, map[string]string{"tests/test_" + strings.ReplaceAll(msg, " ", "_") + ".py": passingTest})
		repo.Git("checkout", "-q", "main")
		repo.Git("update-ref", "refs/pull/1/head", c)
		head = c
		return c
	}

	waitRecord(first, func(r reporter.Record) bool { return r.Status == "queued" }) // up is up: its first poll is done
	f1 := pr("pr one")
	repo.Git("branch", "-q", "-D", "feature") // only the pull request's ref has it
	if out := hook("opened", f1); out["branch"] != "pull/1" {
		t.Fatalf("opened: %v", out)
	}
	waitRecord(f1, func(r reporter.Record) bool { return r.Branch == "pull/1" && r.Status == "queued" })
	f2 := pr("pr two")
	hook("synchronize", f2)
	waitRecord(f1, func(r reporter.Record) bool {
		return r.Status == "cancelled" && strings.Contains(r.Error, "superseded by "+f2[:10])
	})
	f3 := pr("pr three")
	hook("synchronize", f3)
	waitRecord(f2, func(r reporter.Record) bool {
		return r.Status == "cancelled" && strings.Contains(r.Error, "superseded")
	})

	run := runnerProcess(t, bin, url, "r1", t.TempDir())
	waitRecord(f3, func(r reporter.Record) bool { return r.Branch == "pull/1" && r.Status == "passed" })
	run.kill(syscall.SIGKILL)

	// A last push waits (no runner) when the pull request is closed.
	f4 := pr("pr four")
	hook("synchronize", f4)
	waitRecord(f4, func(r reporter.Record) bool { return r.Status == "queued" })
	if out := hook("closed", f4); out["cancelled"] != float64(1) {
		t.Errorf("closed: %v", out)
	}
	waitRecord(f4, func(r reporter.Record) bool { return r.Status == "cancelled" && strings.Contains(r.Error, "closed") })

	resp, err := http.Get(web + "/api/v1/pulls?repo=proj")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var pulls []reporter.Pull
	if err := json.NewDecoder(resp.Body).Decode(&pulls); err != nil {
		t.Fatal(err)
	}
	if len(pulls) != 1 || pulls[0].Number != 1 || pulls[0].Title != "Make it faster" || pulls[0].State != "closed" || pulls[0].Branch != "pull/1" || pulls[0].Fork {
		t.Errorf("pulls %+v", pulls)
	}
	// So do the commit's API answer and page.
	cr, err := http.Get(web + "/api/v1/commits/" + f3 + "?repo=proj&branch=pull%2F1")
	if err != nil {
		t.Fatal(err)
	}
	var commit struct {
		Commit string         `json:"commit"`
		Pull   *reporter.Pull `json:"pull"`
	}
	json.NewDecoder(cr.Body).Decode(&commit)
	cr.Body.Close()
	if commit.Commit != f3 || commit.Pull == nil || commit.Pull.Number != 1 || commit.Pull.Title != "Make it faster" {
		t.Errorf("commit API: %+v", commit)
	}
	page, err := http.Get(web + "/commit?repo=proj&branch=pull%2F1&commit=" + f3)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(page.Body)
	page.Body.Close()
	if !strings.Contains(string(b), "#1 Make it faster (closed)") {
		t.Errorf("commit page lacks the pull request:\n%s", b)
	}
}
