package reporter

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"
)

// FuzzHook feeds arbitrary headers and bodies to the push-hook checks: no
// panic, and nothing passes without the right signature or token.
func FuzzHook(f *testing.F) {
	f.Add("push", "sha256=00", `{"repository":{"name":"proj","full_name":"a/proj"}}`)
	f.Add("Push Hook", "secret", `{"project":{"name":"p","path_with_namespace":"g/p"}}`)
	f.Add("", "", `not json`)
	f.Add("push", "", `{"repository":{"name":"","full_name":"/"}}`)
	f.Fuzz(func(t *testing.T, event, sig, body string) {
		for _, h := range []http.Header{
			{"X-Github-Event": {event}, "X-Hub-Signature-256": {sig}},
			{"X-Gitea-Event": {event}, "X-Gitea-Signature": {sig}},
			{"X-Gitlab-Event": {event}, "X-Gitlab-Token": {sig}},
		} {
			if _, err := verifyHook("the-secret", h, []byte(body)); err == nil && sig != "the-secret" {
				// Only a valid HMAC may pass; a fuzzer finding one is a bug.
				t.Fatalf("hook accepted with signature %q", sig)
			}
		}
		names, err := hookRepoNames([]byte(body))
		if err == nil {
			for _, n := range names {
				if n == "" || strings.Contains(n, "/") {
					t.Fatalf("repo name %q from %q", n, body)
				}
			}
		}
	})
}

// FuzzRecipientFlag: --mail-to parsing never panics and keeps its shape.
func FuzzRecipientFlag(f *testing.F) {
	f.Add("proj:release/*=a@example.com,b@example.com")
	f.Add("=")
	f.Add("*=x")
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRecipientFlag(s)
		if err == nil && (r.Repo == "" || len(r.To) == 0) {
			t.Fatalf("ParseRecipientFlag(%q) = %+v", s, r)
		}
	})
}

// FuzzHookPayload: a correctly signed hook with any body passes the check and
// its payload parses to safe repo names or a plain error, never a panic; the
// same body with one byte changed is refused.
func FuzzHookPayload(f *testing.F) {
	f.Add([]byte(`{"ref":"refs/heads/main","repository":{"name":"proj","full_name":"team/proj"}}`))
	f.Add([]byte(`{"object_kind":"push","project":{"name":"Proj","path_with_namespace":"group/sub/proj"}}`))
	f.Add([]byte(`{"repository":{"name":"../..","full_name":"a/.."},"project":{"path_with_namespace":"/"}}`))
	f.Add([]byte(`{"repository":null,"project":[1,2]}`))
	f.Add([]byte(`{"repository":{"name":"a\u0000b","full_name":"x/\ud800"}}`))
	f.Add([]byte(``))
	const secret = "fuzz-secret"
	f.Fuzz(func(t *testing.T, body []byte) {
		m := hmac.New(sha256.New, []byte(secret))
		m.Write(body)
		sig := hex.EncodeToString(m.Sum(nil))
		for _, h := range []http.Header{
			{"X-Github-Event": {"push"}, "X-Hub-Signature-256": {"sha256=" + sig}},
			{"X-Gitea-Event": {"push"}, "X-Gitea-Signature": {sig}},
		} {
			if _, err := verifyHook(secret, h, body); err != nil {
				t.Fatalf("signed hook refused: %v", err)
			}
			changed := append([]byte(nil), body...)
			if len(changed) == 0 {
				changed = []byte{0}
			} else {
				changed[len(changed)/2] ^= 1
			}
			if _, err := verifyHook(secret, h, changed); err == nil {
				t.Fatalf("hook accepted for a changed body %q", changed)
			}
		}
		names, err := hookRepoNames(body)
		if err == nil && len(names) == 0 {
			t.Fatal("no names and no error")
		}
		for _, n := range names {
			if !hookRepoName(n) || n == ".." || strings.ContainsAny(n, "/\x00") {
				t.Fatalf("repo name %q from %q", n, body)
			}
		}
	})
}
