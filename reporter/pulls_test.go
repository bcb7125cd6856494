package reporter

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

// TestPullHooksOfEachForge posts each forge's documented example pull/merge
// request payload, signed as that forge signs, to a reporter whose repo has
// an observer (a stand-in answering its pokes): 202 and the pull request is
// kept; the same payload for a repo nobody watches is a 404; a bad signature
// is a 401 before the body is read as JSON.
func TestPullHooksOfEachForge(t *testing.T) {
	const secret = "pr-hook-secret"
	s := brokertest.Run(t)
	ctx, cancel := context.WithCancel(context.Background())
	if err := events.DefaultSetup().Ensure(ctx, s.JS); err != nil {
		t.Fatal(err)
	}
	rep, err := New(ctx, Config{HTTP: "127.0.0.1:0", HookSecret: secret}, s.JS, brokertest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- rep.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	base := "http://" + rep.Addr()
	poked := make(chan string, 10)
	for _, name := range []string{"Hello-World", "gitlab-test"} { // "webhooks" (Gitea's) is watched by nobody
		sub, err := s.NC.Subscribe(events.PokeSubject(name), func(m *nats.Msg) { poked <- name; _ = m.Respond(nil) })
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
	}
	sign := func(b []byte) string {
		m := hmac.New(sha256.New, []byte(secret))
		m.Write(b)
		return hex.EncodeToString(m.Sum(nil))
	}
	read := func(name string) []byte {
		b, err := os.ReadFile("../forge/testdata/" + name)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	gh, gt, gl := read("github-pull_request.json"), read("gitea-pull_request.json"), read("gitlab-merge_request.json")
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		err := events.Poke(ctx, s.NC, "Hello-World")
		return err
	})
	<-poked
	code, body := do(t, "POST", base+"/hooks/git", map[string]string{"X-GitHub-Event": "pull_request", "X-Hub-Signature-256": "sha256=" + sign(gh)}, strings.NewReader(string(gh)))
	if code != 202 || !strings.Contains(body, `"branch": "pull/2"`) || !strings.Contains(body, `"action": "opened"`) {
		t.Errorf("github: %d %s", code, body)
	}
	code, body = do(t, "POST", base+"/hooks/git", map[string]string{"X-Gitlab-Event": "Merge Request Hook", "X-Gitlab-Token": secret}, strings.NewReader(string(gl)))
	if code != 202 || !strings.Contains(body, `"branch": "merge-requests/1"`) || !strings.Contains(body, `"repo": "gitlab-test"`) {
		t.Errorf("gitlab: %d %s", code, body)
	}
	code, body = do(t, "POST", base+"/hooks/git", map[string]string{"X-Gitea-Event": "pull_request", "X-Gitea-Signature": sign(gt)}, strings.NewReader(string(gt)))
	if code != 404 || !strings.Contains(body, "webhooks") {
		t.Errorf("gitea, unknown repo: %d %s", code, body)
	}
	junk := "{not json"
	code, body = do(t, "POST", base+"/hooks/git", map[string]string{"X-GitHub-Event": "pull_request", "X-Hub-Signature-256": "sha256=" + sign([]byte(junk+"x"))}, strings.NewReader(junk))
	if code != 401 || strings.Contains(body, "JSON") {
		t.Errorf("unsigned: %d %s", code, body)
	}
	pulls, err := rep.Pulls(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Pull{}
	for _, p := range pulls {
		got[p.Repo+" "+p.Branch] = p
	}
	if p := got["Hello-World pull/2"]; p.Title != "Update the README with new information." || p.State != "open" || p.Fork {
		t.Errorf("github pull %+v", p)
	}
	if p := got["gitlab-test merge-requests/1"]; p.Title != "MS-Viewport" || !p.Fork || p.Forge != "gitlab" {
		t.Errorf("gitlab pull %+v", p)
	}
	if len(pulls) != 2 {
		t.Errorf("pulls %+v", pulls)
	}
}
