package reporter

import (
	"context"
	"fmt"
	"html"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jetci/jetci/events"
)

// This file is the view of a repository's pipeline modules: the latest
// record of every module job on every branch and arch (module × branch ×
// arch), for the modules page and /api/v1/modules.

// ModuleGrid is a repository's module jobs by branch and arch.
type ModuleGrid struct {
	Repo    string         `json:"repo"`
	Columns []ModuleColumn `json:"columns"` // branch × arch
	Rows    []ModuleRow    `json:"rows"`    // those that need attention first, then by module and job
}

// ModuleColumn is one branch × arch of a ModuleGrid.
type ModuleColumn struct {
	Branch string `json:"branch"`
	Arch   string `json:"arch"`
}

// ModuleRow is one module job: its latest record on each branch × arch. A
// module is checked only when a commit changed it or what it depends on, so
// its latest record may be of an older commit than the branch head.
type ModuleRow struct {
	Module string            `json:"module"`
	Job    string            `json:"job"`
	Status events.Status     `json:"status"` // the worst of its cells
	Cells  map[string]Record `json:"cells"`  // by CellKey(branch, arch)
	// FailingSince is the oldest break among its failing cells.
	FailingSince *FailingSince `json:"failing_since,omitempty"`
}

// Cell returns a row's record on a branch × arch.
func (r ModuleRow) Cell(c ModuleColumn) (Record, bool) {
	rec, ok := r.Cells[CellKey(c.Branch, c.Arch)]
	return rec, ok
}

// ModuleCount sums up a branch's module jobs for the overview: what needs
// attention first ("2 failing"), coloured by the worst cell.
type ModuleCount struct {
	Jobs    int `json:"jobs"`    // module job × arch cells
	Passed  int `json:"passed"`  // of them, passing
	Failing int `json:"failing"` // failed or error
	// Running and Waiting count the cells running and queued (Waiting),
	// and NoRunner the queued ones no live runner serves (Record.NoRunner).
	Running  int           `json:"running"`
	Waiting  int           `json:"waiting"`
	NoRunner int           `json:"no_runner"`
	Status   events.Status `json:"status"` // the worst
	// FailingSince is the oldest break among the failing cells.
	FailingSince *FailingSince `json:"failing_since,omitempty"`
}

// Text is what the overview's chip says: the count of the worst kind.
func (c ModuleCount) Text() string {
	switch {
	case c.Failing > 0:
		return strconv.Itoa(c.Failing) + " failing"
	case c.NoRunner > 0:
		return strconv.Itoa(c.NoRunner) + " without runner"
	case c.Running > 0:
		return strconv.Itoa(c.Running) + " running"
	case c.Waiting > 0:
		return strconv.Itoa(c.Waiting) + " waiting"
	case c.Passed == c.Jobs:
		return "all " + strconv.Itoa(c.Jobs) + " passed"
	}
	return strconv.Itoa(c.Passed) + " of " + strconv.Itoa(c.Jobs) + " passed"
}

// Modules returns the module grid of repo, on one branch if branch is set;
// nil when the repo has no module jobs.
func (v *View) Modules(repo, branch string) *ModuleGrid {
	recs, err := v.latest(context.Background(), repo, branch)
	if err != nil {
		v.log.Warn().Err(err).Msg("read model: modules")
	}
	type rk struct{ module, job string }
	rows := map[rk]*ModuleRow{}
	cols := map[ModuleColumn]bool{}
	for _, r := range recs { // one per branch × module × job × arch: the cells
		if r.Module == "" {
			continue
		}
		row := rows[rk{r.Module, r.Job}]
		if row == nil {
			row = &ModuleRow{Module: r.Module, Job: r.Job, Cells: map[string]Record{}}
			rows[rk{r.Module, r.Job}] = row
		}
		row.Cells[CellKey(r.Branch, r.Arch)] = r // listed already (cellCache)
		cols[ModuleColumn{r.Branch, r.Arch}] = true
	}
	if len(rows) == 0 {
		return nil
	}
	g := &ModuleGrid{Repo: repo}
	for c := range cols {
		g.Columns = append(g.Columns, c)
	}
	sort.Slice(g.Columns, func(i, j int) bool {
		a, b := g.Columns[i], g.Columns[j]
		if a.Branch != b.Branch {
			return branchLess(a.Branch, b.Branch)
		}
		return a.Arch < b.Arch
	})
	for _, row := range rows {
		row.Status = worst(row.Cells)
		row.FailingSince = earliestFailing(row.Cells)
		g.Rows = append(g.Rows, *row)
	}
	attention := func(s events.Status) int {
		return slices.Index([]events.Status{events.StatusError, events.StatusFailed}, s) + 1 // 0: fine
	}
	sort.Slice(g.Rows, func(i, j int) bool {
		a, b := g.Rows[i], g.Rows[j]
		if ai, bi := attention(a.Status), attention(b.Status); (ai == 0) != (bi == 0) {
			return ai != 0
		}
		if a.Module != b.Module {
			return a.Module < b.Module
		}
		return a.Job < b.Job
	})
	return g
}

// moduleCount sums up the module cells of a branch summary.
func moduleCount(cells map[string]Record) *ModuleCount {
	var c ModuleCount
	mods := map[string]Record{}
	for k, r := range cells {
		if r.Module == "" {
			continue
		}
		mods[k] = r
		c.Jobs++
		switch shown(r) {
		case events.StatusPassed:
			c.Passed++
		case events.StatusFailed, events.StatusError:
			c.Failing++
		case events.StatusRunning:
			c.Running++
		case events.StatusQueued:
			c.Waiting++
		case StatusNoRunner:
			c.NoRunner++
		}
	}
	if c.Jobs == 0 {
		return nil
	}
	c.Status = worst(mods)
	c.FailingSince = earliestFailing(mods)
	return &c
}

func (r *Reporter) apiModules(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	if q.Get("repo") == "" {
		writeError(w, http.StatusBadRequest, "want ?repo=R (and optionally &branch=B)")
		return
	}
	// Paged by rows: ?limit= rows (default 10, at most 200) from ?after=
	// (the next of an earlier answer: a row number).
	limit, from := 10, 0
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, "limit must be a number ≥ 0")
			return
		}
		if n > 0 {
			limit = min(n, 200)
		}
	}
	if s := q.Get("after"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, "after must be the next of an earlier answer")
			return
		}
		from = n
	}
	g := r.view.Modules(q.Get("repo"), q.Get("branch"))
	if g == nil {
		writeError(w, http.StatusNotFound, "no module results for "+q.Get("repo"))
		return
	}
	out := struct {
		*ModuleGrid
		Total int    `json:"total"`
		Limit int    `json:"limit"`
		Next  string `json:"next,omitempty"`
	}{ModuleGrid: g, Total: len(g.Rows), Limit: limit}
	rows := g.Rows[min(from, len(g.Rows)):]
	if len(rows) > limit {
		rows = rows[:limit]
		out.Next = strconv.Itoa(from + limit)
	}
	g.Rows = rows
	writeJSON(w, http.StatusOK, out)
}

// ModulesPage is the module grid's page: the rows a filter keeps, a page
// of them at a time (ModulesPageRows), so that 500 modules × 30 columns
// stay a page a browser opens at once.
type ModulesPage struct {
	*ModuleGrid
	Branch  string
	Failing bool   // only rows with a failing cell
	Q       string // only modules whose name holds it
	Total   int    // rows the filter keeps
	From    int    // the first row shown (0-based)
	Next    int    // the first row of the next page; 0: none
	Prev    int    // the first row of the page before; -1: none
}

// ModulesPageRows is the rows of the module grid one page shows.
const ModulesPageRows = 50

func (r *Reporter) pageModules(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	repo, branch := q.Get("repo"), q.Get("branch")
	if repo == "" {
		r.errorPage(w, req, http.StatusBadRequest, "want ?repo=R (and optionally &branch=B)")
		return
	}
	g := r.view.Modules(repo, branch)
	if g == nil {
		g = &ModuleGrid{Repo: repo}
	}
	mp := ModulesPage{ModuleGrid: g, Branch: branch, Failing: q.Get("failing") == "1", Q: strings.TrimSpace(q.Get("q")), Prev: -1}
	if n, err := strconv.Atoi(q.Get("from")); err == nil && n > 0 {
		mp.From = n
	}
	rows := g.Rows[:0:0]
	lq := strings.ToLower(mp.Q)
	for _, row := range g.Rows {
		if mp.Failing && !failing(row.Status) {
			continue
		}
		if lq != "" && !strings.Contains(strings.ToLower(row.Module), lq) && !strings.Contains(strings.ToLower(row.Job), lq) {
			continue
		}
		rows = append(rows, row)
	}
	mp.Total = len(rows)
	mp.From = min(mp.From, len(rows))
	rows = rows[mp.From:]
	if len(rows) > ModulesPageRows {
		rows = rows[:ModulesPageRows]
		mp.Next = mp.From + ModulesPageRows
	}
	if mp.From > 0 {
		mp.Prev = max(mp.From-ModulesPageRows, 0)
	}
	shown := *g
	shown.Rows = rows
	mp.ModuleGrid = &shown
	title := repo + " modules"
	if branch != "" {
		title += " on " + branch
	}
	p := r.newPage(req, title, "page", mp)
	for _, row := range g.Rows {
		if failing(row.Status) {
			p.Status = events.StatusFailed
			break
		}
	}
	r.render(w, req, "modules", p)
}

// gridCells writes a module row's cells: 30 columns × 50 rows are 1,500
// cells a page, written here in one pass rather than by template actions.
func gridCells(row ModuleRow, cols []ModuleColumn) template.HTML {
	var b strings.Builder
	for _, c := range cols {
		rec, ok := row.Cell(c)
		if !ok {
			b.WriteString(`<td><span class="muted">–</span></td>`)
			continue
		}
		st := string(shown(rec))
		label := st
		title := events.Short(rec.Commit)
		if rec.DurationMs > 0 {
			title += " · " + dur(time.Duration(rec.DurationMs)*time.Millisecond)
		}
		if rec.NoRunner != "" {
			label, title = "no runner", title+": "+rec.NoRunner
		}
		if fs := failingText(rec.FailingSince); fs != "" {
			title += "; " + fs
		}
		fmt.Fprintf(&b, `<td><a class="chip cell %s" href="/job/%s" title="%s">%s</a></td>`,
			html.EscapeString(st), url.PathEscape(rec.JobID), html.EscapeString(title), html.EscapeString(label))
	}
	return template.HTML(b.String())
}

// modulesPageURL is a page of the module grid, keeping its filters.
func modulesPageURL(mp ModulesPage, from int) string {
	v := url.Values{"repo": {mp.Repo}}
	if mp.Branch != "" {
		v.Set("branch", mp.Branch)
	}
	if mp.Failing {
		v.Set("failing", "1")
	}
	if mp.Q != "" {
		v.Set("q", mp.Q)
	}
	if from > 0 {
		v.Set("from", strconv.Itoa(from))
	}
	return "/modules?" + v.Encode()
}
