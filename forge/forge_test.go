package forge

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

const testSHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"

// TestStatusRequestsFollowEachForgesAPI posts a status to an in-process
// server standing in for each forge, which checks what the forge's
// documentation asks for: method, path (with the API prefix), auth header and
// the JSON body's fields and state words.
func TestStatusRequestsFollowEachForgesAPI(t *testing.T) {
	cases := []struct {
		kind, project, prefix, path string
		authHeader, authValue       string
		want                        map[string]string
		state                       string
	}{
		{GitHub, "octocat/hello-world", "/api/v3", "/api/v3/repos/octocat/hello-world/statuses/" + testSHA, "Authorization", "Bearer tok-gh",
			map[string]string{"state": "failure", "context": "jetci/test (amd64)", "target_url": "https://ci.example.com/job/1", "description": "3 tests failed"}, Failure},
		{Gitea, "alice/proj", "", "/api/v1/repos/alice/proj/statuses/" + testSHA, "Authorization", "token tok-gt",
			map[string]string{"state": "pending", "context": "jetci/test (amd64)", "target_url": "https://ci.example.com/job/1", "description": "queued"}, Pending},
		{GitLab, "group/sub/proj", "", "/api/v4/projects/group%2Fsub%2Fproj/statuses/" + testSHA, "PRIVATE-TOKEN", "tok-gl",
			map[string]string{"state": "failed", "name": "jetci/test (amd64)", "target_url": "https://ci.example.com/job/1", "description": "no runner for riscv64", "ref": "main"}, Error},
	}
	for _, c := range cases {
		t.Run(c.kind, func(t *testing.T) {
			got := make(chan map[string]string, 1)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodPost || r.URL.EscapedPath() != c.path {
					t.Errorf("%s %s, want POST %s", r.Method, r.URL.EscapedPath(), c.path)
				}
				if v := r.Header.Get(c.authHeader); v != c.authValue {
					t.Errorf("%s: %q, want %q", c.authHeader, v, c.authValue)
				}
				if ct := r.Header.Get("Content-Type"); ct != "application/json" {
					t.Errorf("Content-Type %q", ct)
				}
				var body map[string]string
				if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
					t.Errorf("body: %v", err)
				}
				got <- body
				w.WriteHeader(http.StatusCreated)
				io.WriteString(w, `{"id":1}`)
			}))
			defer srv.Close()
			tok := strings.TrimPrefix(strings.TrimPrefix(c.authValue, "Bearer "), "token ")
			r := Repo{Repo: "proj", Kind: c.kind, URL: srv.URL, Project: c.project, Token: tok}
			if c.kind == GitHub {
				r.URL = "https://github.example.com"
				r.APIURL = srv.URL + c.prefix // GitHub Enterprise: URL/api/v3
				if got := (Repo{Kind: GitHub, URL: "https://ghe.example.com"}).API(); got != "https://ghe.example.com/api/v3" {
					t.Errorf("GHE API root %s", got)
				}
				if got := (Repo{Kind: GitHub, URL: "https://github.com"}).API(); got != "https://api.github.com" {
					t.Errorf("github.com API root %s", got)
				}
			}
			if err := r.Validate(); err != nil {
				t.Fatal(err)
			}
			ctx := c.want["context"]
			if ctx == "" {
				ctx = c.want["name"]
			}
			err := r.Post(context.Background(), http.DefaultClient, Status{SHA: testSHA, State: c.state, Context: ctx,
				TargetURL: c.want["target_url"], Description: c.want["description"], Ref: c.want["ref"]}, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			body := <-got
			if c.kind != GitLab {
				delete(c.want, "ref")
			}
			if len(body) != len(c.want) {
				t.Errorf("body %v, want %v", body, c.want)
			}
			for k, v := range c.want {
				if body[k] != v {
					t.Errorf("body[%s] = %q, want %q", k, body[k], v)
				}
			}
		})
	}
}

func TestAnswersAreClassified(t *testing.T) {
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	answer := func(code int, h map[string]string, body string) error {
		rec := httptest.NewRecorder()
		for k, v := range h {
			rec.Header().Set(k, v)
		}
		rec.WriteHeader(code)
		resp := rec.Result()
		return Classify(resp, []byte(body), now, "s3cret")
	}
	var rl *RateLimitError
	if err := answer(403, map[string]string{"Retry-After": "30"}, ""); !errors.As(err, &rl) || !rl.After.Equal(now.Add(30*time.Second)) {
		t.Errorf("403 with Retry-After: %v", err)
	}
	if err := answer(429, map[string]string{"Retry-After": now.Add(2 * time.Minute).Format(http.TimeFormat)}, ""); !errors.As(err, &rl) || !rl.After.Equal(now.Add(2*time.Minute)) {
		t.Errorf("429 with a date: %v", err)
	}
	reset := now.Add(10 * time.Minute).Unix()
	if err := answer(403, map[string]string{"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": itoa(reset)}, ""); !errors.As(err, &rl) || rl.After.Unix() != reset {
		t.Errorf("403 primary rate limit: %v", err)
	}
	var ae *AuthError
	if err := answer(401, nil, `{"message":"Bad credentials s3cret"}`); !errors.As(err, &ae) || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("401: %v", err)
	}
	if err := answer(403, nil, `{"message":"Resource not accessible by integration"}`); !errors.As(err, &ae) {
		t.Errorf("403 without a rate limit: %v", err)
	}
	if err := answer(500, nil, "boom"); err == nil || errors.As(err, &ae) || errors.As(err, &rl) {
		t.Errorf("500: %v", err)
	}
}

func itoa(n int64) string { return fmtInt(n) }

func fmtInt(n int64) string { b, _ := json.Marshal(n); return string(b) }

func TestConfigNeedsATokenFromAFileOrTheEnvironment(t *testing.T) {
	t.Setenv("JETCI_TEST_FORGE_TOKEN", "abc")
	r := Repo{Repo: "proj", Kind: "forgejo", URL: "https://codeberg.org/", Project: "a/b", TokenEnv: "JETCI_TEST_FORGE_TOKEN"}
	if err := r.Resolve(); err != nil || r.Token != "abc" || r.Kind != Gitea || r.API() != "https://codeberg.org/api/v1" {
		t.Fatalf("%v %+v", err, r)
	}
	for _, bad := range []Repo{
		{Repo: "proj", Kind: GitHub, Project: "a/b"},                                    // no token
		{Repo: "proj", Kind: GitHub, Project: "a", Token: "x"},                          // not owner/repo
		{Repo: "proj", Kind: "bitbucket", URL: "https://x", Project: "a/b", Token: "x"}, // unknown kind
		{Repo: "proj", Kind: GitLab, Project: "a/b", Token: "x"},                        // no URL
		{Repo: "proj", Kind: GitHub, Project: "a/b", TokenEnv: "JETCI_TEST_UNSET_VAR"},
		{Repo: "proj", Kind: GitHub, Project: "a/b", Token: "x", Combined: "jetci/test (amd64)"}, // a job's context
		{Repo: "proj", Kind: GitHub, Project: "a/b", Token: "x", Combined: "ci\nall"},
		{Repo: "proj", Kind: GitHub, Project: "a/b", Token: "x", Combined: " jetci"},
	} {
		if err := bad.Resolve(); err == nil {
			t.Errorf("%+v: accepted", bad)
		}
	}
	if ok := (Repo{Repo: "proj", Kind: GitHub, Project: "a/b", Token: "x", Combined: "jetci"}); ok.Resolve() != nil {
		t.Errorf("combined: jetci refused: %v", ok.Resolve())
	}
	if err := Mask(errors.New(`Post "https://x?t=abc": abc refused`), "abc"); strings.Contains(err.Error(), "abc") {
		t.Errorf("not masked: %v", err)
	}
}

func TestLinks(t *testing.T) {
	gh := Repo{Kind: GitHub, URL: "https://github.com", Project: "o/r"}
	gl := Repo{Kind: GitLab, URL: "https://gitlab.example.com", Project: "g/p"}
	gt := Repo{Kind: Gitea, URL: "https://gitea.example.com", Project: "o/r"}
	for got, want := range map[string]string{
		gh.CommitURL(testSHA):           "https://github.com/o/r/commit/" + testSHA,
		gl.CommitURL(testSHA):           "https://gitlab.example.com/g/p/-/commit/" + testSHA,
		gh.CompareURL(testSHA, testSHA): "https://github.com/o/r/compare/" + testSHA + "..." + testSHA,
		gh.PullURL(12):                  "https://github.com/o/r/pull/12",
		gt.PullURL(12):                  "https://gitea.example.com/o/r/pulls/12",
		gl.PullURL(12):                  "https://gitlab.example.com/g/p/-/merge_requests/12",
	} {
		if got != want {
			t.Errorf("%s, want %s", got, want)
		}
	}
}

func TestCancelledIsEachForgesWord(t *testing.T) {
	for kind, want := range map[string]string{GitHub: "error", Gitea: "error", GitLab: "canceled"} {
		if got := (Repo{Kind: kind}).State(Cancelled); got != want {
			t.Errorf("%s: %s, want %s", kind, got, want)
		}
	}
}
