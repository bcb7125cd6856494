// Package forge talks to the code forges jetci reports to: GitHub (and
// GitHub Enterprise), Gitea/Forgejo and GitLab. It builds their commit-status
// requests, classifies their answers (rate limits, bad tokens) and reads
// their pull/merge-request webhook payloads.
//
// Every request follows the forge's published REST documentation:
//
//   - GitHub: POST {api}/repos/{owner}/{repo}/statuses/{sha}, "Authorization:
//     Bearer TOKEN", body {"state","target_url","description","context"};
//     states error, failure, pending, success.
//   - Gitea/Forgejo: POST {url}/api/v1/repos/{owner}/{repo}/statuses/{sha},
//     "Authorization: token TOKEN", the same body (states pending, success,
//     error, failure, warning).
//   - GitLab: POST {url}/api/v4/projects/{id}/statuses/{sha}, "PRIVATE-TOKEN:
//     TOKEN", body {"state","name","target_url","description"}; states
//     pending, running, success, failed, canceled; {id} is the numeric id or
//     the URL-encoded path (group%2Fproject).
package forge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Kinds of forge.
const (
	GitHub = "github"
	Gitea  = "gitea" // also Forgejo
	GitLab = "gitlab"
)

// Commit states, in jetci's words; each forge's word is State.
const (
	Pending = "pending"
	Success = "success"
	Failure = "failure"
	Error   = "error"
	// Cancelled: GitLab's canceled; GitHub and Gitea have no such state,
	// so error there (the description says why).
	Cancelled = "cancelled"
)

// Repo is one watched repository's forge: where its API is, which project it
// is there, and the token that may post statuses.
type Repo struct {
	// Repo is jetci's name of the repository (--repo name=URL).
	Repo string `yaml:"repo" json:"repo"`
	// Kind is github, gitea (Forgejo too) or gitlab.
	Kind string `yaml:"kind" json:"kind"`
	// URL is the forge's web address (https://github.com,
	// https://gitea.example.com, https://gitlab.example.com); links to
	// commits and pull requests are made from it. Default for github:
	// https://github.com.
	URL string `yaml:"url" json:"url"`
	// APIURL overrides the API root made from URL (github.com:
	// https://api.github.com; GitHub Enterprise: URL/api/v3; Gitea: URL/api/v1;
	// GitLab: URL/api/v4).
	APIURL string `yaml:"api_url" json:"api_url,omitempty"`
	// Project is owner/repo (GitHub, Gitea) or the GitLab project's path
	// (group/sub/project) or numeric id.
	Project string `yaml:"project" json:"project"`
	// The token comes from a file or an environment variable, never from
	// the config or a flag itself.
	TokenFile string `yaml:"token_file" json:"-"`
	TokenEnv  string `yaml:"token_env" json:"-"`
	Token     string `yaml:"-" json:"-"`
	// Combined, when set, names one more context per commit (e.g.
	// "jetci"): the worst state of all its jobs, for a branch protection
	// rule that requires one check whatever jobs a commit runs. Off when
	// empty.
	Combined string `yaml:"combined" json:"combined,omitempty"`
}

// Resolve reads the token and fills defaults, then validates.
func (r *Repo) Resolve() error {
	r.Kind = strings.ToLower(strings.TrimSpace(r.Kind))
	if r.Kind == "forgejo" {
		r.Kind = Gitea
	}
	if r.URL == "" && r.Kind == GitHub {
		r.URL = "https://github.com"
	}
	r.URL = strings.TrimRight(r.URL, "/")
	r.APIURL = strings.TrimRight(r.APIURL, "/")
	switch {
	case r.TokenFile != "" && r.TokenEnv != "":
		return fmt.Errorf("forge of %s: give token_file or token_env, not both", r.Repo)
	case r.TokenFile != "":
		b, err := os.ReadFile(r.TokenFile)
		if err != nil {
			return fmt.Errorf("forge of %s: token_file: %w", r.Repo, err)
		}
		r.Token = strings.TrimSpace(string(b))
	case r.TokenEnv != "":
		r.Token = strings.TrimSpace(os.Getenv(r.TokenEnv))
		if r.Token == "" {
			return fmt.Errorf("forge of %s: $%s is empty or unset", r.Repo, r.TokenEnv)
		}
	}
	return r.Validate()
}

// Validate reports a bad field.
func (r Repo) Validate() error {
	if r.Repo == "" {
		return errors.New("forge: each entry needs the repo it is for")
	}
	switch r.Kind {
	case GitHub, Gitea, GitLab:
	default:
		return fmt.Errorf("forge of %s: kind %q: want github, gitea (forgejo) or gitlab", r.Repo, r.Kind)
	}
	for _, s := range []string{r.URL, r.APIURL} {
		if s == "" {
			continue
		}
		u, err := url.Parse(s)
		if err != nil || u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
			return fmt.Errorf("forge of %s: url %q: want http(s)://host[/path]", r.Repo, s)
		}
	}
	if r.URL == "" && r.APIURL == "" {
		return fmt.Errorf("forge of %s: url is required for %s", r.Repo, r.Kind)
	}
	if r.Project == "" || strings.HasPrefix(r.Project, "/") || strings.HasSuffix(r.Project, "/") {
		return fmt.Errorf("forge of %s: project %q: want owner/repo (GitLab: group/project or a numeric id)", r.Repo, r.Project)
	}
	if r.Kind != GitLab && strings.Count(r.Project, "/") != 1 {
		return fmt.Errorf("forge of %s: project %q: want owner/repo", r.Repo, r.Project)
	}
	if r.Token == "" {
		return fmt.Errorf("forge of %s: a token is required (token_file or token_env)", r.Repo)
	}
	if c := r.Combined; c != "" && (len(c) > 100 || strings.TrimSpace(c) != c || strings.ContainsFunc(c, unicode.IsControl) ||
		!utf8.ValidString(c) || strings.HasSuffix(c, ")")) {
		return fmt.Errorf("forge of %s: combined %q: want a context name like jetci (at most 100 characters, not ending in a job's \"(arch)\")", r.Repo, c)
	}
	return nil
}

// API is the forge's REST API root.
func (r Repo) API() string {
	if r.APIURL != "" {
		return r.APIURL
	}
	switch r.Kind {
	case GitHub:
		if r.URL == "https://github.com" {
			return "https://api.github.com"
		}
		return r.URL + "/api/v3" // GitHub Enterprise Server
	case Gitea:
		return r.URL + "/api/v1"
	}
	return r.URL + "/api/v4"
}

// Status is one commit status to post.
type Status struct {
	SHA         string `json:"sha"`
	State       string `json:"state"` // pending, success, failure, error
	Context     string `json:"context"`
	TargetURL   string `json:"target_url,omitempty"`
	Description string `json:"description,omitempty"`
	// Ref is the branch (GitLab's optional ref).
	Ref string `json:"ref,omitempty"`
}

// State is the forge's word for a jetci state.
func (r Repo) State(s string) string {
	if r.Kind != GitLab {
		if s == Cancelled {
			return Error
		}
		return s
	}
	switch s {
	case Failure, Error:
		return "failed"
	case Cancelled:
		return "canceled"
	}
	return s
}

// maxDescription: GitHub cuts descriptions at 140 characters.
const maxDescription = 140

// Request builds the POST of a status.
func (r Repo) Request(ctx context.Context, st Status) (*http.Request, error) {
	if !validSHA(st.SHA) {
		return nil, fmt.Errorf("commit %q: not a hex object id", st.SHA)
	}
	desc := st.Description
	if len(desc) > maxDescription {
		cut := maxDescription - 1
		for cut > 0 && desc[cut]&0xC0 == 0x80 {
			cut--
		}
		desc = desc[:cut] + "…"
	}
	var u string
	var body any
	switch r.Kind {
	case GitLab:
		u = r.API() + "/projects/" + url.PathEscape(r.Project) + "/statuses/" + st.SHA
		b := map[string]string{"state": r.State(st.State), "name": st.Context}
		if st.TargetURL != "" {
			b["target_url"] = st.TargetURL
		}
		if desc != "" {
			b["description"] = desc
		}
		if st.Ref != "" {
			b["ref"] = st.Ref
		}
		body = b
	default:
		owner, name, _ := strings.Cut(r.Project, "/")
		u = r.API() + "/repos/" + url.PathEscape(owner) + "/" + url.PathEscape(name) + "/statuses/" + st.SHA
		b := map[string]string{"state": r.State(st.State), "context": st.Context}
		if st.TargetURL != "" {
			b["target_url"] = st.TargetURL
		}
		if desc != "" {
			b["description"] = desc
		}
		body = b
	}
	data, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "jetci")
	switch r.Kind {
	case GitHub:
		req.Header.Set("Accept", "application/vnd.github+json")
		req.Header.Set("X-GitHub-Api-Version", "2022-11-28")
		req.Header.Set("Authorization", "Bearer "+r.Token)
	case Gitea:
		req.Header.Set("Accept", "application/json")
		req.Header.Set("Authorization", "token "+r.Token)
	case GitLab:
		req.Header.Set("PRIVATE-TOKEN", r.Token)
	}
	return req, nil
}

func validSHA(s string) bool {
	if len(s) != 40 && len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// RateLimitError is a 429, or a 403 the forge marks as a rate limit: wait
// until After before the next request to this forge.
type RateLimitError struct {
	Status string
	After  time.Time
}

func (e *RateLimitError) Error() string {
	return fmt.Sprintf("rate limited (%s); next try after %s", e.Status, e.After.UTC().Format(time.RFC3339))
}

// AuthError is a 401, or a 403 that is no rate limit: the token is wrong,
// expired or lacks the scope. Retrying soon does not help.
type AuthError struct {
	Status string
	Body   string
}

func (e *AuthError) Error() string {
	s := "the forge refused the token (" + e.Status + ")"
	if e.Body != "" {
		s += ": " + e.Body
	}
	return s + "; check the token and its scope"
}

// Post sends a status and classifies the answer: nil for 2xx, a
// *RateLimitError, an *AuthError, or another error (retried with backoff).
func (r Repo) Post(ctx context.Context, client *http.Client, st Status, now time.Time) error {
	req, err := r.Request(ctx, st)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return Mask(err, r.Token)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode/100 == 2 {
		return nil
	}
	return Classify(resp, msg, now, r.Token)
}

// Classify turns a non-2xx answer into an error.
func Classify(resp *http.Response, body []byte, now time.Time, token string) error {
	h := resp.Header
	if after, ok := retryAfter(h, now); ok && (resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusForbidden) {
		return &RateLimitError{Status: resp.Status, After: after}
	}
	if resp.StatusCode == http.StatusForbidden && h.Get("X-RateLimit-Remaining") == "0" {
		after := now.Add(time.Minute)
		if reset, err := strconv.ParseInt(h.Get("X-RateLimit-Reset"), 10, 64); err == nil && reset > now.Unix() {
			after = time.Unix(reset, 0)
		}
		return &RateLimitError{Status: resp.Status, After: after}
	}
	if resp.StatusCode == http.StatusTooManyRequests {
		return &RateLimitError{Status: resp.Status, After: now.Add(time.Minute)}
	}
	text := Mask(errors.New(strings.TrimSpace(string(body))), token).Error()
	if len(text) > 200 {
		text = text[:200] + "…"
	}
	if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
		return &AuthError{Status: resp.Status, Body: text}
	}
	if resp.StatusCode == http.StatusNotFound {
		// GitHub answers 404 to a token that may not see the repository.
		return &AuthError{Status: resp.Status, Body: "no such project, or the token may not see it: " + text}
	}
	return fmt.Errorf("forge answered %s: %s", resp.Status, text)
}

// retryAfter reads Retry-After (seconds or an HTTP date), at most a day ahead.
func retryAfter(h http.Header, now time.Time) (time.Time, bool) {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return time.Time{}, false
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil && s >= 0 {
		return now.Add(time.Duration(min(s, 86400)) * time.Second), true
	}
	if t, err := http.ParseTime(v); err == nil {
		if t.Before(now) {
			t = now
		}
		if t.After(now.Add(24 * time.Hour)) {
			t = now.Add(24 * time.Hour)
		}
		return t, true
	}
	return time.Time{}, false
}

// Mask replaces the token in an error's text with "***".
func Mask(err error, token string) error {
	if err == nil || token == "" || !strings.Contains(err.Error(), token) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), token, "***"))
}

// CommitURL, CompareURL and PullURL are the forge's pages ("" when unknown).
func (r Repo) CommitURL(sha string) string {
	if r.URL == "" || !validSHA(sha) {
		return ""
	}
	if r.Kind == GitLab {
		return r.URL + "/" + r.Project + "/-/commit/" + sha
	}
	return r.URL + "/" + r.Project + "/commit/" + sha
}

func (r Repo) CompareURL(from, to string) string {
	if r.URL == "" || !validSHA(from) || !validSHA(to) {
		return ""
	}
	if r.Kind == GitLab {
		return r.URL + "/" + r.Project + "/-/compare/" + from + "..." + to
	}
	return r.URL + "/" + r.Project + "/compare/" + from + "..." + to
}

func (r Repo) PullURL(n int) string {
	if r.URL == "" || n <= 0 {
		return ""
	}
	switch r.Kind {
	case GitLab:
		return r.URL + "/" + r.Project + "/-/merge_requests/" + strconv.Itoa(n)
	case Gitea:
		return r.URL + "/" + r.Project + "/pulls/" + strconv.Itoa(n)
	}
	return r.URL + "/" + r.Project + "/pull/" + strconv.Itoa(n)
}
