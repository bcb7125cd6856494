package reporter

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Handler serves the pages, the JSON API and the actions. See README.md
// ("Web UI and API") for the API with examples.
//
//	GET  /                         overview: every repo, branch × job × arch
//	GET  /branch?repo=&branch=     a branch's commits, newest first
//	GET  /commit?repo=&branch=&commit=
//	GET  /job/{id}[?attempt=N]     a job: attempts, timings, log (live while it runs), artifacts
//	GET  /runners, /queue
//	GET  /tests[?repo=&branch=&arch=&job=]  flaky and slowest tests
//	GET  /login, POST /login, POST /logout
//	POST /action/{trigger,recheck,cancel}   form posts (session + CSRF field)
//
//	GET  /api/v1/repos | branches?repo= | commits?repo=&branch=&limit= | commits/{sha}?repo=&branch=
//	GET  /api/v1/jobs/{id} | jobs/{id}/log[?attempt=N] | jobs/{id}/log/stream (SSE)
//	GET  /api/v1/jobs/{id}/artifacts[?attempt=N] | jobs/{id}/artifacts/{path...}
//	GET  /api/v1/runners | queue | results?repo=&branch=&commit=&all=1 | events (SSE)
//	GET  /api/v1/logs/{job}/{attempt}
//	GET  /api/v1/tests/flaky | tests/slowest  [?repo=&branch=&arch=&job=&limit=]
//	POST /api/v1/trigger {repo,branch,commit?,job?,arch?} | jobs/{id}/recheck | jobs/{id}/cancel
//	POST /api/v1/branches/recheck {repo,branch}    the broken-build flow's re-check
//	GET  /metrics (when configured), /healthz
func (r *Reporter) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", r.pageOverview)
	mux.HandleFunc("GET /branch", r.pageBranch)
	mux.HandleFunc("GET /commit", r.pageCommit)
	mux.HandleFunc("GET /job/{id}", r.pageJob)
	mux.HandleFunc("GET /runners", r.pageRunners)
	mux.HandleFunc("GET /queue", r.pageQueue)
	mux.HandleFunc("GET /modules", r.pageModules)
	mux.HandleFunc("GET /tests", r.pageTests)
	mux.HandleFunc("GET /forgeries", r.pageForgeries)
	mux.HandleFunc("GET /api/v1/forgeries", r.apiForgeries)
	mux.HandleFunc("GET /login", r.pageLogin)
	mux.HandleFunc("POST /login", r.postLogin)
	mux.HandleFunc("POST /logout", r.postLogout)
	mux.HandleFunc("POST /action/{action}", r.formAction)
	mux.HandleFunc("GET /favicon.ico", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })

	mux.HandleFunc("GET /api/v1/repos", r.apiRepos)
	mux.HandleFunc("GET /api/v1/branches", r.apiBranches)
	mux.HandleFunc("GET /api/v1/commits", r.apiCommits)
	mux.HandleFunc("GET /api/v1/commits/{sha}", r.apiCommit)
	mux.HandleFunc("GET /api/v1/jobs/{id}", r.apiJob)
	mux.HandleFunc("GET /api/v1/jobs/{id}/log", r.apiJobLog)
	mux.HandleFunc("GET /api/v1/jobs/{id}/log/stream", r.apiLogStream)
	mux.HandleFunc("GET /api/v1/jobs/{id}/artifacts", r.apiArtifacts)
	mux.HandleFunc("GET /api/v1/jobs/{id}/artifacts/{path...}", r.apiArtifact)
	mux.HandleFunc("GET /api/v1/runners", r.apiRunners)
	mux.HandleFunc("GET /api/v1/queue", r.apiQueue)
	mux.HandleFunc("GET /api/v1/modules", r.apiModules)
	mux.HandleFunc("GET /api/v1/bisections", r.apiBisections)
	mux.HandleFunc("GET /api/v1/results", r.apiResults)
	mux.HandleFunc("GET /api/v1/events", r.apiEvents)
	mux.HandleFunc("GET /api/v1/tests/flaky", r.apiFlakyTests)
	mux.HandleFunc("GET /api/v1/tests/slowest", r.apiSlowestTests)
	mux.HandleFunc("GET /api/v1/logs/{job}/{attempt}", r.apiLog)
	mux.HandleFunc("POST /api/v1/trigger", r.apiTrigger)
	mux.HandleFunc("POST /api/v1/jobs/{id}/recheck", r.apiRecheckJob)
	mux.HandleFunc("POST /api/v1/jobs/{id}/cancel", r.apiCancel)
	mux.HandleFunc("POST /api/v1/branches/recheck", r.apiRecheckBranch)
	mux.HandleFunc("POST /hooks/git", r.apiHook)
	if r.cfg.Metrics != nil {
		mux.Handle("GET /metrics", r.cfg.Metrics.MetricsHandler())
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		h, pattern := mux.Handler(req)
		if pattern != "" {
			if !r.ready() && needsView(req.URL.Path) {
				writeError(w, http.StatusServiceUnavailable, errNotReady.Error())
				return
			}
			mux.ServeHTTP(w, req) // sets the path values, which h alone would not
			return
		}
		// No route: the mux would answer 404 or 405 in plain text. Say it in
		// JSON on the API, on a page elsewhere.
		probe := &statusProbe{header: http.Header{}}
		h.ServeHTTP(probe, req)
		if loc := probe.header.Get("Location"); loc != "" {
			http.Redirect(w, req, loc, probe.code) // a path to clean: /a/../b
			return
		}
		if allow := probe.header.Get("Allow"); allow != "" {
			w.Header().Set("Allow", allow)
		}
		msg := "no such page: " + req.URL.Path
		if probe.code == http.StatusMethodNotAllowed {
			msg = fmt.Sprintf("%s is not allowed on %s (allowed: %s)", req.Method, req.URL.Path, probe.header.Get("Allow"))
		}
		if strings.HasPrefix(req.URL.Path, "/api/") || strings.HasPrefix(req.URL.Path, "/hooks/") {
			writeError(w, probe.code, msg)
		} else {
			r.errorPage(w, req, probe.code, msg)
		}
	})
}

func needsView(p string) bool {
	return p != "/healthz" && p != "/metrics" && !strings.HasPrefix(p, "/login") && p != "/logout" && p != "/hooks/git"
}

// statusProbe records what the mux's own 404/405 handler would write.
type statusProbe struct {
	header http.Header
	code   int
}

func (p *statusProbe) Header() http.Header         { return p.header }
func (p *statusProbe) Write(b []byte) (int, error) { return len(b), nil }
func (p *statusProbe) WriteHeader(code int)        { p.code = code }

func filterOf(req *http.Request) Filter {
	q := req.URL.Query()
	return Filter{Repo: q.Get("repo"), Branch: q.Get("branch"), Commit: q.Get("commit"), Module: q.Get("module"), All: q.Get("all") != "" && q.Get("all") != "0"}
}

func (r *Reporter) apiResults(w http.ResponseWriter, req *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"results": r.view.List(filterOf(req))})
}

func (r *Reporter) apiRepos(w http.ResponseWriter, req *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"repos": nonNil(r.view.Repos(""))})
}

func (r *Reporter) apiBranches(w http.ResponseWriter, req *http.Request) {
	repo := req.URL.Query().Get("repo")
	if repo == "" {
		writeError(w, http.StatusBadRequest, "want ?repo=R")
		return
	}
	rs := r.view.Repos(repo)
	if len(rs) == 0 {
		writeError(w, http.StatusNotFound, "no results for a repo named "+strconv.Quote(repo))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"repo": repo, "columns": rs[0].Columns, "branches": rs[0].Branches})
}

func (r *Reporter) apiCommits(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	if q.Get("repo") == "" || q.Get("branch") == "" {
		writeError(w, http.StatusBadRequest, "want ?repo=R&branch=B")
		return
	}
	limit := 100
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, "limit must be a number ≥ 0 (0: all)")
			return
		}
		limit = n
	}
	writeJSON(w, http.StatusOK, map[string]any{"commits": nonNil(r.view.Commits(q.Get("repo"), q.Get("branch"), "", limit))})
}

func (r *Reporter) apiCommit(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	sha := req.PathValue("sha")
	if q.Get("repo") == "" || q.Get("branch") == "" {
		writeError(w, http.StatusBadRequest, "want ?repo=R&branch=B")
		return
	}
	cs := r.view.Commits(q.Get("repo"), q.Get("branch"), sha, 0)
	switch len(cs) {
	case 0:
		writeError(w, http.StatusNotFound, "no results for commit "+sha)
	case 1:
		writeJSON(w, http.StatusOK, cs[0])
	default:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%s names %d commits; give more of the sha", sha, len(cs)))
	}
}

func (r *Reporter) apiJob(w http.ResponseWriter, req *http.Request) {
	rec, ok := r.view.Job(req.PathValue("id"))
	if !ok {
		writeError(w, http.StatusNotFound, "no job "+req.PathValue("id"))
		return
	}
	r.withAllTests(req.Context(), &rec)
	recs := []Record{rec}
	explainWaits(recs, r.view.Runners())
	writeJSON(w, http.StatusOK, recs[0])
}

func (r *Reporter) apiRunners(w http.ResponseWriter, req *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"runners": nonNil(r.view.Runners())})
}

func (r *Reporter) apiQueue(w http.ResponseWriter, req *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"partitions": nonNil(r.view.Queue(time.Now()))})
}

func (r *Reporter) apiArtifacts(w http.ResponseWriter, req *http.Request) {
	rec, a, ok := r.attemptOf(w, req)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"job_id": rec.JobID, "attempt": a.N, "artifacts": nonNil(a.Artifacts)})
}

func (r *Reporter) apiArtifact(w http.ResponseWriter, req *http.Request) {
	rec, a, ok := r.attemptOf(w, req)
	if !ok {
		return
	}
	p := req.PathValue("path")
	for _, art := range a.Artifacts {
		if art.Path != p {
			continue
		}
		obj, err := r.openObject(req.Context(), r.artifacts, "artifact", art.Object, art.Digest, rec.JobID)
		if errors.Is(err, jetstream.ErrObjectNotFound) {
			writeError(w, http.StatusGone, "artifact "+p+" expired")
			return
		}
		if errors.Is(err, errReplaced) {
			writeError(w, http.StatusConflict, "artifact "+p+" is refused: "+err.Error())
			return
		}
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		defer obj.Close()
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": path.Base(p)}))
		w.Header().Set("Content-Length", strconv.FormatInt(art.Size, 10))
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = io.Copy(w, obj)
		return
	}
	writeError(w, http.StatusNotFound, fmt.Sprintf("job %s attempt %d has no artifact %q", rec.JobID, a.N, p))
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
