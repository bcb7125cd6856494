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
		"ago":        ago,
		"since":      since,
		"statusMark": statusMark,
		"dur":        dur,
		"ms":         func(ms int64) string { return dur(time.Duration(ms) * time.Millisecond) },
		"stamp":      stamp,
		"bytes":      humanBytes,
		"classes":    func() []events.Class { return events.Classes },
		"flaky":      isFlaky,
		"testsURL":   testsURL,
		"failing":    events.Failing,
		"add1":       func(i int) int { return i + 1 },
	}
	maps.Copy(funcs, factFuncs)
	out := map[string]*template.Template{}
	for k, f := range pageFuncs {
		funcs[k] = f
	}
	for _, name := range []string{"overview", "branch", "commit", "job", "runners", "queue", "login", "modules", "tests",
		"error", "dashboard", "module", "search", "chips"} {
		t := template.Must(template.New(name).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+name+".html"))
		out[name] = t
	}
	return out
}()

// page is what every page template gets.
type page struct {
	Title, Path string
	// Status is what the page's subject needs most attention for (the
	// worst of its jobs): the tab title's mark and the favicon's colour.
	Status          events.Status
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
	w.Header().Set("X-Jetci-Status", string(p.Status)) // the live script updates the tab title from it
	w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline' 'self'; style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(buf.Bytes())
}

func (r *Reporter) pageOverview(w http.ResponseWriter, req *http.Request) {
	repos := r.view.Repos("")
	p := r.newPage(req, "Overview", "page", repos)
	cells := map[string]Record{}
	for _, s := range repos {
		for _, b := range s.Branches {
			cells[s.Repo+"\x00"+b.Branch] = Record{Status: b.Status}
		}
	}
	p.Status = worst(cells)
	r.render(w, req, "overview", p)
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
	p := r.newPage(req, repo+" "+events.Short(c.Commit), "page", r.commitPage(req.Context(), c))
	p.Status = c.Status
	r.render(w, req, "commit", p)
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
	p.Status = rec.Status
	r.render(w, req, "job", p)
}

// pageLogLimit bounds the log a job page embeds.
const pageLogLimit = 1 << 20

// runnerRow is a runner on the runners page, with the records of the jobs
// it holds (nil where the read model has none yet).
type runnerRow struct {
	events.Lease
	Current []runnerJob
}

type runnerJob struct {
	events.LeasedJob
	Record *Record
}

func (r *Reporter) pageRunners(w http.ResponseWriter, req *http.Request) {
	var rows []runnerRow
	for _, l := range r.view.Runners() {
		row := runnerRow{Lease: l}
		for _, j := range l.Jobs {
			rj := runnerJob{LeasedJob: j}
			if rec, ok := r.view.Job(j.JobID); ok {
				rec = rec.Listed()
				rj.Record = &rec
			}
			row.Current = append(row.Current, rj)
		}
		rows = append(rows, row)
	}
	r.render(w, req, "runners", r.newPage(req, "Runners", "runners", rows))
}

func (r *Reporter) pageQueue(w http.ResponseWriter, req *http.Request) {
	r.render(w, req, "queue", r.newPage(req, "Queue", "page", r.view.Queue(time.Now())))
}

// errorPage answers with a page in the site's layout that says what went
// wrong and where to go on.
func (r *Reporter) errorPage(w http.ResponseWriter, req *http.Request, code int, msg string) {
	p := r.newPage(req, fmt.Sprintf("%d %s", code, http.StatusText(code)), "", errorData{Code: code, Text: http.StatusText(code), Msg: msg})
	var buf bytes.Buffer
	if err := pages["error"].ExecuteTemplate(&buf, "layout", p); err != nil {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(code)
		fmt.Fprintf(w, "<!doctype html><meta charset=utf-8><title>%d · jetci</title><p>%s</p><p><a href=\"/\">Overview</a></p>\n",
			code, template.HTMLEscapeString(msg))
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline' 'self'; style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}

type errorData struct {
	Code      int
	Text, Msg string
}

func branchURL(repo, branch string) string {
	return "/branch?" + url.Values{"repo": {repo}, "branch": {branch}}.Encode()
}

func commitURL(repo, branch, commit string) string {
	return "/commit?" + url.Values{"repo": {repo}, "branch": {branch}, "commit": {commit}}.Encode()
}

// ago is a relative time, "3m10s ago", as a <time> element the page's
// script keeps current; its title is the absolute time.
func ago(t time.Time) template.HTML {
	if t.IsZero() {
		return "–"
	}
	return timeElem(t, "ago", dur(time.Since(t))+" ago", t.UTC().Format(stampLayout))
}

// since is the time gone since t ("12s"), kept current like ago.
func since(t time.Time) template.HTML {
	if t.IsZero() {
		return "–"
	}
	return timeElem(t, "since", dur(time.Since(t)), "since "+t.UTC().Format(stampLayout))
}

// stamp is an absolute time with its zone (UTC from the server); the page's
// script shows it in the viewer's zone.
func stamp(t time.Time) template.HTML {
	if t.IsZero() {
		return "–"
	}
	return timeElem(t, "", t.UTC().Format(stampLayout), t.UTC().Format(time.RFC3339))
}

const stampLayout = "2006-01-02 15:04:05 MST"

func timeElem(t time.Time, rel, text, title string) template.HTML {
	attr := ""
	if rel != "" {
		attr = ` data-rel="` + rel + `"`
	}
	return template.HTML(`<time datetime="` + t.UTC().Format(time.RFC3339) + `"` + attr + ` title="` +
		template.HTMLEscapeString(title) + `">` + template.HTMLEscapeString(text) + `</time>`)
}

// statusMark is the tab title's sign of a status.
func statusMark(s events.Status) string {
	switch s {
	case events.StatusFailed, events.StatusError:
		return "✗"
	case events.StatusRunning:
		return "●"
	case events.StatusQueued, events.StatusHeld, StatusNoRunner:
		return "○"
	case events.StatusPassed:
		return "✓"
	case events.StatusCancelled:
		return "–"
	}
	return ""
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
