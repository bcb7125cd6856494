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
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
)

// View is a reporter's live, in-memory picture of every record and every live
// runner, kept current by watching the jetci-results and jetci-runners buckets.
// The pages and the API read it, and it tells subscribers (the pages' event
// streams) what changed. Every reporter has its own; all of them watch the same
// buckets, so they agree whichever reporter wrote a record.
type View struct {
	results, runners jetstream.KeyValue
	branches         jetstream.KeyValue // the broken-build flow's states; nil: none
	log              zerolog.Logger

	mu     sync.RWMutex
	recs   map[string]*Record            // by job id
	leases map[string]events.Lease       // by runner id
	gates  map[string]events.BranchState // by events.BranchKey
	subs   map[chan Change]struct{}
	ready  chan struct{}
	keys   map[string]string // record key → job id, to name the job of a damaged entry
	// OnBad, when set, hears of every entry of the results bucket that is
	// not a valid record.
	OnBad func(key string, err error)
}

// Change is one update a subscriber hears of.
type Change struct {
	Kind   string              `json:"kind"` // "record", "runner" or "branch"
	Record *Record             `json:"-"`
	Runner string              `json:"runner,omitempty"`
	Branch *events.BranchState `json:"-"`
}

// NewView returns a view of the two buckets; Run fills and updates it.
func NewView(results, runners jetstream.KeyValue, log zerolog.Logger) *View {
	return &View{results: results, runners: runners, log: log,
		recs: map[string]*Record{}, leases: map[string]events.Lease{}, gates: map[string]events.BranchState{}, subs: map[chan Change]struct{}{}, ready: make(chan struct{})}
}

// Ready is closed once the view holds every record that existed when it started.
func (v *View) Ready() <-chan struct{} { return v.ready }

// Run watches both buckets until ctx ends, starting a watch again if it breaks.
func (v *View) Run(ctx context.Context) {
	var once sync.Once
	go v.watch(ctx, v.runners, events.LeaseKey("*"), nil, v.applyLease)
	if v.branches != nil {
		go v.watch(ctx, v.branches, ">", nil, v.applyBranch)
	}
	v.watch(ctx, v.results, ">", func() { once.Do(func() { close(v.ready) }) }, v.applyRecord)
}

func (v *View) watch(ctx context.Context, kv jetstream.KeyValue, keys string, caughtUp func(), apply func(jetstream.KeyValueEntry)) {
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
		for e := range w.Updates() {
			if e == nil {
				if caughtUp != nil {
					caughtUp()
				}
				continue
			}
			apply(e)
		}
		_ = w.Stop()
	}
}

func (v *View) applyRecord(e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		return // records are not deleted by jetci; an operator's purge is left alone
	}
	var r Record
	err := json.Unmarshal(e.Value(), &r)
	if err == nil {
		err = r.Validate(e.Key())
	}
	if err != nil {
		v.badRecord(e.Key(), err)
		return
	}
	r.Tests = viewTests(r.Tests)
	v.mu.Lock()
	if v.keys == nil {
		v.keys = map[string]string{}
	}
	v.keys[e.Key()] = r.JobID
	v.recs[r.JobID] = &r
	v.notify(Change{Kind: "record", Record: &r})
	v.mu.Unlock()
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
	v.mu.RLock()
	defer v.mu.RUnlock()
	r, ok := v.recs[id]
	if !ok {
		return Record{}, false
	}
	return *r, true
}

// List returns the records f selects, oldest first, with queued jobs' reasons.
func (v *View) List(f Filter) []Record {
	v.mu.RLock()
	out := make([]Record, 0, 64)
	for _, r := range v.recs {
		if f.match(r) {
			out = append(out, *r)
		}
	}
	leases := v.liveLeases()
	for i := range out {
		if r := &out[i]; r.Status == events.StatusHeld {
			var st *events.BranchState
			if g, ok := v.gates[events.BranchKey(r.Repo, r.Branch)]; ok {
				st = &g
			}
			r.Reason = holdReason(st)
		}
	}
	v.mu.RUnlock()
	sortRecords(out)
	explainWaits(out, leases)
	return out
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
}

// CellKey keys a branch's cells.
func CellKey(job, arch string) string { return job + "\x00" + arch }

// Cell returns a branch's latest record of job × arch.
func (b BranchSummary) Cell(c Column) (Record, bool) {
	r, ok := b.Cells[CellKey(c.Job, c.Arch)]
	return r, ok
}

// Repos summarises every repository, or one when repo is set.
func (v *View) Repos(repo string) []RepoSummary {
	recs := v.List(Filter{Repo: repo, All: true})
	sort.SliceStable(recs, func(i, j int) bool { return firstSeen(&recs[i]).Before(firstSeen(&recs[j])) })
	type bkey struct{ repo, branch string }
	byBranch := map[bkey]*BranchSummary{}
	cols := map[string]map[Column]bool{}
	for i := range recs { // oldest first, so later records replace earlier cells
		r := recs[i]
		k := bkey{r.Repo, r.Branch}
		b := byBranch[k]
		if b == nil {
			b = &BranchSummary{Branch: r.Branch, Cells: map[string]Record{}}
			byBranch[k] = b
		}
		t := firstSeen(&r)
		if !t.Before(b.Time) || b.Head == "" {
			b.Head, b.Subject, b.Author, b.Time = r.Commit, r.Subject, r.Author, t
		}
		b.Cells[CellKey(r.Name(), r.Arch)] = r
		if cols[r.Repo] == nil {
			cols[r.Repo] = map[Column]bool{}
		}
		if r.Module == "" { // modules have their own grid: hundreds of columns would not read
			cols[r.Repo][Column{r.Job, r.Arch}] = true
		}
	}
	var out []RepoSummary
	for name, cs := range cols {
		s := RepoSummary{Repo: name}
		for c := range cs {
			s.Columns = append(s.Columns, c)
		}
		sort.Slice(s.Columns, func(i, j int) bool {
			a, b := s.Columns[i], s.Columns[j]
			return a.Job < b.Job || a.Job == b.Job && a.Arch < b.Arch
		})
		for k, b := range byBranch {
			if k.repo == name {
				b.Status = worst(b.Cells)
				b.Modules = moduleCount(b.Cells)
				s.Modules = s.Modules || b.Modules != nil
				if st, ok := v.Gate(k.repo, b.Branch); ok {
					b.Gate = &st
				}
				s.Branches = append(s.Branches, *b)
			}
		}
		sort.Slice(s.Branches, func(i, j int) bool { return branchLess(s.Branches[i].Branch, s.Branches[j].Branch) })
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Repo < out[j].Repo })
	return out
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

// worst is the status that needs attention most among cells.
func worst(cells map[string]Record) events.Status {
	order := []events.Status{events.StatusError, events.StatusFailed, events.StatusRunning, events.StatusQueued, events.StatusHeld, events.StatusCancelled, events.StatusPassed}
	best := len(order)
	for _, r := range cells {
		if i := slices.Index(order, r.Status); i >= 0 && i < best {
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

// Commits returns a branch's commits, newest first, at most limit (0: all).
// When commit is set, only commits whose sha starts with it.
func (v *View) Commits(repo, branch, commit string, limit int) []Commit {
	recs := v.List(Filter{Repo: repo, Branch: branch, Commit: commit, All: true})
	by := map[string]*Commit{}
	for i := range recs {
		r := recs[i]
		c := by[r.Commit]
		if c == nil {
			c = &Commit{Repo: r.Repo, Branch: r.Branch, Commit: r.Commit, Time: firstSeen(&r)}
			by[r.Commit] = c
		}
		if c.Subject == "" {
			c.Subject, c.Author = r.Subject, r.Author
		}
		c.Jobs = append(c.Jobs, r)
	}
	out := make([]Commit, 0, len(by))
	for _, c := range by {
		cells := map[string]Record{}
		for _, r := range c.Jobs {
			cells[r.JobID] = r
		}
		c.Status = worst(cells)
		sort.Slice(c.Jobs, func(i, j int) bool {
			a, b := c.Jobs[i], c.Jobs[j]
			return a.Module < b.Module || a.Module == b.Module && (a.Job < b.Job || a.Job == b.Job && a.Arch < b.Arch)
		})
		out = append(out, *c)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Time.Equal(out[j].Time) {
			return out[i].Time.After(out[j].Time)
		}
		return out[i].Commit < out[j].Commit
	})
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out
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
	recs := v.List(Filter{All: true})
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
			r.Reason = fmt.Sprintf("no runner for arch %s (pool %s)", r.Arch, r.Pool)
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

// badRecord handles an entry of the results bucket that is not a valid
// record (someone with the reporter's credentials wrote it): the job it
// replaced is shown as damaged rather than as it was, and it is reported.
func (v *View) badRecord(key string, err error) {
	v.mu.Lock()
	if id, ok := v.keys[key]; ok {
		if old := v.recs[id]; old != nil {
			d := *old
			d.Status, d.Error = events.StatusError, "the record of this job in the results bucket is damaged ("+err.Error()+"); the next event of the job rewrites it, or re-check it"
			v.recs[id] = &d
			v.notify(Change{Kind: "record", Record: &d})
		}
	}
	on := v.OnBad
	v.mu.Unlock()
	if on != nil {
		on(key, err)
	}
}
