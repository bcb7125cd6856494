package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

// TestWebSessionsLimitsAndInputs: two reporters under the reporter user of
// the shipped nats.conf share sessions through the bus — a session started
// on one works on the other, and after a logout on one the old cookie and
// its CSRF value act on neither; a post from another origin is refused;
// ?msg= shows known codes only; a replayed push hook is refused; a record
// overwritten with junk by the reporter user is shown as damaged and
// reported; wrong tokens earn a backoff in which even the right token is
// refused, with a metric.
func TestWebSessionsLimitsAndInputs(t *testing.T) {
	url0, pw := startShippedBroker(t)
	const token = "test-admin-token"
	secret := filepath.Join(t.TempDir(), "hook")
	if err := os.WriteFile(secret, []byte("hook-secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, start, _ := serviceGroup(t)
	a, b, metricsA := reserveAddr(t), reserveAddr(t), reserveAddr(t)
	for _, addr := range []string{a, b} {
		args := []string{"reporter", "--nats", url0, "--http", addr, "--admin-token", token, "--hook-secret-file", secret, "--log-format", "json"}
		if addr == a {
			args = append(args, "--metrics", metricsA)
		}
		start(ctx, append(args, as(pw, "reporter")...)...)
	}
	baseA, baseB := "http://"+a, "http://"+b
	brokertest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		for _, base := range []string{baseA, baseB} {
			if _, err := http.Get(base + "/healthz"); err != nil {
				return err
			}
		}
		return nil
	})
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar}
	do := func(c *http.Client, method, u string, body url.Values, hdr map[string]string) (int, string) {
		t.Helper()
		var rd io.Reader
		if body != nil {
			rd = strings.NewReader(body.Encode())
		}
		req, _ := http.NewRequest(method, u, rd)
		if body != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(data)
	}
	csrfRE := regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`)

	// A session started on A is known to B.
	if code, body := do(browser, "POST", baseA+"/login", url.Values{"token": {token}, "next": {"/"}}, nil); code != 200 || !csrfRE.MatchString(body) {
		t.Fatalf("login on A: %d", code)
	}
	u, _ := url.Parse(baseA)
	cookies := jar.Cookies(u)
	if len(cookies) != 1 || len(cookies[0].Value) != 64 {
		t.Fatalf("session cookie: %v", cookies)
	}
	ub, _ := url.Parse(baseB)
	jar.SetCookies(ub, cookies)
	_, body := do(browser, "GET", baseB+"/", nil, nil)
	m := csrfRE.FindStringSubmatch(body)
	if m == nil {
		t.Fatal("B does not know the session started on A")
	}
	csrf := m[1]
	// Another site's form, with the session and its CSRF value, is refused.
	if code, _ := do(browser, "POST", baseB+"/action/cancel", url.Values{"job_id": {"00000000000000000000"}, "csrf": {csrf}},
		map[string]string{"Origin": "https://evil.example"}); code != http.StatusForbidden {
		t.Errorf("post from another origin: %d, want 403", code)
	}
	// Same origin: the action is taken (the job does not exist: 404, not 403).
	if code, _ := do(browser, "POST", baseB+"/action/cancel", url.Values{"job_id": {"00000000000000000000"}, "csrf": {csrf}},
		map[string]string{"Origin": baseB}); code == http.StatusForbidden {
		t.Errorf("post from this site refused")
	}
	// Logout on A ends the session on B too; the copied cookie and its CSRF
	// value act on nothing.
	stolen := &http.Client{}
	cookieHdr := map[string]string{"Cookie": cookies[0].Name + "=" + cookies[0].Value}
	if code, _ := do(browser, "POST", baseA+"/logout", url.Values{"csrf": {csrf}}, nil); code != 200 {
		t.Errorf("logout: %d", code)
	}
	for _, base := range []string{baseA, baseB} {
		if code, _ := do(stolen, "POST", base+"/action/cancel", url.Values{"job_id": {"00000000000000000000"}, "csrf": {csrf}}, cookieHdr); code != http.StatusForbidden {
			t.Errorf("%s: the old cookie still acts after logout: %d", base, code)
		}
		if _, body := do(stolen, "GET", base+"/", nil, cookieHdr); csrfRE.MatchString(body) {
			t.Errorf("%s: the old cookie is still logged in", base)
		}
	}

	// ?msg= shows known codes only.
	if _, body := do(stolen, "GET", baseA+"/?msg=Your+password+expired:+call+555&err=Hacked", nil, nil); strings.Contains(body, `class="flash`) {
		t.Error("?msg= or ?err= text is shown")
	}
	if _, body := do(stolen, "GET", baseA+"/?msg=queued", nil, nil); !strings.Contains(body, "Queued.") {
		t.Error("?msg=queued shows nothing")
	}

	// A push hook replayed — same delivery id, or the same body under a new
	// one — is refused, on either reporter.
	hook := func(base, delivery string) int {
		payload := []byte(`{"ref":"refs/heads/main","repository":{"name":"proj","full_name":"o/proj"}}`)
		mac := hmac.New(sha256.New, []byte("hook-secret"))
		mac.Write(payload)
		req, _ := http.NewRequest("POST", base+"/hooks/git", bytes.NewReader(payload))
		req.Header.Set("X-GitHub-Event", "push")
		req.Header.Set("X-GitHub-Delivery", delivery)
		req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac.Sum(nil)))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := hook(baseA, "d-1"); code == http.StatusConflict || code == http.StatusUnauthorized {
		t.Errorf("first delivery: %d", code)
	}
	for _, tt := range []struct{ base, id string }{{baseA, "d-1"}, {baseB, "d-1"}, {baseB, "d-2"}} {
		if code := hook(tt.base, tt.id); code != http.StatusConflict {
			t.Errorf("replay %s to %s: %d, want 409", tt.id, tt.base, code)
		}
	}

	// A record overwritten with junk by the reporter user.
	_, adm := connectAs(t, url0, pw, events.RoleAdmin)
	sjs := events.SigningJetStream(adm, events.LazyServiceSigner(adm))
	ref := events.JobRef{Repo: "proj", Branch: "main", Commit: strings.Repeat("a", 40), Job: "test", Arch: "amd64"}
	ref.JobID = events.JobID(ref.Repo, ref.Branch, ref.Commit, ref.Job, ref.Arch)
	data, _ := events.Encode(&events.JobQueued{JobRef: ref, Pool: "default", Class: events.ClassFirst, QueueSeq: 7, QueuedAt: time.Now()})
	if _, err := sjs.Publish(ctx, events.ResultSubject(ref.Repo, ref.Branch, events.KindQueued), data); err != nil {
		t.Fatal(err)
	}
	job := func() string { _, body := do(stolen, "GET", baseA+"/api/v1/jobs/"+ref.JobID, nil, nil); return body }
	brokertest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		if !strings.Contains(job(), `"status": "queued"`) {
			return fmt.Errorf("no queued record yet: %s", job())
		}
		return nil
	})
	_, rjs := connectAs(t, url0, pw, events.RoleReporter)
	kv, err := rjs.KeyValue(ctx, events.BucketResults)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, events.RecordKey(ref.Repo, ref.Branch, ref.JobID), []byte(`{"x":1}`)); err != nil {
		t.Fatal(err)
	}
	// The pages read the reporter's read model, not the bucket: the record
	// is still shown as folded; the junk in the bucket (which the dispatcher
	// and jetci artifacts read) is reported.
	brokertest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		if body := job(); !strings.Contains(body, `"status": "queued"`) || strings.Contains(body, `"x"`) {
			return fmt.Errorf("the overwritten record is not shown as folded: %s", body)
		}
		if _, body := do(stolen, "GET", baseB+"/api/v1/forgeries", nil, map[string]string{"Authorization": "Bearer " + token}); !strings.Contains(body, "not a valid record") {
			return fmt.Errorf("not reported: %s", body)
		}
		return nil
	})

	// Wrong tokens: after the third in a row the client waits, doubling;
	// meanwhile even the right token is refused.
	api := func(tok string) int {
		code, _ := do(stolen, "POST", baseA+"/api/v1/trigger", nil, map[string]string{"Authorization": "Bearer " + tok})
		return code
	}
	refused := 0
	brokertest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		switch code := api("wrong-token-guess"); code {
		case http.StatusUnauthorized:
			refused++
		case http.StatusTooManyRequests:
		default:
			t.Fatalf("wrong token: %d", code)
		}
		if refused < 6 {
			return fmt.Errorf("%d wrong tokens looked at", refused)
		}
		return nil
	})
	if code := api(token); code != http.StatusTooManyRequests {
		t.Errorf("the right token right after 6 wrong ones: %d, want 429", code)
	}
	if code, _ := do(&http.Client{}, "POST", baseA+"/login", url.Values{"token": {token}}, nil); code != 200 {
		t.Errorf("login while throttled: %d", code)
	} else if _, body := do(&http.Client{}, "GET", baseA+"/login?err=throttled", nil, nil); !strings.Contains(body, "Too many wrong tokens") {
		t.Error("no throttled notice")
	}
	_, metrics := do(stolen, "GET", "http://"+metricsA+"/metrics", nil, nil)
	for _, want := range []string{`jetci_auth_failures_total{outcome="refused"} 6`, `jetci_auth_failures_total{outcome="throttled"}`, `jetci_forgeries_total{what="record"}`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
