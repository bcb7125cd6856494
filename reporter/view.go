package reporter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter/readmodel"
)

// View is a reporter's picture of the records and the live runners. The
// records are in the read model (a SQL database, package readmodel), which
// the view keeps current by folding JETCI_RESULTS (fold.go); in memory it
// holds only what is live and small: the runners' leases and the branches'
// broken-build states, watched in their buckets. The pages and the API read
// it, and it tells subscribers (the pages' event streams) what changed.
// Reporters sharing one PostgreSQL database share the records; each has its
// own SQLite file otherwise, folded from the same stream, so they agree.
type View struct {
	db       *readmodel.DB
	js       jetstream.JetStream
	runners  jetstream.KeyValue
	branches jetstream.KeyValue // the broken-build flow's states; nil: none
	results  jetstream.KeyValue // the records' bucket, written as the fold goes; nil: not written
	log      zerolog.Logger

	mu     sync.RWMutex
	leases map[string]events.Lease       // by runner id
	gates  map[string]events.BranchState // by events.BranchKey
	subs   map[chan Change]struct{}
	ready  chan struct{}
	once   sync.Once

	// pulls is what jetci heard of each pull/merge request (the jetci-notify
	// bucket's pull.* keys), by pullIndex; pullKeys maps those keys to it.
	// Under mu.
	pulls    map[string]Pull
	pullKeys map[string]string
	notifyKV jetstream.KeyValue // nil: no pull requests known

	healthMu sync.Mutex
	health   error // why the read model is not current; nil: fine

	statsMu sync.Mutex
	stats   FoldStats

	cells   cellCache
	failing failingCache
	// mayWait says records may hold events waiting to be judged (the
	// waiting table is not known to be empty): the fold's tick rejudges.
	mayWait atomic.Bool
	// guard, when set, checks a result event's signature, and a runner's
	// claims, before the fold applies it (Reporter.admitter); nil: every
	// event is applied (a view of tests without keys).
	guard *guard
	// OnBad, when set, hears of every record read from the read model that
	// is not a valid record (Record.Validate).
	OnBad func(key string, err error)
}

// Change is one update a subscriber hears of.
type Change struct {
	Kind   string              `json:"kind"` // "record", "runner" or "branch"
	Record *Record             `json:"-"`
	Runner string              `json:"runner,omitempty"`
	Branch *events.BranchState `json:"-"`
}

// NewView returns a view of the read model db, folded from js's results
// stream, and of the runners bucket; Run fills and updates it.
func NewView(db *readmodel.DB, js jetstream.JetStream, runners jetstream.KeyValue, log zerolog.Logger) *View {
	v := &View{db: db, js: js, runners: runners, log: log,
		leases: map[string]events.Lease{}, gates: map[string]events.BranchState{}, subs: map[chan Change]struct{}{}, ready: make(chan struct{}),
		pulls: map[string]Pull{}, pullKeys: map[string]string{}}
	v.mayWait.Store(true) // until the waiting table is seen empty
	return v
}

// DB is the read model.
func (v *View) DB() *readmodel.DB { return v.db }

// Ready is closed once the read model holds every result event that was in
// the stream when the view started.
func (v *View) Ready() <-chan struct{} { return v.ready }

func (v *View) caughtUp() { v.once.Do(func() { close(v.ready) }) }

func (v *View) isReady() bool {
	select {
	case <-v.ready:
		return true
	default:
		return false
	}
}

func (v *View) setHealth(err error) {
	v.healthMu.Lock()
	v.health = err
	v.healthMu.Unlock()
}

// Health says why the read model cannot be read or kept current (nil: it
// can): the database does not answer, or the fold fails.
func (v *View) Health(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := v.db.Ping(ctx); err != nil {
		return fmt.Errorf("read model %s: %w", v.db.Where(), err)
	}
	v.healthMu.Lock()
	defer v.healthMu.Unlock()
	if v.health != nil {
		return fmt.Errorf("read model %s: %w", v.db.Where(), v.health)
	}
	return nil
}

// Stats returns what the fold has done since the view started.
func (v *View) Stats() FoldStats {
	v.statsMu.Lock()
	defer v.statsMu.Unlock()
	return v.stats
}

// Run folds results into the read model and watches the runners and
// branches until ctx ends, starting a watch again if it breaks. It returns
// once every goroutine it started has ended.
func (v *View) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { v.watch(ctx, v.runners, events.LeaseKey("*"), v.applyLease) })
	if v.branches != nil {
		wg.Go(func() { v.watch(ctx, v.branches, ">", v.applyBranch) })
	}
	if v.notifyKV != nil {
		wg.Go(func() { v.watch(ctx, v.notifyKV, "pull.>", v.applyPull) })
	}
	if v.results != nil && v.OnBad != nil {
		wg.Go(func() { v.checkResults(ctx) })
	}
	v.fold(ctx)
	wg.Wait()
}

// checkResults validates every record written to the jetci-results bucket
// from now on (the fold's mirror, or anyone else with the reporter's
// credentials): the pages read the read model, but the dispatcher and
// `jetci artifacts` read the bucket, so one that is not a valid record is
// reported (OnBad). Readers of the bucket check it too (Store.List).
func (v *View) checkResults(ctx context.Context) {
	for ctx.Err() == nil {
		w, err := v.results.WatchAll(ctx, jetstream.UpdatesOnly())
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		for e := range updates(ctx, w) {
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var r Record
			err := json.Unmarshal(e.Value(), &r)
			if err == nil {
				err = r.Validate(e.Key())
			}
			if err != nil {
				v.badRecord(e.Key(), err)
			}
		}
		_ = w.Stop()
	}
}

func (v *View) watch(ctx context.Context, kv jetstream.KeyValue, keys string, apply func(jetstream.KeyValueEntry)) {
	for ctx.Err() == nil {
		w, err := kv.Watch(ctx, keys)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			v.log.Warn().Err(err).Str("bucket", kv.Bucket()).Msg("watch bucket; retrying")
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		for e := range updates(ctx, w) {
			if e != nil {
				apply(e)
			}
		}
		_ = w.Stop()
	}
}

// updates yields a watcher's entries until its channel closes or ctx ends,
// whichever comes first: a watch loop never outlives its context.
func updates(ctx context.Context, w jetstream.KeyWatcher) func(yield func(jetstream.KeyValueEntry) bool) {
	return func(yield func(jetstream.KeyValueEntry) bool) {
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok || !yield(e) {
					return
				}
			}
		}
	}
}

func (v *View) applyLease(e jetstream.KeyValueEntry) {
	id := events.RunnerIDFromKey(e.Key())
	v.mu.Lock()
	defer v.mu.Unlock()
	if e.Operation() != jetstream.KeyValuePut {
		if _, ok := v.leases[id]; ok {
			delete(v.leases, id)
			v.notify(Change{Kind: "runner", Runner: id})
		}
		return
	}
	var l events.Lease
	if err := json.Unmarshal(e.Value(), &l); err != nil {
		return
	}
	old, had := v.leases[id]
	v.leases[id] = l
	// A heartbeat alone changes nothing a page shows; say so only when the
	// runner's jobs or load changed.
	if !had || old.Busy != l.Busy || old.Slots != l.Slots || !slices.Equal(old.Jobs, l.Jobs) {
		v.notify(Change{Kind: "runner", Runner: id})
	}
}

func (v *View) applyBranch(e jetstream.KeyValueEntry) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if e.Operation() != jetstream.KeyValuePut {
		delete(v.gates, e.Key())
		v.notify(Change{Kind: "branch"})
		return
	}
	st, err := events.DecodeAs[events.BranchState](e.Value())
	if err != nil {
		return
	}
	v.gates[e.Key()] = *st
	v.notify(Change{Kind: "branch", Branch: st})
}

// Gate returns a branch's broken-build state, if it is under the flow.
func (v *View) Gate(repo, branch string) (events.BranchState, bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	st, ok := v.gates[events.BranchKey(repo, branch)]
	return st, ok
}

// notify tells every subscriber; one that is not keeping up misses the change
// (its buffer already holds changes, which make its page refresh anyway).
func (v *View) notify(c Change) {
	for ch := range v.subs {
		select {
		case ch <- c:
		default:
		}
	}
}

// Subscribe returns a channel of changes and a function that ends the
// subscription.
func (v *View) Subscribe() (<-chan Change, func()) {
	ch := make(chan Change, 64)
	v.mu.Lock()
	v.subs[ch] = struct{}{}
	v.mu.Unlock()
	return ch, func() {
		v.mu.Lock()
		delete(v.subs, ch)
		v.mu.Unlock()
	}
}

// Job returns a copy of one job's record.
func (v *View) Job(id string) (Record, bool) {
	if !events.ValidJobID(id) {
		return Record{}, false
	}
	row, err := v.db.Job(context.Background(), id)
	if err != nil {
		if !errors.Is(err, readmodel.ErrNotFound) {
			v.log.Warn().Err(err).Str("job", id).Msg("read model: read a job")
		}
		return Record{}, false
	}
	r, err := v.recordOf(row)
	if err != nil {
		v.log.Warn().Err(err).Msg("read model")
		return Record{}, false
	}
	return r, true
}

// Page sizes of lists: a list answer holds at most MaxPage items and about
// MaxPageBytes of records, whatever limit asked for; the rest is a page away.
const (
	DefaultPage = 100
	// DefaultCommitsPage is the commits of a branch a list holds by default.
	DefaultCommitsPage = 20
	// MaxCommitJobs bounds the jobs of the commits of one page of commits:
	// the page ends at the commit that passes it.
	MaxCommitJobs = 400
	MaxPage       = 1000
	MaxPageBytes  = 400 << 10
)

// Results returns one page of the records f selects, oldest first (by when
// each job was first queued), with queued and held jobs' reasons. The page
// ends early when its records pass budget bytes (0: MaxPageBytes); Paged.Next
// then continues after the last one returned.
func (v *View) Results(ctx context.Context, f Filter, p readmodel.Page, budget int) ([]Record, readmodel.Paged, error) {
	if budget <= 0 {
		budget = MaxPageBytes
	}
	p.Limit = min(max(p.Limit, 1), MaxPage)
	rows, pg, err := v.db.Records(ctx, f.model(), p)
	if err != nil {
		return nil, pg, err
	}
	out := make([]Record, 0, len(rows))
	size := 0
	for i, row := range rows {
		if size += len(row.Data); size > budget && i > 0 {
			if p.Before != (readmodel.Cursor{}) {
				// Going back: keep the newest ones, next to where the reader was.
				rows = rows[len(rows)-i:]
				out = out[:0]
				for _, row := range rows {
					r, err := v.recordOf(row)
					if err != nil {
						return nil, pg, err
					}
					out = append(out, r)
				}
				pg.Prev = readmodel.Cursor{Time: rows[0].FirstSeen, ID: rows[0].SortKey}
			} else {
				last := rows[i-1]
				pg.Next = readmodel.Cursor{Time: last.FirstSeen, ID: last.SortKey}
			}
			break
		}
		r, err := v.recordOf(row)
		if err != nil {
			return nil, pg, err
		}
		out = append(out, r)
	}
	v.explain(out)
	return out, pg, nil
}

// Listed is the record as lists of jobs show it: its failing and flaky tests
// only, without its attempts' history, log, artifacts and failed tries,
// which the job's own page and /api/v1/jobs/{id} have.
func (r Record) Listed() Record {
	r.Tests = viewTests(r.Tests)
	r.Attempts, r.FailedTries, r.Artifacts, r.Log = nil, nil, nil, ""
	return r
}

// explain sets the Reason of held and queued records.
func (v *View) explain(out []Record) {
	v.mu.RLock()
	leases := v.liveLeases()
	for i := range out {
		if r := &out[i]; r.Status == events.StatusHeld {
			var st *events.BranchState
			if g, ok := v.gates[events.BranchKey(r.Repo, r.Branch)]; ok {
				st = &g
			}
			r.Reason = holdReason(st)
		} else if g, ok := v.gates[events.BranchKey(r.Repo, r.Branch)]; ok && failing(r.Status) {
			r.Label = gateLabel(r, &g)
		}
	}
	v.mu.RUnlock()
	explainWaits(out, leases)
}

// model is the read model's filter for f.
func (f Filter) model() readmodel.Filter {
	m := readmodel.Filter{Repo: f.Repo, Branch: f.Branch, Commit: strings.ToLower(f.Commit), Module: f.Module, Job: f.Job,
		Arch: f.Arch, Author: f.Author, Since: f.Since, Until: f.Until, Text: f.Text}
	for _, s := range f.Status {
		m.Status = append(m.Status, string(s))
	}
	if len(m.Status) == 0 && !f.All {
		m.Status = finalStatuses()
	}
	return m
}

func finalStatuses() []string {
	return []string{string(events.StatusPassed), string(events.StatusFailed), string(events.StatusError), string(events.StatusCancelled)}
}

// latest returns the latest record of every module × job × arch of repo's
// branches (one branch when branch is set), listed (Record.Listed).
func (v *View) latest(ctx context.Context, repo, branch string) ([]Record, error) {
	_, per, err := v.cells.latest(ctx, v.db, repo, branch)
	if err != nil {
		return nil, err
	}
	var out []Record
	for _, recs := range per {
		out = append(out, recs...)
	}
	v.explain(out)
	v.setFailingSince(ctx, out)
	return out, nil
}

// Runners returns the live runners, by id.
func (v *View) Runners() []events.Lease {
	v.mu.RLock()
	defer v.mu.RUnlock()
	ls := v.liveLeases()
	sort.Slice(ls, func(i, j int) bool { return ls[i].ID < ls[j].ID })
	return ls
}

// liveLeases skips leases whose expiry the watch has not reported yet.
func (v *View) liveLeases() []events.Lease {
	out := make([]events.Lease, 0, len(v.leases))
	cutoff := time.Now().Add(-2 * events.LeaseTTL)
	for _, l := range v.leases {
		if l.HeartbeatAt.IsZero() || l.HeartbeatAt.After(cutoff) {
			out = append(out, l)
		}
	}
	return out
}

// RepoSummary is one repository on the overview.
type RepoSummary struct {
	Repo     string          `json:"repo"`
	Branches []BranchSummary `json:"branches"`
	Columns  []Column        `json:"columns"` // job × arch, across branches
	// Modules says some branch has module jobs (BranchSummary.Modules).
	Modules bool `json:"modules,omitempty"`
}

// Column is one job × arch.
type Column struct {
	Job  string `json:"job"`
	Arch string `json:"arch"`
}

// BranchSummary is one branch: its newest commit and the latest record of
// each job × arch.
type BranchSummary struct {
	Branch  string            `json:"branch"`
	Head    string            `json:"head"` // the newest commit jetci has a record of
	Subject string            `json:"subject,omitempty"`
	Author  events.Person     `json:"author,omitzero"`
	Time    time.Time         `json:"time"`
	Status  events.Status     `json:"status"` // the worst of the latest cells
	Cells   map[string]Record `json:"cells"`  // by CellKey(job, arch); a module's job by CellKey("module/job", arch)
	// Modules sums up the branch's module jobs (see View.Modules); nil
	// without any.
	Modules *ModuleCount `json:"modules,omitempty"`
	// Gate is the branch's broken-build state, when it is under the flow.
	Gate *events.BranchState `json:"gate,omitempty"`
	// FailingSince is the oldest break among its failing cells (module
	// jobs' included): since when the branch fails, and who broke it.
	FailingSince *FailingSince `json:"failing_since,omitempty"`
	// Pull is the pull/merge request the branch (pull/N, merge-requests/N)
	// is the head of; its label names it on the pages.
	Pull *Pull `json:"pull,omitempty"`
}

// CellKey keys a branch's cells.
func CellKey(job, arch string) string { return job + "\x00" + arch }

// Cell returns a branch's latest record of job × arch.
func (b BranchSummary) Cell(c Column) (Record, bool) {
	r, ok := b.Cells[CellKey(c.Job, c.Arch)]
	return r, ok
}

// Repos summarises every repository, or one when repo is set: for each
// branch, its newest commit and the latest record of each cell.
func (v *View) Repos(repo string) []RepoSummary {
	out, err := v.ReposErr(context.Background(), repo, false)
	if err != nil {
		v.log.Warn().Err(err).Msg("read model: repos")
	}
	return out
}

// ReposErr is Repos, saying when the read model fails. The cells hold
// listed records (Record.Listed); the cells of module jobs are left out
// (BranchSummary.Modules counts them; the module grid has them) unless
// modules is set: a branch has hundreds of them.
func (v *View) ReposErr(ctx context.Context, repo string, modules bool) ([]RepoSummary, error) {
	brs, per, err := v.cells.latest(ctx, v.db, repo, "")
	if err != nil {
		return nil, err
	}
	byRepo := map[string]*RepoSummary{}
	var out []*RepoSummary
	cols := map[string]map[Column]bool{}
	for i, br := range brs {
		s := byRepo[br.Repo]
		if s == nil {
			s = &RepoSummary{Repo: br.Repo}
			byRepo[br.Repo] = s
			out = append(out, s)
			cols[br.Repo] = map[Column]bool{}
		}
		recs := per[i]
		v.explain(recs)
		v.setFailingSince(ctx, recs)
		b := BranchSummary{Branch: br.Branch, Cells: make(map[string]Record, len(recs)), Pull: v.PullOf(br.Repo, br.Branch)}
		if h, err := v.db.Head(ctx, br.Repo, br.Branch); err == nil {
			b.Head, b.Subject, b.Time = h.Commit, h.Subject, time.Unix(0, h.FirstSeen)
			if h.FirstSeen == 0 {
				b.Time = time.Time{}
			}
		} else if !errors.Is(err, readmodel.ErrNotFound) {
			return nil, err
		}
		for _, r := range recs {
			b.Cells[CellKey(r.Name(), r.Arch)] = r
			if r.Commit == b.Head && b.Author == (events.Person{}) {
				b.Author = r.Author
				if b.Subject == "" {
					b.Subject = r.Subject
				}
			}
			if r.Module == "" { // modules have their own grid: hundreds of columns would not read
				cols[r.Repo][Column{r.Job, r.Arch}] = true
			}
		}
		b.Status = worst(b.Cells)
		b.FailingSince = earliestFailing(b.Cells)
		b.Modules = moduleCount(b.Cells)
		s.Modules = s.Modules || b.Modules != nil
		if !modules {
			for k, r := range b.Cells {
				if r.Module != "" {
					delete(b.Cells, k)
				}
			}
		}
		if st, ok := v.Gate(br.Repo, b.Branch); ok {
			b.Gate = &st
		}
		s.Branches = append(s.Branches, b)
	}
	res := make([]RepoSummary, 0, len(out))
	for _, s := range out {
		for c := range cols[s.Repo] {
			s.Columns = append(s.Columns, c)
		}
		sort.Slice(s.Columns, func(i, j int) bool {
			a, b := s.Columns[i], s.Columns[j]
			return a.Job < b.Job || a.Job == b.Job && a.Arch < b.Arch
		})
		sort.Slice(s.Branches, func(i, j int) bool { return branchLess(s.Branches[i].Branch, s.Branches[j].Branch) })
		res = append(res, *s)
	}
	sort.Slice(res, func(i, j int) bool { return res[i].Repo < res[j].Repo })
	return res, nil
}

// branchLess puts main and master first, then the rest by name.
func branchLess(a, b string) bool {
	rank := func(s string) int {
		switch s {
		case "main", "master", "trunk":
			return 0
		}
		return 1
	}
	if ra, rb := rank(a), rank(b); ra != rb {
		return ra < rb
	}
	return a < b
}

// StatusNoRunner is the state of a commit, branch or module whose worst job
// waits for a runner no live runner can be (Record.NoRunner): it would wait
// forever. Records themselves stay queued.
const StatusNoRunner events.Status = "no-runner"

// shown is a record's state on the pages: its status, or StatusNoRunner.
func shown(r Record) events.Status {
	if r.Status == events.StatusQueued && r.NoRunner != "" {
		return StatusNoRunner
	}
	return r.Status
}

// worst is the status that needs attention most among cells.
func worst(cells map[string]Record) events.Status {
	order := []events.Status{events.StatusError, events.StatusFailed, StatusNoRunner, events.StatusRunning, events.StatusQueued, events.StatusHeld, events.StatusCancelled, events.StatusPassed}
	best := len(order)
	for _, r := range cells {
		if i := slices.Index(order, shown(r)); i >= 0 && i < best {
			best = i
		}
	}
	if best == len(order) {
		return ""
	}
	return order[best]
}

// Commit is one commit of a branch with its jobs.
type Commit struct {
	Repo    string        `json:"repo"`
	Branch  string        `json:"branch"`
	Commit  string        `json:"commit"`
	Subject string        `json:"subject,omitempty"`
	Author  events.Person `json:"author,omitzero"`
	Time    time.Time     `json:"time"`
	Status  events.Status `json:"status"`
	Jobs    []Record      `json:"jobs"` // by job, then arch
}

// Commits returns a branch's commits, newest first, at most limit (0: a
// page's worth). When commit is set, only commits whose sha starts with it.
func (v *View) Commits(repo, branch, commit string, limit int) []Commit {
	if limit <= 0 {
		limit = DefaultPage
	}
	maxJobs := MaxCommitJobs
	if commit != "" {
		maxJobs = 0 // one commit, all of its jobs
	}
	cs, _, err := v.CommitsPage(context.Background(), repo, branch, commit, readmodel.Page{Limit: limit}, maxJobs)
	if err != nil {
		v.log.Warn().Err(err).Msg("read model: commits")
	}
	return cs
}

// CommitsPage returns one page of a branch's commits, newest first (the
// page "after" a cursor is older), each with its jobs. The page ends early
// when its jobs pass maxJobs (0: no bound; it holds at least one commit).
func (v *View) CommitsPage(ctx context.Context, repo, branch, commit string, p readmodel.Page, maxJobs int) ([]Commit, readmodel.Paged, error) {
	p.Limit = min(max(p.Limit, 1), MaxPage)
	rows, pg, err := v.db.Commits(ctx, repo, branch, strings.ToLower(commit), p)
	if err != nil {
		return nil, pg, err
	}
	out := make([]Commit, 0, len(rows))
	n := 0
	for i, cr := range rows {
		// Commit by commit, so that a page that ends early read no more.
		jobs, err := v.db.CommitJobs(ctx, repo, branch, []string{cr.Commit})
		if err != nil {
			return nil, pg, err
		}
		if n += len(jobs); maxJobs > 0 && n > maxJobs && i > 0 {
			pg.Next = readmodel.Cursor{Time: rows[i-1].FirstSeen, ID: rows[i-1].Commit}
			break
		}
		recs := make([]Record, 0, len(jobs))
		for _, row := range jobs {
			r, err := v.recordOf(row)
			if err != nil {
				return nil, pg, err
			}
			recs = append(recs, r.Listed())
		}
		v.explain(recs)
		v.setFailingSince(ctx, recs)
		c := Commit{Repo: cr.Repo, Branch: cr.Branch, Commit: cr.Commit, Subject: cr.Subject, Jobs: recs}
		if cr.FirstSeen != 0 {
			c.Time = time.Unix(0, cr.FirstSeen)
		}
		cells := map[string]Record{}
		for _, r := range recs {
			if c.Author == (events.Person{}) {
				c.Author = r.Author
			}
			if c.Subject == "" {
				c.Subject = r.Subject
			}
			cells[r.JobID] = r
		}
		c.Status = worst(cells)
		sort.Slice(c.Jobs, func(i, j int) bool {
			a, b := c.Jobs[i], c.Jobs[j]
			return a.Module < b.Module || a.Module == b.Module && (a.Job < b.Job || a.Job == b.Job && a.Arch < b.Arch)
		})
		out = append(out, c)
	}
	return out, pg, nil
}

// Waiting is one queued job on the queue page.
type Waiting struct {
	Record
	Waited time.Duration `json:"waited_ns"`
}

// Partition is the queue of one pool and arch.
type Partition struct {
	Pool    string               `json:"pool"`
	Arch    string               `json:"arch"`
	Slots   int                  `json:"slots"` // of live runners serving it
	Busy    int                  `json:"busy"`
	Runners int                  `json:"runners"`
	Classes map[events.Class]int `json:"classes"` // waiting jobs per class
	Jobs    []Waiting            `json:"jobs"`    // highest class first, then longest waiting
}

// Queue returns the waiting jobs by partition.
func (v *View) Queue(now time.Time) []Partition {
	rows, err := v.db.Live(context.Background())
	if err != nil {
		v.log.Warn().Err(err).Msg("read model: queue")
	}
	recs := make([]Record, 0, len(rows))
	for _, row := range rows {
		if r, err := v.recordOf(row); err == nil && (r.Status == events.StatusQueued || len(r.Waiting) > 0) {
			recs = append(recs, r)
		}
	}
	v.explain(recs)
	leases := v.Runners()
	type pk struct{ pool, arch string }
	parts := map[pk]*Partition{}
	get := func(pool, arch string) *Partition {
		p := parts[pk{pool, arch}]
		if p == nil {
			p = &Partition{Pool: pool, Arch: arch, Classes: map[events.Class]int{}, Jobs: []Waiting{}}
			parts[pk{pool, arch}] = p
		}
		return p
	}
	for _, l := range leases {
		p := get(l.Pool, l.Arch)
		p.Slots += l.Slots
		p.Busy += l.Busy
		p.Runners++
	}
	for _, r := range recs {
		// Every waiting run: a job may wait twice (a trigger beside its
		// periodic run), each run at its own class.
		for _, w := range r.Waiting {
			if r.Status == events.StatusQueued && w.QueueSeq == r.QueueSeq {
				continue // the record's own run, listed below
			}
			run := r
			run.Status, run.QueueSeq, run.Class, run.TriggerID, run.QueuedAt, run.Reason = events.StatusQueued, w.QueueSeq, w.Class, w.TriggerID, w.QueuedAt, ""
			p := get(r.Pool, r.Arch)
			p.Classes[run.Class]++
			p.Jobs = append(p.Jobs, Waiting{Record: run, Waited: now.Sub(run.QueuedAt)})
		}
		if r.Status != events.StatusQueued {
			continue
		}
		p := get(r.Pool, r.Arch)
		p.Classes[r.Class]++
		p.Jobs = append(p.Jobs, Waiting{Record: r, Waited: now.Sub(r.QueuedAt)})
	}
	out := make([]Partition, 0, len(parts))
	for _, p := range parts {
		sort.SliceStable(p.Jobs, func(i, j int) bool {
			a, b := slices.Index(events.Classes, p.Jobs[i].Class), slices.Index(events.Classes, p.Jobs[j].Class)
			if a != b {
				return a < b
			}
			return p.Jobs[i].QueuedAt.Before(p.Jobs[j].QueuedAt)
		})
		out = append(out, *p)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Pool < out[j].Pool || out[i].Pool == out[j].Pool && out[i].Arch < out[j].Arch
	})
	return out
}

// firstTime is when jetci first knew of a record's job.
func firstTime(r *Record) time.Time {
	for _, t := range []time.Time{r.QueuedAt, r.StartedAt, r.FinishedAt} {
		if !t.IsZero() {
			return t
		}
	}
	return time.Time{}
}

// firstSeen is when jetci first queued a record's job: a re-check of an old
// commit does not make it new.
func firstSeen(r *Record) time.Time {
	if !r.FirstQueuedAt.IsZero() {
		return r.FirstQueuedAt
	}
	if len(r.Attempts) > 0 && r.Dropped == 0 && !r.Attempts[0].QueuedAt.IsZero() {
		if t := firstTime(r); !t.IsZero() && t.Before(r.Attempts[0].QueuedAt) {
			return t
		}
		return r.Attempts[0].QueuedAt
	}
	return firstTime(r)
}

// explainWaits sets the Reason of queued records: no live runner serves the
// job's pool and arch, or all runners that do are busy.
func explainWaits(rs []Record, leases []events.Lease) {
	type part struct{ pool, arch string }
	served := map[part][2]int{} // slots, busy
	for _, l := range leases {
		v := served[part{l.Pool, l.Arch}]
		served[part{l.Pool, l.Arch}] = [2]int{v[0] + l.Slots, v[1] + l.Busy}
	}
	for i := range rs {
		r := &rs[i]
		if r.Status != events.StatusQueued {
			continue
		}
		switch v, ok := served[part{r.Pool, r.Arch}]; {
		case !ok:
			r.Reason = fmt.Sprintf("no runner for arch %s in pool %s", r.Arch, r.Pool)
			r.NoRunner = fmt.Sprintf("no runner for %s in pool %s", r.Arch, r.Pool)
		case v[1] >= v[0]:
			r.Reason = fmt.Sprintf("all %d runner slots for arch %s (pool %s) are busy", v[0], r.Arch, r.Pool)
		default:
			r.Reason = "waiting for a free runner to take it"
		}
	}
}

// holdReason says why a job is held, from its branch's state.
func holdReason(st *events.BranchState) string {
	if st == nil || st.State == events.BranchOpen {
		return "paused: its branch was not open (broken-build flow); it is released shortly"
	}
	return "paused: the branch is " + st.State + ": " + st.Reason
}

// errNotReady is returned while the view is still loading.
var errNotReady = errors.New("the reporter is still loading results; try again in a moment")

func trimSubject(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// badRecord reports a record of the read model that is not a valid record
// (someone who can write the database wrote it); the reader shows it as
// damaged (recordOf).
func (v *View) badRecord(key string, err error) {
	v.mu.Lock()
	on := v.OnBad
	v.mu.Unlock()
	if on != nil {
		on(key, err)
	}
}
