package reporter

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"

	"github.com/jetci/jetci/broker/brokertest"
)

// newHookReporter is a reporter taking push hooks signed with secret.
func newHookReporter(t *testing.T, secret string) string {
	t.Helper()
	s := brokertest.Run(t)
	ctx, cancel := context.WithCancel(context.Background())
	rep, err := New(ctx, Config{HTTP: "127.0.0.1:0", HookSecret: secret}, s.JS, brokertest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- rep.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return "http://" + rep.Addr()
}

func do(t *testing.T, method, u string, h map[string]string, body io.Reader) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, u, body)
	for k, v := range h {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestHookRefusedBeforeParsing: a push hook without a valid signature is
// refused (401) whatever its body, so a body that is not even JSON never gets
// to the parser; a signed one that is not JSON is a 400; a body over the limit
// is refused unread past it; only POST is served.
func TestHookRefusedBeforeParsing(t *testing.T) {
	const secret = "the-hook-secret"
	base := newHookReporter(t, secret)
	sign := func(b string) string {
		m := hmac.New(sha256.New, []byte(secret))
		m.Write([]byte(b))
		return "sha256=" + hex.EncodeToString(m.Sum(nil))
	}
	junk := "\x00{not json at all"
	for _, h := range []map[string]string{
		{"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(junk + "x")},            // the signature of another body
		{"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(junk)[:20]},             // cut short
		{"X-GitHub-Event": "push", "X-Hub-Signature-256": strings.ToUpper(sign(junk))}, // not the same bytes
		{"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": secret + "x"},
		{"X-Gitea-Event": "push"},
	} {
		if code, body := do(t, "POST", base+"/hooks/git", h, strings.NewReader(junk)); code != 401 || strings.Contains(body, "JSON") {
			t.Errorf("unsigned hook %v = %d %s, want 401 before any parsing", h, code, body)
		}
	}
	if code, body := do(t, "POST", base+"/hooks/git", map[string]string{"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(junk)}, strings.NewReader(junk)); code != 400 || !strings.Contains(body, "bad JSON") {
		t.Errorf("signed junk = %d %s, want 400 bad JSON", code, body)
	}
	big := strings.Repeat("x", maxHookBody+1)
	if code, _ := do(t, "POST", base+"/hooks/git", map[string]string{"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(big)}, strings.NewReader(big)); code != 413 {
		t.Errorf("hook over %d bytes = %d, want 413", maxHookBody, code)
	}
	if code, _ := do(t, "GET", base+"/hooks/git", nil, nil); code != 405 {
		t.Errorf("GET /hooks/git = %d, want 405", code)
	}
	// Hooks are off without a secret.
	off := newHookReporter(t, "")
	if code, _ := do(t, "POST", off+"/hooks/git", map[string]string{"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": ""}, strings.NewReader("{}")); code != 404 {
		t.Errorf("hook with hooks off = %d, want 404", code)
	}
}

// TestActionsArePostOnlyAndCrossSiteSafe: every action answers only POST; the
// API takes only the bearer token (a browser's session cookie, which another
// site could make it send, does not act on it); a form post needs the CSRF
// field as well as the session.
func TestActionsArePostOnlyAndCrossSiteSafe(t *testing.T) {
	f := newWebFixture(t, testToken)
	failed, _ := f.seed()
	for _, p := range []string{"/action/recheck", "/action/cancel", "/action/trigger", "/logout", "/api/v1/trigger",
		"/api/v1/jobs/" + failed.JobID + "/recheck", "/api/v1/jobs/" + failed.JobID + "/cancel", "/api/v1/branches/recheck"} {
		for _, m := range []string{"GET", "PUT", "DELETE"} {
			req, _ := http.NewRequest(m, f.base+p+"?job_id="+failed.JobID+"&token="+testToken+"&csrf=x", nil)
			req.Header.Set("Authorization", "Bearer "+testToken)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 405 {
				t.Errorf("%s %s = %d, want 405", m, p, resp.StatusCode)
			}
		}
	}
	// A logged-in browser: its cookie alone acts on neither the API nor a form.
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	resp, err := c.PostForm(f.base+"/login", url.Values{"token": {testToken}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	u, _ := url.Parse(f.base)
	if len(jar.Cookies(u)) == 0 {
		t.Fatal("no session cookie after login")
	}
	for _, p := range []string{"/api/v1/jobs/" + failed.JobID + "/recheck", "/api/v1/trigger"} {
		resp, err := c.Post(f.base+p, "application/json", strings.NewReader(`{"repo":"proj","branch":"main"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Errorf("API %s with only the session cookie = %d, want 401", p, resp.StatusCode)
		}
	}
	resp, err = c.PostForm(f.base+"/action/recheck", url.Values{"job_id": {failed.JobID}, "csrf": {strings.Repeat("0", 64)}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Errorf("form post with a forged CSRF field = %d, want 403", resp.StatusCode)
	}
}

func TestEqual(t *testing.T) {
	for _, tt := range []struct {
		x, y string
		want bool
	}{{"token", "token", true}, {"token", "tokeN", false}, {"token", "token ", false}, {"", "", true}, {"", "x", false}} {
		if got := equal(tt.x, tt.y); got != tt.want {
			t.Errorf("equal(%q, %q) = %v", tt.x, tt.y, got)
		}
	}
}
