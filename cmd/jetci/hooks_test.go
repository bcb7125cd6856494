package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jetci/jetci/reporter"
)

// TestPushHooksAndNotify: with a poll interval of an hour, only a push hook
// (GitHub, Gitea or GitLab, each checked) or `jetci notify` gets a new commit
// tested; a hook with a bad signature is refused.
func TestPushHooksAndNotify(t *testing.T) {
	repo := newGitRepo(t)
	first := repo.Commit("first", map[string]string{"tests/test_ok.py": passingTest})
	secret := "hook-secret-123"
	file := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(file, []byte(secret+"\n"), 0o600)
	url, web, _ := startUpHTTP(t, t.TempDir(), []string{"--runners", "1", "--poll", "1h", "--hook-secret-file", file}, repo.Dir)
	read := func() ([]reporter.Record, error) { return resultsJSON(t, url) }
	waitStatus(t, read, first, "passed") // the first poll, at start

	sign := func(body []byte) string {
		m := hmac.New(sha256.New, []byte(secret))
		m.Write(body)
		return hex.EncodeToString(m.Sum(nil))
	}
	post := func(headers map[string]string, body []byte) int {
		t.Helper()
		req, _ := http.NewRequest("POST", web+"/hooks/git", bytes.NewReader(body))
		for k, v := range headers {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	github := []byte(`{"ref":"refs/heads/main","repository":{"name":"proj","full_name":"team/proj"}}`)
	gitlab := []byte(`{"object_kind":"push","project":{"name":"Proj","path_with_namespace":"team/proj"}}`)
	for _, tt := range []struct {
		name    string
		headers map[string]string
		body    []byte
	}{
		{"github", map[string]string{"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + sign(github)}, github},
		{"gitea", map[string]string{"X-Gitea-Event": "push", "X-Gitea-Signature": sign(github)}, github},
		{"gitlab", map[string]string{"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": secret}, gitlab},
	} {
		c := repo.Commit("via "+tt.name, map[string]string{tt.name + ".txt": tt.name})
		start := time.Now()
		if code := post(tt.headers, tt.body); code != http.StatusAccepted {
			t.Fatalf("%s hook: %d", tt.name, code)
		}
		waitStatus(t, read, c, "passed")
		t.Logf("%s hook: push → result %s", tt.name, time.Since(start).Round(time.Millisecond))
	}
	// Refused before the body is read: bad signature, bad token, unknown sender.
	c := repo.Commit("unsigned", map[string]string{"x.txt": "x"})
	for _, h := range []map[string]string{
		{"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + strings.Repeat("0", 64)},
		{"X-GitHub-Event": "push"},
		{"X-Gitea-Event": "push", "X-Gitea-Signature": "zz"},
		{"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "wrong"},
		{},
	} {
		if code := post(h, github); code != http.StatusUnauthorized {
			t.Errorf("hook with %v: %d, want 401", h, code)
		}
	}
	other := []byte(`{"repository":{"name":"nobody"}}`)
	if code := post(map[string]string{"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + sign(other)}, other); code != http.StatusNotFound {
		t.Errorf("hook for an unwatched repo: %d, want 404", code)
	}
	// jetci notify (a post-receive hook) gets the unsigned commit tested.
	var out, errb strings.Builder
	if code := (&Main{Stdout: &out, Stderr: &errb}).Run(context.Background(), []string{"notify", "--nats", url, "--repo", "proj"}); code != 0 {
		t.Fatalf("jetci notify exited %d: %s", code, errb.String())
	}
	waitStatus(t, read, c, "passed")
	if code := (&Main{Stdout: &out, Stderr: &errb}).Run(context.Background(), []string{"notify", "--nats", url, "--repo", "nobody"}); code == 0 ||
		!strings.Contains(errb.String(), `no observer watches a repo named "nobody"`) {
		t.Errorf("notify for an unwatched repo: exit %d, %q", code, errb.String())
	}
}
