package reporter

import (
	"bytes"
	"context"
	"embed"
	"fmt"
	"html/template"
	"maps"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/jetci/jetci/events"
)

//go:embed templates/*.html
var templateFS embed.FS

// pages holds one template set per page, each the layout plus the page.
var pages = func() map[string]*template.Template {
	funcs := template.FuncMap{
		"short":     events.Short,
		"trim":      trimSubject,
		"branchURL": branchURL,
		"commitURL": commitURL,
		"cell":      func(b BranchSummary, c Column) *Record { r, ok := b.Cell(c); return map[bool]*Record{true: &r}[ok] },
		"modcell":   func(m ModuleRow, c ModuleColumn) *Record { r, ok := m.Cell(c); return map[bool]*Record{true: &r}[ok] },
		"modulesURL": func(repo, branch string) string {
			return "/modules?" + url.Values{"repo": {repo}, "branch": {branch}}.Encode()
		},
		"ago":      ago,
		"since":    func(t time.Time) string { return dur(time.Since(t)) },
		"dur":      dur,
		"ms":       func(ms int64) string { return dur(time.Duration(ms) * time.Millisecond) },
		"stamp":    stamp,
		"bytes":    humanBytes,
		"classes":  func() []events.Class { return events.Classes },
		"flaky":    isFlaky,
		"testsURL": testsURL,
		"failing":  events.Failing,
		"add1":     func(i int) int { return i + 1 },
	}
	maps.Copy(funcs, factFuncs)
	out := map[string]*template.Template{}
	for _, name := range []string{"overview", "branch", "commit", "job", "runners", "queue", "login", "modules", "tests"} {
		t := template.Must(template.New(name).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+name+".html"))
		out[name] = t
	}
	return out
}()

// page is what every page template gets.
type page struct {
	Title, Path     string
	Live            string // "", "page", "job" or "runners": how the page follows changes
	Admin, CanLogin bool
	CSRF            string
	Flash           string
	FlashBad        bool
	Problem         string // Config.Health's error: a banner on every page
	JobID           string
	JobStatus       events.Status
	JobAttempt      uint64
	Data            any
}

// flashMessages are the notices ?msg= and ?err= may show, by code.
var flashMessages = map[string]string{
	"queued":         "Queued.",
	"recheck-job":    "Re-check queued.",
	"recheck-commit": "Re-check of the commit queued.",
	"recheck-branch": "Re-check of the branch queued.",
	"cancel":         "Cancel requested.",
	"wrong-token":    "Wrong token.",
	"throttled":      "Too many wrong tokens from here: wait a while before the next try.",
}

func (r *Reporter) newPage(req *http.Request, title, live string, data any) *page {
	p := &page{Title: title, Path: req.URL.RequestURI(), Live: live, Data: data,
		CanLogin: r.auth.enabled()}
	if sid := r.auth.session(req); sid != "" {
		p.Admin, p.CSRF = true, r.auth.csrf(sid)
	}
	if err := r.health(); err != nil {
		p.Problem = err.Error()
	}
	q := req.URL.Query()
	// Only known codes: a link cannot put its own words in the notice box.
	if m, ok := flashMessages[q.Get("msg")]; ok {
		p.Flash = m
	}
	if m, ok := flashMessages[q.Get("err")]; ok {
		p.Flash, p.FlashBad = m, true
	}
	return p
}

// render writes a page, or only its live region when the page's own script asks
// for it (?fragment=1).
func (r *Reporter) render(w http.ResponseWriter, req *http.Request, name string, p *page) {
	t := pages[name]
	which := "layout"
	if req.URL.Query().Get("fragment") == "1" {
		which = "content"
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, which, p); err != nil {
		r.log.Error().Err(err).Str("page", name).Msg("render page")
		http.Error(w, "could not render the page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline' 'self'; style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(buf.Bytes())
}

func (r *Reporter) pageOverview(w http.ResponseWriter, req *http.Request) {
	r.render(w, req, "overview", r.newPage(req, "Overview", "page", r.view.Repos("")))
}

type branchPage struct {
	Repo, Branch string
	Commits      []Commit
	Gate         *events.BranchState
	Paused       []Commit // the branch's commits paused by the broken-build flow, newest first
	Bisections   []*events.Bisection
}

func (r *Reporter) pageBranch(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	repo, branch := q.Get("repo"), q.Get("branch")
	if repo == "" || branch == "" {
		r.errorPage(w, req, http.StatusBadRequest, "want ?repo=R&branch=B")
		return
	}
	limit := 100
	if n, err := strconv.Atoi(q.Get("limit")); err == nil && n > 0 {
		limit = n
	}
	data := branchPage{Repo: repo, Branch: branch, Commits: r.view.Commits(repo, branch, "", limit)}
	if st, ok := r.view.Gate(repo, branch); ok {
		data.Gate = &st
		data.Paused = pausedCommits(data.Commits)
	}
	data.Bisections = r.view.unfixed(req.Context(), r.branchBisections(req.Context(), repo, branch))
	r.render(w, req, "branch", r.newPage(req, repo+" "+branch, "page", data))
}

func (r *Reporter) pageCommit(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	repo, branch, commit := q.Get("repo"), q.Get("branch"), q.Get("commit")
	if repo == "" || branch == "" || commit == "" {
		r.errorPage(w, req, http.StatusBadRequest, "want ?repo=R&branch=B&commit=SHA")
		return
	}
	cs := r.view.Commits(repo, branch, commit, 0)
	if len(cs) != 1 {
		r.errorPage(w, req, http.StatusNotFound, fmt.Sprintf("no results for commit %s on %s %s", commit, repo, branch))
		return
	}
	c := cs[0]
	if bs, _ := r.Bisections(req.Context(), repo, branch); len(bs) > 0 {
		for i := range c.Jobs {
			c.Jobs[i].FailingSince = withBisection(c.Jobs[i].FailingSince, &c.Jobs[i], bs)
		}
	}
	r.render(w, req, "commit", r.newPage(req, repo+" "+events.Short(c.Commit), "page", r.commitPage(req.Context(), c)))
}

type jobPage struct {
	Record    Record
	Shown     uint64   // the attempt whose log and artifacts are shown
	Attempt   *Attempt // the shown attempt, nil before any
	Artifacts []events.Artifact
	Log       string
	LogNote   string
	Live      bool   // the log streams
	FirstLine int    // the number of the log's first line shown (1 unless cut)
	LogSeq    uint64 // the last live-log message already in Log
}

func (r *Reporter) pageJob(w http.ResponseWriter, req *http.Request) {
	rec, ok := r.view.Job(req.PathValue("id"))
	if !ok {
		r.errorPage(w, req, http.StatusNotFound, "no job "+req.PathValue("id"))
		return
	}
	r.withAllTests(req.Context(), &rec)
	if st, ok := r.view.Gate(rec.Repo, rec.Branch); ok {
		rec.Label = gateLabel(&rec, &st)
	}
	r.whoBrokeIt(req.Context(), &rec)
	{
		recs := []Record{rec}
		r.view.explain(recs) // why it waits or is held; no runner
		rec = recs[0]
	}
	data := jobPage{Record: rec, Shown: rec.Attempt}
	if n, err := strconv.ParseUint(req.URL.Query().Get("attempt"), 10, 64); err == nil && rec.Find(n) != nil {
		data.Shown = n
	}
	a := rec.Find(data.Shown)
	data.Attempt = a
	switch {
	case a == nil:
		data.LogNote = "No attempt has started yet."
	case a.Status == events.StatusRunning && a.QueueSeq == rec.QueueSeq && a.Delivery == rec.Delivery:
		text, seq, err := r.liveLog(req.Context(), rec.JobID, a.QueueSeq, a.Delivery)
		if err != nil {
			data.LogNote = "Live output is not available: " + err.Error()
		}
		data.Log, data.LogSeq, data.Live = text, seq, true
	case a.Log != "":
		data.Artifacts = a.Artifacts
		text, first, cut, err := r.logLines(req.Context(), a.Log, a.LogDigest, rec.JobID, pageLogLimit)
		data.FirstLine = first
		switch {
		case err != nil:
			data.LogNote = "The log could not be read: " + err.Error()
		case cut:
			data.LogNote = fmt.Sprintf("Showing the last %s; the raw log has all of it.", humanBytes(pageLogLimit))
		}
		if a.LogTruncated {
			data.LogNote += " The runner cut this log at its size limit."
		}
		data.Log = text
	default:
		data.Artifacts = a.Artifacts
		data.LogNote = "This attempt has no stored log."
	}
	p := r.newPage(req, rec.Name()+" "+rec.Arch+" "+events.Short(rec.Commit), "job", data)
	p.JobID, p.JobStatus, p.JobAttempt = rec.JobID, rec.Status, rec.Attempt
	r.render(w, req, "job", p)
}

// pageLogLimit bounds the log a job page embeds.
const pageLogLimit = 1 << 20

func (r *Reporter) pageRunners(w http.ResponseWriter, req *http.Request) {
	r.render(w, req, "runners", r.newPage(req, "Runners", "runners", r.view.Runners()))
}

func (r *Reporter) pageQueue(w http.ResponseWriter, req *http.Request) {
	r.render(w, req, "queue", r.newPage(req, "Queue", "page", r.view.Queue(time.Now())))
}

func (r *Reporter) errorPage(w http.ResponseWriter, req *http.Request, code int, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	fmt.Fprintf(w, "<!doctype html><meta charset=utf-8><meta name=viewport content=\"width=device-width, initial-scale=1\"><title>%d · jetci</title><p>%s</p><p><a href=\"/\">Overview</a></p>\n",
		code, template.HTMLEscapeString(msg))
}

func branchURL(repo, branch string) string {
	return "/branch?" + url.Values{"repo": {repo}, "branch": {branch}}.Encode()
}

func commitURL(repo, branch, commit string) string {
	return "/commit?" + url.Values{"repo": {repo}, "branch": {branch}, "commit": {commit}}.Encode()
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "–"
	}
	return dur(time.Since(t)) + " ago"
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "–"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

// dur is a short human duration: 850ms, 12s, 3m10s, 2h5m, 3d.
func dur(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Second:
		return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
	case d < 10*time.Second:
		return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s"
	case d < time.Minute:
		return strconv.Itoa(int(d.Seconds())) + "s"
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return strconv.Itoa(int(d.Hours()/24)) + "d"
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// health is Config.Health's verdict, or else what the reporter's own watch
// of JetStream sees (parts.WatchJetStream: a standalone nats-server whose
// disk is full), nil when there is nothing wrong.
func (r *Reporter) health() error {
	if r.cfg.Health != nil {
		if err := r.cfg.Health(); err != nil {
			return err
		}
	}
	if p := r.jsProblem.Load(); p != nil {
		return *p
	}
	return nil
}

// whoBrokeIt sets a failing record's FailingSince, with the culprit search
// that ran on its break, if one did.
func (r *Reporter) whoBrokeIt(ctx context.Context, rec *Record) {
	fs, err := r.view.failingSince(ctx, rec)
	if err != nil {
		r.log.Warn().Err(err).Str("job", rec.JobID).Msg("read model: failing since")
	}
	if fs != nil {
		bs, _ := r.Bisections(ctx, rec.Repo, rec.Branch)
		fs = withBisection(fs, rec, bs)
	}
	rec.FailingSince = fs
}
