// Package forgetest is an in-process stand-in for a forge's commit-status
// API (GitHub, Gitea or GitLab) for tests: it checks each request's method,
// path, auth header and JSON body as the forge documents them, can be told
// to fail in the ways forges fail, and records the statuses it accepted.
package forgetest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/jetci/jetci/forge"
)

// Answers a Server can be scripted to give, one per request, before it
// accepts again.
const (
	Fail500    = "500"        // 500 Internal Server Error
	RateLimit  = "403-retry"  // 403 with Retry-After: 1
	TooMany    = "429-retry"  // 429 with Retry-After: 1
	Hang       = "hang"       // no answer until the client gives up
	BadToken   = "401"        // 401 Bad credentials
	HangNotify = "hang-until" // no answer until Release (the test kills the client meanwhile)
)

// Posted is one status the server accepted.
type Posted struct {
	SHA, State, Context, TargetURL, Description, Ref string
}

// Server is a fake forge.
type Server struct {
	*httptest.Server
	Kind, Project, Token string

	t        testing.TB
	mu       sync.Mutex
	script   []string
	posted   []Posted
	requests int
	release  chan struct{}
	arrived  chan struct{}
}

// Start runs a fake forge of kind for project, accepting token.
func Start(t testing.TB, kind, project, token string) *Server {
	s := &Server{Kind: kind, Project: project, Token: token, t: t, release: make(chan struct{}), arrived: make(chan struct{}, 100)}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(func() {
		s.Release()
		s.Close()
	})
	return s
}

// Repo is the forge entry that points jetci's repo at this server.
func (s *Server) Repo(repo string) forge.Repo {
	r := forge.Repo{Repo: repo, Kind: s.Kind, URL: s.URL, Project: s.Project, Token: s.Token}
	if s.Kind == forge.GitHub {
		r.URL, r.APIURL = "https://github.example.com", s.URL+"/api/v3"
	}
	return r
}

// Script queues answers for the next requests.
func (s *Server) Script(answers ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.script = append(s.script, answers...)
}

// Release lets hanging requests end (unanswered).
func (s *Server) Release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.release:
	default:
		close(s.release)
	}
}

// Arrived is signalled when a request arrives.
func (s *Server) Arrived() <-chan struct{} { return s.arrived }

// Posted returns the accepted statuses, oldest first.
func (s *Server) Posted() []Posted {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Posted(nil), s.posted...)
}

// Requests counts every request, answered or not.
func (s *Server) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

func (s *Server) path(sha string) string {
	switch s.Kind {
	case forge.GitHub:
		return "/api/v3/repos/" + s.Project + "/statuses/" + sha
	case forge.Gitea:
		return "/api/v1/repos/" + s.Project + "/statuses/" + sha
	}
	return "/api/v4/projects/" + strings.ReplaceAll(s.Project, "/", "%2F") + "/statuses/" + sha
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests++
	answer := ""
	if len(s.script) > 0 {
		answer, s.script = s.script[0], s.script[1:]
	}
	s.mu.Unlock()
	select {
	case s.arrived <- struct{}{}:
	default:
	}
	// The auth header as the forge documents it.
	var tok string
	switch s.Kind {
	case forge.GitHub:
		tok, _ = strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if r.Header.Get("Accept") != "application/vnd.github+json" {
			s.t.Errorf("forge: Accept %q", r.Header.Get("Accept"))
		}
	case forge.Gitea:
		tok, _ = strings.CutPrefix(r.Header.Get("Authorization"), "token ")
	case forge.GitLab:
		tok = r.Header.Get("PRIVATE-TOKEN")
	}
	if answer == BadToken || tok != s.Token {
		http.Error(w, `{"message":"Bad credentials"}`, http.StatusUnauthorized)
		return
	}
	parts := strings.Split(r.URL.EscapedPath(), "/")
	sha := parts[len(parts)-1]
	if r.Method != http.MethodPost || r.URL.EscapedPath() != s.path(sha) || r.Header.Get("Content-Type") != "application/json" {
		s.t.Errorf("forge: %s %s (%s), want POST %s", r.Method, r.URL.EscapedPath(), r.Header.Get("Content-Type"), s.path(sha))
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	var body map[string]string
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		s.t.Errorf("forge: body: %v", err)
		http.Error(w, "bad body", http.StatusUnprocessableEntity)
		return
	}
	p := Posted{SHA: sha, State: body["state"], TargetURL: body["target_url"], Description: body["description"], Ref: body["ref"]}
	states := map[string]bool{"pending": true, "success": true, "failure": true, "error": true}
	allowed := []string{"state", "target_url", "description", "context"}
	p.Context = body["context"]
	if s.Kind == forge.GitLab {
		states = map[string]bool{"pending": true, "running": true, "success": true, "failed": true, "canceled": true}
		allowed = []string{"state", "target_url", "description", "name", "ref", "coverage", "pipeline_id"}
		p.Context = body["name"]
	}
	for k := range body {
		if !contains(allowed, k) {
			s.t.Errorf("forge: body field %q is not in the %s API", k, s.Kind)
		}
	}
	if !states[p.State] || p.Context == "" {
		s.t.Errorf("forge: state %q context %q", p.State, p.Context)
		http.Error(w, `{"message":"Validation Failed"}`, http.StatusUnprocessableEntity)
		return
	}
	switch answer {
	case Fail500:
		http.Error(w, "boom", http.StatusInternalServerError)
		return
	case RateLimit, TooMany:
		w.Header().Set("Retry-After", "1")
		code := http.StatusForbidden
		if answer == TooMany {
			code = http.StatusTooManyRequests
		}
		http.Error(w, `{"message":"You have exceeded a secondary rate limit"}`, code)
		return
	case Hang, HangNotify:
		// Never answered: the client times out (or is killed). The status
		// was not accepted.
		select {
		case <-r.Context().Done():
		case <-s.release:
		}
		return
	}
	s.mu.Lock()
	s.posted = append(s.posted, p)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, `{"id":%d,"state":%q,"context":%q}`, len(s.posted), p.State, p.Context)
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}
