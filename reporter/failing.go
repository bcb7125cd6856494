package reporter

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter/readmodel"
)

// FailingSince says who broke a failing job and when: the first commit of
// its failing streak (the oldest failure after its last pass, found in the
// read model by readmodel.FirstFailing), that commit's author, and how many
// commits of the branch came after it. A later commit that re-ran the job
// and failed again (a docs-only change by someone else) is not blamed.
type FailingSince struct {
	Branch  string        `json:"branch"`
	Commit  string        `json:"commit"`
	Author  events.Person `json:"author,omitzero"`
	Subject string        `json:"subject,omitempty"`
	JobID   string        `json:"job_id"` // the job that failed first
	// CommitsAgo counts the branch's commits after Commit (0: it is the
	// newest).
	CommitsAgo int       `json:"commits_ago"`
	At         time.Time `json:"at,omitzero"` // when Commit was first queued
	// Bisection is the id of the culprit search that ran on this failure,
	// and Culprit the commit it named, when one did (the first failing
	// commit among commits that were not tested one by one).
	Bisection string               `json:"bisection,omitempty"`
	Culprit   *events.BisectCommit `json:"culprit,omitempty"`
}

// failingCache keeps FailingSince answers for a few seconds: the overview
// asks for every failing cell at each change it shows.
type failingCache struct {
	mu sync.Mutex
	m  map[string]failingEntry // by job id
}

type failingEntry struct {
	at      time.Time
	attempt uint64
	status  events.Status
	fs      *FailingSince
}

const (
	failingTTL = 3 * time.Second
	// maxFailingLookups bounds the read model look-ups one answer makes;
	// the cells beyond go without (cached ones keep theirs).
	maxFailingLookups = 300
)

// failingSince works out r's FailingSince (nil when r is not failing, or the
// read model does not know).
func (v *View) failingSince(ctx context.Context, r *Record) (*FailingSince, error) {
	if !failing(r.Status) {
		return nil, nil
	}
	cell := readmodel.CellRef{Repo: r.Repo, Branch: r.Branch, Module: r.Module, Job: r.Job, Arch: r.Arch}
	row, err := v.db.FirstFailing(ctx, cell, readmodel.Cursor{Time: nanos(firstSeen(r)), ID: sortKey(r)})
	if errors.Is(err, readmodel.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	first, err := recordOf(row)
	if err != nil {
		return nil, err
	}
	fs := &FailingSince{Branch: r.Branch, Commit: first.Commit, Author: first.Author, Subject: trimSubject(first.Subject), JobID: first.JobID,
		At: firstSeen(&first)}
	n, err := v.db.CommitsAfter(ctx, r.Repo, r.Branch, first.Commit)
	if err != nil && !errors.Is(err, readmodel.ErrNotFound) {
		return nil, err
	}
	fs.CommitsAgo = n
	return fs, nil
}

// setFailingSince sets the FailingSince of the failing records among recs,
// from the cache when it is fresh, with at most maxFailingLookups look-ups.
func (v *View) setFailingSince(ctx context.Context, recs []Record) {
	now := time.Now()
	looked := 0
	for i := range recs {
		r := &recs[i]
		if !failing(r.Status) {
			continue
		}
		v.failing.mu.Lock()
		e, ok := v.failing.m[r.JobID]
		v.failing.mu.Unlock()
		if ok && e.attempt == r.Attempt && e.status == r.Status && now.Sub(e.at) < failingTTL {
			r.FailingSince = e.fs
			continue
		}
		if looked >= maxFailingLookups {
			continue
		}
		looked++
		fs, err := v.failingSince(ctx, r)
		if err != nil {
			v.log.Warn().Err(err).Str("job", r.JobID).Msg("read model: failing since")
			continue
		}
		r.FailingSince = fs
		v.failing.mu.Lock()
		if v.failing.m == nil || len(v.failing.m) > 20000 {
			v.failing.m = map[string]failingEntry{}
		}
		v.failing.m[r.JobID] = failingEntry{at: now, attempt: r.Attempt, status: r.Status, fs: fs}
		v.failing.mu.Unlock()
	}
}

// withBisection returns fs naming the culprit search that ran on its
// failure, if one did (a copy: fs may be shared with the cache).
func withBisection(fs *FailingSince, r *Record, bs []*events.Bisection) *FailingSince {
	if fs == nil {
		return nil
	}
	for _, b := range bs { // newest first
		if b.Name() != r.Name() || b.Arch != r.Arch || (b.ID != fs.JobID && b.Bad != fs.Commit) {
			continue
		}
		out := *fs
		out.Bisection = b.ID
		if b.State == events.BisectFound && b.Culprit != nil {
			c := *b.Culprit
			out.Culprit = &c
		}
		return &out
	}
	return fs
}

// earliestFailing is the FailingSince among recs that began first (the
// oldest break), nil when none is failing.
func earliestFailing(recs map[string]Record) *FailingSince {
	var out *FailingSince
	for _, r := range recs {
		if fs := r.FailingSince; fs != nil && (out == nil || fs.CommitsAgo > out.CommitsAgo ||
			fs.CommitsAgo == out.CommitsAgo && fs.At.Before(out.At)) {
			out = fs
		}
	}
	return out
}

// factFuncs are the page templates' functions for who broke it, the
// no-runner state, failing tests and the tests history.
var factFuncs = map[string]any{
	"failingText":  failingText,
	"shown":        shown,
	"testsJobURL":  testsJobURL,
	"failingTests": failingTests,
	"bisectURL": func(repo, branch, id string) string {
		return branchURL(repo, branch) + "#bisect-" + id
	},
}

// failingText says since when a job fails and who broke it: "failing since
// e766cdb by Ann, 3 commits ago".
func failingText(fs *FailingSince) string {
	if fs == nil {
		return ""
	}
	s := "failing since " + events.Short(fs.Commit)
	if fs.Author.Name != "" {
		s += " by " + fs.Author.Name
	}
	switch fs.CommitsAgo {
	case 0:
		s += ", the newest commit"
	case 1:
		s += ", 1 commit ago"
	default:
		s += ", " + strconv.Itoa(fs.CommitsAgo) + " commits ago"
	}
	if c := fs.Culprit; c != nil && c.Commit != fs.Commit {
		s += "; culprit search: " + events.Short(c.Commit) + " by " + c.Author.Name
	}
	return s
}

// unfixed leaves out the bisections whose job is green again on their
// branch: its latest check passed after the search began. Their box would
// otherwise stay red on the branch page (the API still lists them).
func (v *View) unfixed(ctx context.Context, bs []*events.Bisection) []*events.Bisection {
	if len(bs) == 0 {
		return bs
	}
	cells, err := v.latest(ctx, bs[0].Repo, bs[0].Branch)
	if err != nil {
		return bs
	}
	var out []*events.Bisection
	for _, b := range bs {
		fixed := false
		for _, r := range cells {
			// A pass of a commit the search itself ran (its range, the last
			// good one) is the search's evidence, not a fix.
			inRange := r.Commit == b.Good || slices.ContainsFunc(b.Commits, func(c events.BisectCommit) bool { return c.Commit == r.Commit })
			if r.Module == b.Module && r.Job == b.Job && r.Arch == b.Arch && r.Status == events.StatusPassed &&
				firstSeen(&r).After(b.StartedAt) && !inRange {
				fixed = true
			}
		}
		if !fixed {
			out = append(out, b)
		}
	}
	return out
}
