package reporter

import (
	"context"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter/readmodel"
)

// This file holds the pages that sum things up at the seed's scale (the
// dashboard, the branch page's commit summaries, a module's history, the
// search) and what other CI systems' users expect (badges, the favicon).

// pageFuncs are the template functions of this file's pages.
var pageFuncs = template.FuncMap{
	"num":        num,
	"sub":        func(a, b int) int { return a - b },
	"add":        func(a, b int) int { return a + b },
	"summary":    summary,
	"moduleURL":  moduleURL,
	"badgeURL":   badgeURL,
	"searchURL":  func(q string) string { return "/search?" + url.Values{"q": {q}}.Encode() },
	"failingURL": func(repo, branch string) string { return modulesFilterURL(repo, branch, true, "") },
	"pct": func(n, total int) string {
		return strconv.FormatFloat(100*float64(n)/float64(max(total, 1)), 'f', 2, 64)
	},
	"shown": shown,
	"trend": trendSVG,
	"olderURL": func(repo, branch, cursor string) string {
		return "/branch?" + url.Values{"repo": {repo}, "branch": {branch}, "after": {cursor}}.Encode()
	},
	"chipsURL": func(repo, branch, commit string) string {
		return "/branch/jobs?" + url.Values{"repo": {repo}, "branch": {branch}, "commit": {commit}}.Encode()
	},
	"modulesFilterURL":   modulesFilterURL,
	"modulesPageURL":     modulesPageURL,
	"gridCells":          gridCells,
	"moduleBranchChecks": func() int { return moduleBranchChecks },
	"query": func(repo, module, branch, arch, k, v string) string {
		q := url.Values{"repo": {repo}, "module": {module}}
		if k != "" {
			q.Set(k, v)
		}
		if branch != "" {
			q.Set("branch", branch)
		}
		if arch != "" {
			q.Set("arch", arch)
		}
		return "/module?" + q.Encode()
	},
}

// summary says a commit's counts in one line, what needs attention first:
// "3 failed · 1,497 passed".
func summary(c Counts) template.HTML {
	var parts []string
	add := func(n int, what string, bold bool) {
		if n == 0 {
			return
		}
		s := template.HTMLEscapeString(num(n) + " " + what)
		if bold {
			s = `<b class="fail-count">` + s + `</b>`
		}
		parts = append(parts, s)
	}
	add(c.Failing, "failed", true)
	add(c.NoRunner, "no runner", false)
	add(c.Running, "running", false)
	add(c.Waiting, "waiting", false)
	add(c.Cancelled, "cancelled", false)
	add(c.Passing, "passed", false)
	if len(parts) == 0 {
		return "no jobs"
	}
	return template.HTML(strings.Join(parts, " · "))
}

// num writes a count with thousands separators: 1,497.
func num(n int) string {
	s := strconv.Itoa(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func moduleURL(repo, module string) string {
	return "/module?" + url.Values{"repo": {repo}, "module": {module}}.Encode()
}

func modulesFilterURL(repo, branch string, failing bool, q string) string {
	v := url.Values{"repo": {repo}}
	if branch != "" {
		v.Set("branch", branch)
	}
	if failing {
		v.Set("failing", "1")
	}
	if q != "" {
		v.Set("q", q)
	}
	return "/modules?" + v.Encode()
}

// badgeURL is the status badge of a branch, or of one job × arch of it.
func badgeURL(repo, branch, job, arch string) string {
	u := "/badge/" + url.PathEscape(repo) + "/" + escapeBranch(branch) + ".svg"
	v := url.Values{}
	if job != "" {
		v.Set("job", job)
	}
	if arch != "" {
		v.Set("arch", arch)
	}
	if len(v) > 0 {
		u += "?" + v.Encode()
	}
	return u
}

// escapeBranch escapes a branch for a path, keeping its slashes.
func escapeBranch(b string) string {
	parts := strings.Split(b, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return strings.Join(parts, "/")
}

// Counts sums up cells by the state a reader acts on.
type Counts struct {
	Total     int `json:"total"`
	Passing   int `json:"passing"`
	Failing   int `json:"failing"` // failed or error
	Running   int `json:"running"`
	Waiting   int `json:"waiting"` // queued with a runner to take it, or paused
	NoRunner  int `json:"no_runner"`
	Cancelled int `json:"cancelled"`
}

func (c *Counts) add(r Record) {
	c.Total++
	switch shown(r) {
	case events.StatusPassed:
		c.Passing++
	case events.StatusFailed, events.StatusError:
		c.Failing++
	case events.StatusRunning:
		c.Running++
	case events.StatusQueued, events.StatusHeld:
		c.Waiting++
	case StatusNoRunner:
		c.NoRunner++
	case events.StatusCancelled:
		c.Cancelled++
	}
}

// Status is the state of the counts that needs attention most.
func (c Counts) Status() events.Status {
	switch {
	case c.Failing > 0:
		return events.StatusFailed
	case c.NoRunner > 0:
		return StatusNoRunner
	case c.Running > 0:
		return events.StatusRunning
	case c.Waiting > 0:
		return events.StatusQueued
	case c.Passing > 0:
		return events.StatusPassed
	case c.Cancelled > 0:
		return events.StatusCancelled
	}
	return ""
}

// Dashboard is the manager's page: every branch of every repository in one
// line of counts of its latest cells, then what fails, grouped by the
// commit each failing cell was checked at.
type Dashboard struct {
	Branches []DashBranch `json:"branches"`
	Total    Counts       `json:"total"`
}

// DashBranch is one branch on the dashboard.
type DashBranch struct {
	Repo    string              `json:"repo"`
	Branch  string              `json:"branch"`
	Head    string              `json:"head"`
	Subject string              `json:"subject,omitempty"`
	Time    time.Time           `json:"time,omitzero"`
	Gate    *events.BranchState `json:"gate,omitempty"`
	Counts  Counts              `json:"counts"`
	// Failing groups the failing cells by the commit they failed at,
	// newest first: at most dashGroups; MoreGroups counts the rest.
	Failing    []FailGroup `json:"failing,omitempty"`
	MoreGroups int         `json:"more_groups,omitempty"`
}

// FailGroup is the failing cells of a branch checked at one commit.
type FailGroup struct {
	Commit  string        `json:"commit"`
	Subject string        `json:"subject,omitempty"`
	Author  events.Person `json:"author,omitzero"`
	Time    time.Time     `json:"time,omitzero"` // when the commit was first queued
	// Since is where the failure began when the read model knows it
	// (FailingSince); nil: Commit is the newest failing check known.
	Since *FailStart `json:"since,omitempty"`
	N     int        `json:"n"`
	// Cells names the first dashCells failing cells (module/job · arch).
	Cells []Record `json:"cells"`
}

// FailStart is the commit a run of failures of a cell began at.
type FailStart struct {
	Commit  string        `json:"commit"`
	Author  events.Person `json:"author,omitzero"`
	Time    time.Time     `json:"time,omitzero"`
	Commits int           `json:"commits_ago"` // how many commits ago on the branch
}

// failStart finds where the failure of a failing cell began (the first
// failing commit of its run of failures, its author, how many commits ago:
// View.failingSince); the dashboard then says "failing since". nil when it
// is not known: the dashboard names the commit the cell last failed at.
func failStart(ctx context.Context, v *View, r Record) *FailStart {
	fs, err := v.failingSince(ctx, &r)
	if err != nil || fs == nil {
		return nil
	}
	return &FailStart{Commit: fs.Commit, Author: fs.Author, Time: fs.At, Commits: fs.CommitsAgo}
}

const (
	dashGroups = 2
	dashCells  = 3
)

// Dashboard sums up every branch (of one repo when repo is set).
func (v *View) Dashboard(ctx context.Context, repo string) (*Dashboard, error) {
	brs, per, err := v.cells.latest(ctx, v.db, repo, "")
	if err != nil {
		return nil, err
	}
	d := &Dashboard{}
	for i, br := range brs {
		recs := per[i]
		v.explain(recs)
		b := DashBranch{Repo: br.Repo, Branch: br.Branch}
		if h, err := v.db.Head(ctx, br.Repo, br.Branch); err == nil {
			b.Head, b.Subject = h.Commit, h.Subject
			if h.FirstSeen != 0 {
				b.Time = time.Unix(0, h.FirstSeen)
			}
		}
		if st, ok := v.Gate(br.Repo, br.Branch); ok {
			b.Gate = &st
		}
		groups := map[string]*FailGroup{}
		for _, r := range recs {
			b.Counts.add(r)
			d.Total.add(r)
			if !failing(r.Status) {
				continue
			}
			g := groups[r.Commit]
			if g == nil {
				g = &FailGroup{Commit: r.Commit, Subject: r.Subject, Author: r.Author, Time: firstSeen(&r)}
				groups[r.Commit] = g
			}
			g.N++
			g.Cells = append(g.Cells, r)
		}
		for _, g := range groups {
			sort.Slice(g.Cells, func(i, j int) bool {
				a, b := g.Cells[i], g.Cells[j]
				return a.Name() < b.Name() || a.Name() == b.Name() && a.Arch < b.Arch
			})
			g.Since = failStart(ctx, v, g.Cells[0])
			g.Cells = g.Cells[:min(len(g.Cells), dashCells)]
			b.Failing = append(b.Failing, *g)
		}
		sort.Slice(b.Failing, func(i, j int) bool {
			if !b.Failing[i].Time.Equal(b.Failing[j].Time) {
				return b.Failing[i].Time.After(b.Failing[j].Time)
			}
			return b.Failing[i].Commit < b.Failing[j].Commit
		})
		if len(b.Failing) > dashGroups {
			b.MoreGroups = len(b.Failing) - dashGroups
			b.Failing = b.Failing[:dashGroups]
		}
		d.Branches = append(d.Branches, b)
	}
	sort.Slice(d.Branches, func(i, j int) bool {
		a, b := d.Branches[i], d.Branches[j]
		if a.Repo != b.Repo {
			return a.Repo < b.Repo
		}
		return branchLess(a.Branch, b.Branch)
	})
	return d, nil
}

func (r *Reporter) pageDashboard(w http.ResponseWriter, req *http.Request) {
	d, err := r.view.Dashboard(req.Context(), req.URL.Query().Get("repo"))
	if err != nil {
		r.errorPage(w, req, http.StatusServiceUnavailable, "the read model does not answer: "+err.Error())
		return
	}
	p := r.newPage(req, "Dashboard", "page", d)
	p.Status = d.Total.Status()
	r.render(w, req, "dashboard", p)
}

func (r *Reporter) apiDashboard(w http.ResponseWriter, req *http.Request) {
	d, err := r.view.Dashboard(req.Context(), req.URL.Query().Get("repo"))
	if err != nil {
		r.dbError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

// BranchCommit is one commit on the branch page: how many of its jobs have
// each status, the jobs a reader must see first (failing, then running and
// waiting), and how long it took.
type BranchCommit struct {
	Commit
	Counts   Counts
	Took     time.Duration // from the first job queued to the last one finished; 0: not finished
	Attn     []Record      // failing first, then the others not passed; at most branchAttention
	MoreAttn int
}

// JobTrend is one job × arch's durations over the commits of a page,
// oldest first (0: no run of it at that commit).
type JobTrend struct {
	Job, Arch string
	Ms        []int64
	Last      int64
	Min, Max  int64
}

type branchPage struct {
	Repo, Branch string
	Commits      []BranchCommit
	Older        string // the cursor of the next, older page
	Newer        bool   // an older page: a link back to the newest
	Trends       []JobTrend
	Gate         *events.BranchState
	Paused       []Commit // the branch's commits paused by the broken-build flow, newest first
	Bisections   []*events.Bisection
	Pull         *Pull // the pull/merge request the branch is the head of
}

// BranchCommitsPage is the commits a branch page shows.
const BranchCommitsPage = 20

// branchAttention bounds the jobs of one commit the branch page lists; the
// rest are counted, and shown on demand.
const branchAttention = 12

// BranchCommits returns one page of a branch's commits, newest first, each
// summed up (BranchCommit), and the duration trend of its jobs that are not
// a module's (a module's is on its own page).
func (v *View) BranchCommits(ctx context.Context, repo, branch string, p readmodel.Page) ([]BranchCommit, []JobTrend, readmodel.Paged, error) {
	rows, pg, err := v.db.Commits(ctx, repo, branch, "", p)
	if err != nil || len(rows) == 0 {
		return nil, nil, pg, err
	}
	shas := make([]string, len(rows))
	for i, c := range rows {
		shas[i] = c.Commit
	}
	counts, err := v.db.CommitCounts(ctx, repo, branch, shas)
	if err != nil {
		return nil, nil, pg, err
	}
	out := make([]BranchCommit, len(rows))
	idx := map[string]int{}
	first, last := map[string]int64{}, map[string]int64{}
	done := map[string]bool{}
	for i, c := range rows {
		idx[c.Commit] = i
		out[i].Commit = Commit{Repo: c.Repo, Branch: c.Branch, Commit: c.Commit, Subject: c.Subject, Author: events.Person{Name: c.Author}}
		if c.FirstSeen != 0 {
			out[i].Time = time.Unix(0, c.FirstSeen)
		}
		done[c.Commit] = true
	}
	for _, sc := range counts {
		bc := &out[idx[sc.Commit]]
		bc.Counts.Total += sc.N
		switch events.Status(sc.Status) {
		case events.StatusPassed:
			bc.Counts.Passing += sc.N
		case events.StatusFailed, events.StatusError:
			bc.Counts.Failing += sc.N
		case events.StatusRunning:
			bc.Counts.Running += sc.N
			done[sc.Commit] = false
		case events.StatusQueued, events.StatusHeld:
			bc.Counts.Waiting += sc.N
			done[sc.Commit] = false
		case events.StatusCancelled:
			bc.Counts.Cancelled += sc.N
		}
		if f, ok := first[sc.Commit]; !ok || sc.FirstSeen < f {
			first[sc.Commit] = sc.FirstSeen
		}
		last[sc.Commit] = max(last[sc.Commit], sc.Last)
	}
	attention := []string{string(events.StatusFailed), string(events.StatusError), string(events.StatusRunning),
		string(events.StatusQueued), string(events.StatusHeld), string(events.StatusCancelled)}
	// The trend of the jobs of no module: their records are few.
	plainRows, err := v.db.CommitJobsOf(ctx, repo, branch, shas, nil, true, 200*len(shas))
	if err != nil {
		return nil, nil, pg, err
	}
	plain := map[string][]readmodel.Row{}
	for _, row := range plainRows {
		plain[row.Commit] = append(plain[row.Commit], row)
	}
	// The jobs each commit lists (those not passed, at most
	// branchAttention), in one query for the page.
	var withAttn []string
	for _, bc := range out {
		if bc.Counts.Total > bc.Counts.Passing {
			withAttn = append(withAttn, bc.Commit.Commit)
		}
	}
	attnRows, err := v.db.CommitsJobsOf(ctx, repo, branch, withAttn, attention, branchAttention)
	if err != nil {
		return nil, nil, pg, err
	}
	attn := map[string][]readmodel.Row{}
	for _, row := range attnRows {
		attn[row.Commit] = append(attn[row.Commit], row)
	}
	type tk struct{ job, arch string }
	trends := map[tk]*JobTrend{}
	for i := range out {
		bc := &out[i]
		if done[bc.Commit.Commit] && last[bc.Commit.Commit] > first[bc.Commit.Commit] && first[bc.Commit.Commit] > 0 {
			bc.Took = time.Duration(last[bc.Commit.Commit] - first[bc.Commit.Commit])
		}
		n := bc.Counts.Total - bc.Counts.Passing
		if n > 0 {
			jobs := attn[bc.Commit.Commit]
			for _, row := range jobs[:min(len(jobs), branchAttention)] {
				rec, err := v.recordOf(row)
				if err != nil {
					return nil, nil, pg, err
				}
				bc.Attn = append(bc.Attn, rec.Listed())
			}
			v.explain(bc.Attn)
			rank := func(r Record) int {
				switch shown(r) {
				case events.StatusFailed, events.StatusError:
					return 0
				case StatusNoRunner:
					return 1
				case events.StatusRunning:
					return 2
				}
				return 3
			}
			sort.SliceStable(bc.Attn, func(i, j int) bool { return rank(bc.Attn[i]) < rank(bc.Attn[j]) })
			bc.MoreAttn = n - len(bc.Attn)
			for _, r := range bc.Attn {
				if shown(r) == StatusNoRunner {
					bc.Counts.Waiting--
					bc.Counts.NoRunner++
				}
			}
		}
		if len(bc.Attn) > 0 && bc.Attn[0].Author.Name == bc.Author.Name {
			bc.Author = bc.Attn[0].Author // with the mail
		}
		for _, row := range plain[bc.Commit.Commit] {
			rec, err := v.recordOf(row)
			if err != nil {
				return nil, nil, pg, err
			}
			if bc.Author.Name == "" {
				bc.Author = rec.Author
			}
			if rec.DurationMs <= 0 || !rec.Status.Final() {
				continue
			}
			t := trends[tk{rec.Job, rec.Arch}]
			if t == nil {
				t = &JobTrend{Job: rec.Job, Arch: rec.Arch, Ms: make([]int64, len(out))}
				trends[tk{rec.Job, rec.Arch}] = t
			}
			t.Ms[len(out)-1-i] = rec.DurationMs // oldest first
		}
		bc.Status = bc.Counts.Status()
	}
	var ts []JobTrend
	for _, t := range trends {
		for _, ms := range t.Ms {
			if ms == 0 {
				continue
			}
			t.Last = ms
			if t.Min == 0 || ms < t.Min {
				t.Min = ms
			}
			t.Max = max(t.Max, ms)
		}
		ts = append(ts, *t)
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].Job < ts[j].Job || ts[i].Job == ts[j].Job && ts[i].Arch < ts[j].Arch })
	return out, ts, pg, nil
}

// trendSVG draws durations (oldest first; 0: none) as a small line.
func trendSVG(ms []int64) template.HTML {
	const w, h = 120, 24
	var lo, hi int64
	n := 0
	for _, m := range ms {
		if m > 0 {
			hi = max(hi, m)
			if lo == 0 || m < lo {
				lo = m
			}
			n++
		}
	}
	if n == 0 {
		return ""
	}
	var pts []string
	for i, m := range ms {
		if m == 0 {
			continue
		}
		x := float64(w-4)/float64(max(len(ms)-1, 1))*float64(i) + 2
		y := float64(h) / 2 // all the same: a flat line in the middle
		if hi > lo {
			y = float64(h-2) - float64(h-4)*float64(m-lo)/float64(hi-lo)
		}
		pts = append(pts, fmt.Sprintf("%.1f,%.1f", x, y))
	}
	if len(pts) == 1 {
		pts = append(pts, pts[0])
	}
	return template.HTML(fmt.Sprintf(`<svg class="trend" width="%d" height="%d" viewBox="0 0 %d %d" role="img" aria-label="duration trend"><polyline points="%s"/></svg>`,
		w, h, w, h, strings.Join(pts, " ")))
}

func (r *Reporter) pageBranch(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	repo, branch := q.Get("repo"), q.Get("branch")
	if repo == "" || branch == "" {
		r.errorPage(w, req, http.StatusBadRequest, "want ?repo=R&branch=B")
		return
	}
	p, err := pageOf(req, BranchCommitsPage)
	if err != nil {
		r.errorPage(w, req, http.StatusBadRequest, err.Error())
		return
	}
	p.Limit = min(p.Limit, 50)
	cs, trends, pg, err := r.view.BranchCommits(req.Context(), repo, branch, p)
	if err != nil {
		r.errorPage(w, req, http.StatusServiceUnavailable, "the read model does not answer: "+err.Error())
		return
	}
	data := branchPage{Repo: repo, Branch: branch, Commits: cs, Trends: trends, Older: pg.Next.String(),
		Newer: p.After != (readmodel.Cursor{}) || p.Before != (readmodel.Cursor{})}
	if st, ok := r.view.Gate(repo, branch); ok {
		data.Gate = &st
		data.Paused = pausedCommits(r.view.Commits(repo, branch, "", 20))
	}
	data.Bisections = r.view.unfixed(req.Context(), r.branchBisections(req.Context(), repo, branch))
	title := repo + " " + branch
	if data.Pull = r.view.PullOf(repo, branch); data.Pull != nil {
		title = repo + " " + data.Pull.Label
	}
	page := r.newPage(req, title, "page", data)
	if len(cs) > 0 && !data.Newer {
		page.Status = cs[0].Status
	}
	r.render(w, req, "branch", page)
}

// pageBranchJobs is every job of one commit as chips: what the branch page's
// "all jobs" fetches when opened.
func (r *Reporter) pageBranchJobs(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	repo, branch, commit := q.Get("repo"), q.Get("branch"), q.Get("commit")
	if repo == "" || branch == "" || commit == "" {
		r.errorPage(w, req, http.StatusBadRequest, "want ?repo=R&branch=B&commit=SHA")
		return
	}
	cs := r.view.Commits(repo, branch, commit, 2)
	if len(cs) != 1 {
		r.errorPage(w, req, http.StatusNotFound, fmt.Sprintf("no results for commit %s on %s %s", commit, repo, branch))
		return
	}
	r.render(w, req, "chips", r.newPage(req, repo+" "+events.Short(cs[0].Commit), "", cs[0]))
}

// ModulePage is one module's history: its jobs' records on every branch and
// arch, newest first, a page at a time.
type ModulePage struct {
	Repo, Module string
	Branch, Arch string
	// Branches, without Branch: the branches the module has checks on,
	// each shown with its newest moduleBranchChecks checks.
	Branches     []string
	Records      []Record
	Older, Newer string // cursors
	Trends       []JobTrend
}

// moduleBranchChecks is the checks of each branch a module's page shows
// when it shows every branch.
const moduleBranchChecks = 15

func (r *Reporter) pageModule(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	repo, module := q.Get("repo"), q.Get("module")
	if repo == "" || module == "" {
		r.errorPage(w, req, http.StatusBadRequest, "want ?repo=R&module=M (and optionally &branch=B, &arch=A)")
		return
	}
	p, err := pageOf(req, 50)
	if err != nil {
		r.errorPage(w, req, http.StatusBadRequest, err.Error())
		return
	}
	p.Limit = min(p.Limit, 200)
	// Newest first: read the list backwards from the end (or from ?after=,
	// the cursor of the oldest record shown, for the page before it).
	mp := ModulePage{Repo: repo, Module: module, Branch: q.Get("branch"), Arch: q.Get("arch")}
	page := readmodel.Page{Limit: p.Limit, Before: readmodel.End}
	if p.After != (readmodel.Cursor{}) {
		page.Before = p.After
	}
	if p.Before != (readmodel.Cursor{}) && p.Before != readmodel.End {
		page = readmodel.Page{Limit: p.Limit, After: p.Before}
	}
	var recs []Record
	var pg readmodel.Paged
	if mp.Branch == "" {
		// Every branch: the newest checks of each, a query per branch (the
		// read model indexes records by branch); a branch's link pages on.
		brs, per, err := r.view.cells.latest(req.Context(), r.view.db, repo, "")
		if err == nil {
			for i, b := range brs {
				if !slices.ContainsFunc(per[i], func(c Record) bool { return c.Module == module }) {
					continue
				}
				mp.Branches = append(mp.Branches, b.Branch)
			}
			sort.Slice(mp.Branches, func(i, j int) bool { return branchLess(mp.Branches[i], mp.Branches[j]) })
			for _, b := range mp.Branches {
				f := Filter{Repo: repo, Module: module, Branch: b, Arch: mp.Arch, All: true}
				var some []Record
				some, _, err = r.view.Results(req.Context(), f, readmodel.Page{Limit: moduleBranchChecks, Before: readmodel.End}, 0)
				if err != nil {
					break
				}
				recs = append(recs, some...)
			}
		}
		if err != nil {
			r.errorPage(w, req, http.StatusServiceUnavailable, "the read model does not answer: "+err.Error())
			return
		}
		sort.SliceStable(recs, func(i, j int) bool { return firstSeen(&recs[i]).Before(firstSeen(&recs[j])) })
	} else {
		f := Filter{Repo: repo, Module: module, Branch: mp.Branch, Arch: mp.Arch, All: true}
		recs, pg, err = r.view.Results(req.Context(), f, page, 0)
		if err != nil {
			r.errorPage(w, req, http.StatusServiceUnavailable, "the read model does not answer: "+err.Error())
			return
		}
	}
	if mp.Branch == "" {
		// no paging: each branch's own page has it
	} else if page.Before != (readmodel.Cursor{}) {
		mp.Older, mp.Newer = pg.Prev.String(), ""
		if page.Before != readmodel.End {
			mp.Newer = pg.Next.String()
			if mp.Newer == "" {
				mp.Newer = "end"
			}
		}
	} else {
		mp.Newer, mp.Older = pg.Next.String(), pg.Prev.String()
		if mp.Newer == "" {
			mp.Newer = "end"
		}
	}
	slices.Reverse(recs) // newest first
	type tk struct{ job, branch, arch string }
	trends := map[tk]*JobTrend{}
	var order []tk
	for i := len(recs) - 1; i >= 0; i-- { // oldest first
		rec := recs[i]
		recs[i] = rec.Listed()
		if rec.DurationMs <= 0 || !rec.Status.Final() {
			continue
		}
		k := tk{rec.Job, rec.Branch, rec.Arch}
		t := trends[k]
		if t == nil {
			t = &JobTrend{Job: rec.Job + " · " + rec.Branch, Arch: rec.Arch}
			trends[k] = t
			order = append(order, k)
		}
		t.Ms = append(t.Ms, rec.DurationMs)
		t.Last = rec.DurationMs
		if t.Min == 0 || rec.DurationMs < t.Min {
			t.Min = rec.DurationMs
		}
		t.Max = max(t.Max, rec.DurationMs)
	}
	sort.Slice(order, func(i, j int) bool {
		a, b := order[i], order[j]
		if a.job != b.job {
			return a.job < b.job
		}
		if a.branch != b.branch {
			return branchLess(a.branch, b.branch)
		}
		return a.arch < b.arch
	})
	for _, k := range order {
		mp.Trends = append(mp.Trends, *trends[k])
	}
	mp.Records = recs
	pgv := r.newPage(req, repo+" module "+module, "page", mp)
	if len(recs) > 0 && p.After == (readmodel.Cursor{}) && p.Before == (readmodel.Cursor{}) {
		pgv.Status = shown(recs[0])
	}
	r.render(w, req, "module", pgv)
}

// SearchPage is what /search found: repositories, branches and modules by
// name; jobs of a module or branch of that exact name, of commits by sha
// prefix, or by text in their subjects and authors (the q= filter of
// /api/v1/results); tests by a substring of their names.
type SearchPage struct {
	Q        string
	Repos    []string
	Branches []readmodel.BranchRow
	Modules  []SearchModule
	Results  []Record
	More     string // the /api/v1/results query that continues the results
	// Tests are the tests whose name holds the text (at least
	// readmodel.MinTestSearch characters), one entry a test of a job, with
	// the branches and archs that report it; MoreTests: the search found
	// searchTestRows names and may have left some out.
	Tests     []SearchTest
	MoreTests bool
	ShortQ    bool // too short to search test names
	Err       string
}

// SearchTest is a test of a job (a module's: "module/job") found by name,
// and where it is reported: each branch and arch with that cell's latest
// job.
type SearchTest struct {
	Repo, Job, Name string
	Places          []readmodel.TestName
}

// searchTestRows bounds the (test, branch, arch) rows a search reads.
const searchTestRows = 300

// SearchModule is a module whose name matched.
type SearchModule struct{ Repo, Module string }

func (r *Reporter) pageSearch(w http.ResponseWriter, req *http.Request) {
	q := strings.TrimSpace(req.URL.Query().Get("q"))
	sp := SearchPage{Q: q}
	if len(q) > 200 {
		sp.Err, q = "Search for at most 200 bytes.", ""
	}
	if q != "" {
		r.search(req.Context(), q, &sp)
	}
	title := "Search"
	if q != "" {
		title += " " + q
	}
	r.render(w, req, "search", r.newPage(req, title, "", sp))
}

const searchMax = 50

func (r *Reporter) search(ctx context.Context, q string, sp *SearchPage) {
	lq := strings.ToLower(q)
	brs, per, err := r.view.cells.latest(ctx, r.view.db, "", "")
	if err != nil {
		sp.Err = "the read model does not answer: " + err.Error()
		return
	}
	repos := map[string]bool{}
	mods := map[SearchModule]bool{}
	isModule, isBranch := false, false
	for i, b := range brs {
		isBranch = isBranch || b.Branch == q
		if strings.Contains(strings.ToLower(b.Repo), lq) {
			repos[b.Repo] = true
		}
		if strings.Contains(strings.ToLower(b.Branch), lq) && len(sp.Branches) < searchMax {
			sp.Branches = append(sp.Branches, b)
		}
		for _, rec := range per[i] {
			if rec.Module != "" && strings.Contains(strings.ToLower(rec.Module), lq) && len(mods) < searchMax {
				mods[SearchModule{rec.Repo, rec.Module}] = true
			}
			isModule = isModule || rec.Module == q
		}
	}
	for k := range repos {
		sp.Repos = append(sp.Repos, k)
	}
	sort.Strings(sp.Repos)
	sort.Slice(sp.Branches, func(i, j int) bool {
		a, b := sp.Branches[i], sp.Branches[j]
		return a.Repo < b.Repo || a.Repo == b.Repo && branchLess(a.Branch, b.Branch)
	})
	for m := range mods {
		sp.Modules = append(sp.Modules, m)
	}
	sort.Slice(sp.Modules, func(i, j int) bool {
		a, b := sp.Modules[i], sp.Modules[j]
		return a.Repo < b.Repo || a.Repo == b.Repo && a.Module < b.Module
	})
	// Tests by name, through the read model's trigram index.
	names, err := r.view.db.TestNames(ctx, q, searchTestRows)
	if err != nil {
		sp.Err = "the read model does not answer: " + err.Error()
		return
	}
	sp.Tests, sp.MoreTests = groupTestNames(names), len(names) == searchTestRows
	sp.ShortQ = utf8.RuneCountInString(q) < readmodel.MinTestSearch
	// Job results, newest first.
	// A module's or a branch's exact name: its jobs (a filter on a column,
	// not a scan of every subject).
	f := Filter{All: true, Text: q}
	switch hex := strings.Trim(lq, "0123456789abcdef") == ""; {
	case hex && len(lq) >= 4 && len(lq) <= 40:
		f = Filter{All: true, Commit: lq}
	case isModule:
		f = Filter{All: true, Module: q}
	case isBranch:
		f = Filter{All: true, Branch: q}
	}
	recs, pg, err := r.view.Results(ctx, f, readmodel.Page{Limit: searchMax, Before: readmodel.End}, 0)
	if err != nil {
		sp.Err = "the read model does not answer: " + err.Error()
		return
	}
	slices.Reverse(recs)
	for i := range recs {
		recs[i] = recs[i].Listed()
	}
	sp.Results = recs
	if prev := pg.Prev.String(); prev != "" {
		v := url.Values{"all": {"1"}, "before": {prev}}
		switch {
		case f.Commit != "":
			v.Set("commit", f.Commit)
		case f.Module != "":
			v.Set("module", f.Module)
		case f.Branch != "":
			v.Set("branch", f.Branch)
		default:
			v.Set("q", q)
		}
		sp.More = "/api/v1/results?" + v.Encode()
	}
}

// groupTestNames makes one entry of each test of a job, its places by
// branch and arch; entries by name, repo and job.
func groupTestNames(names []readmodel.TestName) []SearchTest {
	type key struct{ repo, job, name string }
	by := map[key]*SearchTest{}
	var out []*SearchTest
	for _, n := range names {
		k := key{n.Repo, events.QualifiedJob(n.Module, n.Job), n.Name}
		t := by[k]
		if t == nil {
			t = &SearchTest{Repo: k.repo, Job: k.job, Name: k.name}
			by[k] = t
			out = append(out, t)
		}
		t.Places = append(t.Places, n)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		if a.Repo != b.Repo {
			return a.Repo < b.Repo
		}
		return a.Job < b.Job
	})
	res := make([]SearchTest, len(out))
	for i, t := range out {
		sort.Slice(t.Places, func(i, j int) bool {
			a, b := t.Places[i], t.Places[j]
			return branchLess(a.Branch, b.Branch) || a.Branch == b.Branch && a.Arch < b.Arch
		})
		res[i] = *t
	}
	return res
}

// favicon is jetci's icon, in the colour of a status (?status=).
func favicon(w http.ResponseWriter, req *http.Request) {
	colour := map[string]string{"passed": "#1a7f37", "failed": "#c62828", "error": "#9a5b00", "running": "#0b62c4",
		"queued": "#6b6b6b", "paused": "#7b4fa0", "no-runner": "#a0522d", "cancelled": "#888888"}[req.URL.Query().Get("status")]
	if colour == "" {
		colour = "#3b4252"
	}
	w.Header().Set("Content-Type", "image/svg+xml")
	w.Header().Set("Cache-Control", "public, max-age=86400")
	fmt.Fprintf(w, `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="7" fill="%s"/><path d="M19 7v12a5 5 0 0 1-10 0" fill="none" stroke="#fff" stroke-width="4" stroke-linecap="round"/></svg>`, colour)
}

// badge is the status badge of a branch (the worst of its latest cells),
// or of one job (?job=, a module's as module/job) and arch (?arch=):
//
//	GET /badge/REPO/BRANCH.svg[?job=J&arch=A]
func (r *Reporter) badge(w http.ResponseWriter, req *http.Request) {
	repo, rest := req.PathValue("repo"), req.PathValue("branch")
	branch, ok := strings.CutSuffix(rest, ".svg")
	if !ok || repo == "" || branch == "" {
		r.errorPage(w, req, http.StatusNotFound, "a badge is /badge/REPO/BRANCH.svg[?job=J&arch=A]")
		return
	}
	job, arch := req.URL.Query().Get("job"), req.URL.Query().Get("arch")
	brs, per, err := r.view.cells.latest(req.Context(), r.view.db, repo, branch)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	var recs []Record
	for i := range brs {
		for _, rec := range per[i] {
			if (job == "" || rec.Name() == job) && (arch == "" || rec.Arch == arch) {
				recs = append(recs, rec)
			}
		}
	}
	r.view.explain(recs)
	var c Counts
	for _, rec := range recs {
		c.add(rec)
	}
	label := "jetci"
	if job != "" {
		label = job
	}
	if arch != "" {
		label += " " + arch
	}
	text, colour := "unknown", "#9f9f9f"
	switch c.Status() {
	case events.StatusPassed:
		text, colour = "passing", "#1a7f37"
	case events.StatusFailed:
		text, colour = "failing", "#c62828"
		if c.Failing < c.Total && job == "" {
			text = num(c.Failing) + " failing"
		}
	case events.StatusRunning:
		text, colour = "running", "#0b62c4"
	case events.StatusQueued:
		text, colour = "queued", "#6b6b6b"
	case StatusNoRunner:
		text, colour = "no runner", "#a0522d"
	case events.StatusCancelled:
		text, colour = "cancelled", "#888888"
	}
	w.Header().Set("Content-Type", "image/svg+xml")
	w.Header().Set("Cache-Control", "no-cache, max-age=0") // READMEs' image proxies ask again
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if len(recs) == 0 {
		w.WriteHeader(http.StatusNotFound) // still an image: a README shows "unknown"
	}
	_, _ = w.Write(badgeSVG(label, text, colour))
}

// badgeSVG draws a flat two-part badge. Widths are estimated from the
// text's length (about 6.5 px a character at 11 px Verdana).
func badgeSVG(label, text, colour string) []byte {
	width := func(s string) int { return len([]rune(s))*13/2 + 10 }
	lw, tw := width(label), width(text)
	esc := template.HTMLEscapeString
	return []byte(fmt.Sprintf(`<svg xmlns="http://www.w3.org/2000/svg" width="%[1]d" height="20" role="img" aria-label="%[3]s: %[4]s">`+
		`<title>%[3]s: %[4]s</title><rect width="%[2]d" height="20" fill="#555"/><rect x="%[2]d" width="%[5]d" height="20" fill="%[6]s"/>`+
		`<g fill="#fff" text-anchor="middle" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11">`+
		`<text x="%[7]d" y="14">%[3]s</text><text x="%[8]d" y="14">%[4]s</text></g></svg>`,
		lw+tw, lw, esc(label), esc(text), tw, colour, lw/2, lw+tw/2))
}
