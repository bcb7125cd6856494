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

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter/readmodel"
)

// Handler serves the pages, the JSON API and the actions. See docs/web-and-api.md
// ("Web UI and API") for the API with examples.
//
//	GET  /                         overview: every repo, branch × job × arch
//	GET  /branch?repo=&branch=     a branch's commits, newest first
//	GET  /commit?repo=&branch=&commit=
//	GET  /job/{id}[?attempt=N]     a job: attempts, timings, log (live while it runs), artifacts
//	GET  /runners, /queue
//	GET  /dashboard[?repo=]        every branch's counts and what fails, on one screen
//	GET  /modules?repo=[&branch=&failing=1&q=]  the module grid; /module?repo=&module= one module's history
//	GET  /search?q=                repos, branches, modules, commits, authors, test names
//	GET  /badge/REPO/BRANCH.svg[?job=&arch=]   status badge
//	GET  /artifacts/latest/REPO/BRANCH/JOB/ARCH/[PATH]  the latest passing job's artifacts
//	GET  /tests[?repo=&branch=&arch=&job=]  flaky and slowest tests
//	GET  /login, POST /login, POST /logout
//	POST /action/{trigger,recheck,cancel}   form posts (session + CSRF field)
//
//	GET  /api/v1/repos | branches?repo= | commits?repo=&branch=&limit=&after=&before= | commits/{sha}?repo=&branch=
//	GET  /api/v1/jobs/{id} | jobs/{id}/log[?attempt=N] | jobs/{id}/log/stream (SSE)
//	GET  /api/v1/jobs/{id}/artifacts[?attempt=N] | jobs/{id}/artifacts/{path...}
//	GET  /api/v1/runners | queue | events (SSE) | dashboard[?repo=]
//	GET  /api/v1/results?repo=&branch=&commit=&module=&job=&arch=&status=&author=&q=&since=&until=&all=1&limit=&after=&before=
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
	mux.HandleFunc("GET /favicon.ico", favicon)
	mux.HandleFunc("GET /favicon.svg", favicon)
	mux.HandleFunc("GET /dashboard", r.pageDashboard)
	mux.HandleFunc("GET /branch/jobs", r.pageBranchJobs)
	mux.HandleFunc("GET /module", r.pageModule)
	mux.HandleFunc("GET /search", r.pageSearch)
	mux.HandleFunc("GET /badge/{repo}/{branch...}", r.badge)
	mux.HandleFunc("GET /artifacts/latest/{repo}/{branch}/{job}/{arch}/{file...}", r.latestArtifact)
	mux.HandleFunc("GET /api/v1/dashboard", r.apiDashboard)

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
	mux.HandleFunc("GET /api/v1/forges", r.apiForges)
	mux.HandleFunc("GET /api/v1/pulls", r.apiPulls)
	if r.cfg.Metrics != nil {
		mux.Handle("GET /metrics", r.cfg.Metrics.MetricsHandler())
	}
	mux.HandleFunc("GET /healthz", r.healthz)
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

// healthz answers 503 while the read model cannot be read or kept current
// (say, PostgreSQL is down), and logs why, or while a part of the reporter
// failed and waits to be restarted, naming it.
func (r *Reporter) healthz(w http.ResponseWriter, req *http.Request) {
	if err := r.health(); err != nil {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, err.Error()+"\n")
		return
	}
	if down := r.cfg.Metrics.PartsHealth(); len(down) > 0 {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, strings.Join(down, "\n")+"\n")
		return
	}
	if err := r.view.Health(req.Context()); err != nil {
		r.log.Warn().Err(err).Msg("healthz: not healthy")
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, err.Error()+"\n")
		return
	}
	_, _ = io.WriteString(w, "ok\n")
	if r.notifier != nil {
		for _, f := range r.notifier.ForgeHealth() {
			if f.State != "ok" && f.State != "unknown" {
				_, _ = fmt.Fprintf(w, "forge of %s (%s): %s since %s: %s\n", f.Repo, f.Kind, f.State, f.Since.UTC().Format(time.RFC3339), f.Error)
			}
		}
	}
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

// filterOf reads a list's filters from the query: repo, branch, commit (a
// sha prefix), module, job, arch, status (comma-separated), author, q (text
// in subjects and authors), since and until (RFC 3339 or a Unix time), all.
func filterOf(req *http.Request) (Filter, error) {
	q := req.URL.Query()
	f := Filter{Repo: q.Get("repo"), Branch: q.Get("branch"), Commit: q.Get("commit"), Module: q.Get("module"),
		All: q.Get("all") != "" && q.Get("all") != "0", Job: q.Get("job"), Arch: q.Get("arch"), Author: q.Get("author"), Text: q.Get("q")}
	if c := strings.ToLower(f.Commit); strings.Trim(c, "0123456789abcdef") != "" || len(c) > 64 {
		return f, fmt.Errorf("commit %q is not a sha or a prefix of one", f.Commit)
	}
	if len(f.Text) > 200 || len(f.Author) > 200 {
		return f, errors.New("q and author are at most 200 bytes")
	}
	if s := q.Get("status"); s != "" {
		for _, st := range strings.Split(s, ",") {
			switch status := events.Status(strings.TrimSpace(st)); status {
			case events.StatusQueued, events.StatusRunning, events.StatusHeld, events.StatusPassed, events.StatusFailed,
				events.StatusError, events.StatusCancelled:
				f.Status = append(f.Status, status)
			default:
				return f, fmt.Errorf("status %q: want queued, running, held, passed, failed, error or cancelled", st)
			}
		}
	}
	var err error
	if f.Since, err = timeParam(q.Get("since")); err != nil {
		return f, fmt.Errorf("since: %w", err)
	}
	if f.Until, err = timeParam(q.Get("until")); err != nil {
		return f, fmt.Errorf("until: %w", err)
	}
	return f, nil
}

// timeParam reads a time: RFC 3339, a Unix time in seconds, or a duration
// before now ("24h").
func timeParam(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.Unix(n, 0), nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return time.Now().Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%q is not a time (RFC 3339, Unix seconds, or a duration like 24h)", s)
}

// pageOf reads limit, after and before (cursors from an earlier answer's
// next and prev). limit is at most MaxPage; 0 or none is def.
func pageOf(req *http.Request, def int) (readmodel.Page, error) {
	q := req.URL.Query()
	p := readmodel.Page{Limit: def}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return p, fmt.Errorf("limit must be a number ≥ 0 (0: %d; at most %d)", def, MaxPage)
		}
		if n > 0 {
			p.Limit = min(n, MaxPage)
		}
	}
	var err error
	if p.After, err = readmodel.ParseCursor(q.Get("after")); err != nil {
		return p, err
	}
	if p.Before, err = readmodel.ParseCursor(q.Get("before")); err != nil {
		return p, err
	}
	if q.Get("after") != "" && q.Get("before") != "" {
		return p, errors.New("give after or before, not both")
	}
	return p, nil
}

// paged adds a list answer's paging fields: next and prev, cursors for
// ?after= and ?before= (absent at either end), and the limit applied.
func paged(m map[string]any, pg readmodel.Paged, limit int) map[string]any {
	if s := pg.Next.String(); s != "" {
		m["next"] = s
	}
	if s := pg.Prev.String(); s != "" {
		m["prev"] = s
	}
	m["limit"] = limit
	return m
}

func (r *Reporter) apiResults(w http.ResponseWriter, req *http.Request) {
	f, err := filterOf(req)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	p, err := pageOf(req, DefaultPage)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	recs, pg, err := r.view.Results(req.Context(), f, p, 0)
	if err != nil {
		r.dbError(w, err)
		return
	}
	for i := range recs {
		recs[i].Tests = viewTests(recs[i].Tests) // every test: /api/v1/jobs/ID and jetci results
	}
	recs, pg = cutToSize(recs, pg, p.Before != (readmodel.Cursor{}), MaxAnswerBytes)
	writeJSON(w, http.StatusOK, paged(map[string]any{"results": nonNil(recs)}, pg, p.Limit))
}

// MaxAnswerBytes bounds the records of one list answer, as written.
const MaxAnswerBytes = 400 << 10

// cutToSize shortens a page of records to what fits in max bytes of JSON
// (at least one record), moving the cursor to continue after the last one
// kept; going backwards, the records nearest the cursor are kept.
func cutToSize(recs []Record, pg readmodel.Paged, backwards bool, max int) ([]Record, readmodel.Paged) {
	size := 0
	for n := range recs {
		i := n
		if backwards {
			i = len(recs) - 1 - n
		}
		b, _ := json.MarshalIndent(&recs[i], "    ", "  ")
		if size += len(b) + 6; size > max && n > 0 {
			if backwards {
				kept := recs[i+1:]
				pg.Prev = readmodel.Cursor{Time: nanos(firstSeen(&kept[0])), ID: sortKey(&kept[0])}
				return kept, pg
			}
			last := &recs[i-1]
			pg.Next = readmodel.Cursor{Time: nanos(firstSeen(last)), ID: sortKey(last)}
			return recs[:i], pg
		}
	}
	return recs, pg
}

// dbError answers a request the read model failed.
func (r *Reporter) dbError(w http.ResponseWriter, err error) {
	r.log.Warn().Err(err).Str("db", r.db.Where()).Msg("read model")
	writeError(w, http.StatusServiceUnavailable, "the read model does not answer: "+err.Error())
}

func (r *Reporter) apiRepos(w http.ResponseWriter, req *http.Request) {
	rs, err := r.view.ReposErr(req.Context(), req.URL.Query().Get("repo"), req.URL.Query().Get("modules") == "1")
	if err != nil {
		r.dbError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"repos": nonNil(rs)})
}

func (r *Reporter) apiBranches(w http.ResponseWriter, req *http.Request) {
	repo := req.URL.Query().Get("repo")
	if repo == "" {
		writeError(w, http.StatusBadRequest, "want ?repo=R")
		return
	}
	rs, err := r.view.ReposErr(req.Context(), repo, req.URL.Query().Get("modules") == "1")
	if err != nil {
		r.dbError(w, err)
		return
	}
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
	p, err := pageOf(req, DefaultCommitsPage)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	cs, pg, err := r.view.CommitsPage(req.Context(), q.Get("repo"), q.Get("branch"), "", p, MaxCommitJobs)
	if err != nil {
		r.dbError(w, err)
		return
	}
	out := map[string]any{"commits": nonNil(cs)}
	if pl := r.view.PullOf(q.Get("repo"), q.Get("branch")); pl != nil {
		out["pull"] = pl // the branch is a pull/merge request's
	}
	writeJSON(w, http.StatusOK, paged(out, pg, p.Limit))
}

func (r *Reporter) apiCommit(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	sha := req.PathValue("sha")
	if q.Get("repo") == "" || q.Get("branch") == "" {
		writeError(w, http.StatusBadRequest, "want ?repo=R&branch=B")
		return
	}
	if c := strings.ToLower(sha); strings.Trim(c, "0123456789abcdef") != "" || len(c) > 64 {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%q is not a sha or a prefix of one", sha))
		return
	}
	cs, _, err := r.view.CommitsPage(req.Context(), q.Get("repo"), q.Get("branch"), sha, readmodel.Page{Limit: 2}, 0)
	if err != nil {
		r.dbError(w, err)
		return
	}
	switch len(cs) {
	case 0:
		writeError(w, http.StatusNotFound, "no results for commit "+sha)
	case 1:
		writeJSON(w, http.StatusOK, r.withPull(req.Context(), cs[0]))
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
	r.whoBrokeIt(req.Context(), &rec)
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
	r.serveArtifact(w, req, rec, a, req.PathValue("path"))
}

// serveArtifact writes the file p of a job's attempt.
func (r *Reporter) serveArtifact(w http.ResponseWriter, req *http.Request, rec Record, a *Attempt, p string) {
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
