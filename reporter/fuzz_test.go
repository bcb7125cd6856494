package reporter

import (
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
