package reporter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/events"
)

// Store reads and writes job records in the jetci-results bucket. Writes are
// compare-and-swap on the entry's revision, so any number of reporters can fold
// events into the same records without losing one.
type Store struct {
	kv       jetstream.KeyValue
	runners  jetstream.KeyValue // leases of live runners, to say why a job waits
	branches jetstream.KeyValue // broken-build states, to say why a job is held; nil: none
}

// OpenStore opens the results bucket; it must exist (events.Setup creates it).
func OpenStore(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	kv, err := js.KeyValue(ctx, events.BucketResults)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("no %s bucket on this server: is jetci running there?", events.BucketResults)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", events.BucketResults, err)
	}
	runners, err := js.KeyValue(ctx, events.BucketRunners)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", events.BucketRunners, err)
	}
	st := &Store{kv: kv, runners: runners}
	if b, err := js.KeyValue(ctx, events.BucketBranches); err == nil {
		st.branches = b
	}
	return st, nil
}

// Apply folds an event into its job's record. It returns the record and whether
// it changed.
func (s *Store) Apply(ctx context.Context, ev any) (*Record, bool, error) {
	return s.apply(ctx, ev, 0, time.Time{})
}

// apply is Apply that, for a runner's event taken from the results stream at
// resultSeq (0: not from a runner), first checks it against the claims in the
// record as read (Record.Admit): its error, wrapping events.ErrForged,
// refuses the event, or ErrWait defers it, and is returned as is; at is when
// the server stored the event.
func (s *Store) apply(ctx context.Context, ev any, resultSeq uint64, at time.Time) (*Record, bool, error) {
	ref, ok := refOf(ev)
	if !ok {
		return nil, false, fmt.Errorf("apply: %T is not a job event", ev)
	}
	key := events.RecordKey(ref.Repo, ref.Branch, ref.JobID)
	for {
		rec := &Record{}
		var rev uint64
		e, err := s.kv.Get(ctx, key)
		switch {
		case err == nil:
			if err := json.Unmarshal(e.Value(), rec); err != nil {
				return nil, false, fmt.Errorf("record %s: %w", key, err)
			}
			if rec.Delivery == 0 && rec.Attempt > 0 && len(rec.Attempts) == 0 {
				// Written before attempts were counted across runs: its attempt
				// was the delivery count; give it the history it lacks.
				rec.Delivery, rec.Dropped = rec.Attempt, int(rec.Attempt-1)
				rec.Attempts = []Attempt{{N: rec.Attempt, QueueSeq: rec.QueueSeq, Delivery: rec.Attempt, Class: rec.Class,
					Runner: rec.Runner, Status: rec.Status, ExitCode: rec.ExitCode, Error: rec.Error, QueuedAt: rec.QueuedAt,
					StartedAt: rec.StartedAt, FinishedAt: rec.FinishedAt, DurationMs: rec.DurationMs, Log: rec.Log,
					LogBytes: rec.LogBytes, LogTruncated: rec.LogTruncated}}
			}
			rev = e.Revision()
		case errors.Is(err, jetstream.ErrKeyNotFound):
		default:
			return nil, false, fmt.Errorf("get record %s: %w", key, err)
		}
		var disputed string
		if resultSeq != 0 {
			if disputed, err = rec.Admit(ev, resultSeq, at, s.holds(ctx)); err != nil {
				return rec, false, err
			}
		}
		if disputed != "" {
			if !rec.Dispute(ev, disputed) {
				return rec, false, &DisputedError{Why: disputed}
			}
		} else if !rec.Apply(ev) {
			return rec, false, nil
		}
		if fin, ok := ev.(*events.JobFinished); ok && resultSeq != 0 {
			rec.markResult(fin.Run, resultSeq)
		}
		data, err := json.Marshal(rec)
		if err != nil {
			return nil, false, err
		}
		if rev == 0 {
			_, err = s.kv.Create(ctx, key, data)
		} else {
			_, err = s.kv.Update(ctx, key, data, rev)
		}
		if err == nil && disputed != "" {
			return rec, true, &DisputedError{Why: disputed}
		}
		if err == nil {
			return rec, true, nil
		}
		if !isConflict(err) {
			return nil, false, fmt.Errorf("write record %s: %w", key, err)
		}
		// Another reporter wrote first: read again and re-apply.
	}
}

// holds reports whether a runner's live lease names a job.
func (s *Store) holds(ctx context.Context) func(runner, jobID string) bool {
	return leaseHolds(s.runners)(ctx)
}

// leaseHolds is Store.holds on a runners bucket (nil: assume every runner
// holds its jobs).
func leaseHolds(runners jetstream.KeyValue) func(ctx context.Context) func(runner, jobID string) bool {
	return func(ctx context.Context) func(runner, jobID string) bool {
		return func(runner, jobID string) bool {
			return leaseNames(ctx, runners, runner, jobID)
		}
	}
}

// leaseNames reports whether runner's live lease names jobID (an unknown
// answer counts as yes).
func leaseNames(ctx context.Context, runners jetstream.KeyValue, runner, jobID string) bool {
	if runners == nil {
		return true
	}
	e, err := runners.Get(ctx, events.LeaseKey(events.IdentityName(runner)))
	if err != nil {
		return !errors.Is(err, jetstream.ErrKeyNotFound) // unknown: assume it does
	}
	var l events.Lease
	if json.Unmarshal(e.Value(), &l) != nil {
		return true
	}
	for _, j := range l.Jobs {
		if j.JobID == jobID {
			return true
		}
	}
	return false
}

// DisputedError says an event was folded in as a disputed run (Record.Dispute).
type DisputedError struct{ Why string }

func (e *DisputedError) Error() string { return "disputed: " + e.Why }

func isConflict(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
		return true
	}
	return errors.Is(err, jetstream.ErrKeyExists)
}

// Filter selects records. Empty fields match everything; Commit matches a prefix
// of the full sha.
type Filter struct {
	Repo, Branch, Commit string
	Module               string // only this pipeline module's jobs
	// All includes queued and running jobs; by default only finished ones.
	All bool
	// The read model's filters (View.Results; Store.List ignores them).
	Job, Arch    string
	Status       []events.Status // any of these (overrides All)
	Author       string          // the commit author's name or mail
	Since, Until time.Time       // first queued in [Since, Until)
	Text         string          // in the commit subject or author, ignoring case
}

// List returns the records that match f, oldest first.
func (s *Store) List(ctx context.Context, f Filter) ([]Record, error) {
	pattern := ">"
	if f.Repo != "" {
		pattern = events.Token(f.Repo) + ".>"
		if f.Branch != "" {
			pattern = events.Token(f.Repo) + "." + events.Token(f.Branch) + ".*"
		}
	}
	w, err := s.kv.Watch(ctx, pattern, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("list records: %w", err)
	}
	defer w.Stop()
	var out []Record
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return nil, errors.New("list records: watcher closed")
			}
			if e == nil {
				sortRecords(out)
				s.explainWaits(ctx, out)
				return out, nil
			}
			var r Record
			if err := json.Unmarshal(e.Value(), &r); err != nil {
				continue // not ours; never stop a listing for one bad entry
			}
			if err := r.Validate(e.Key()); err != nil {
				// Shown as damaged (as the reporter shows one), not as written.
				if !events.ValidJobID(r.JobID) {
					continue
				}
				r.Status, r.Error = events.StatusError, "the record of this job in the results bucket is damaged ("+err.Error()+")"
			}
			if f.match(&r) {
				out = append(out, r)
			}
		}
	}
}

func (f Filter) match(r *Record) bool {
	if f.Repo != "" && r.Repo != f.Repo || f.Branch != "" && r.Branch != f.Branch {
		return false
	}
	if f.Commit != "" && !strings.HasPrefix(r.Commit, strings.ToLower(f.Commit)) {
		return false
	}
	if f.Module != "" && r.Module != f.Module {
		return false
	}
	return f.All || r.Status.Final()
}

func sortRecords(rs []Record) {
	first := func(r *Record) int64 {
		if t := firstTime(r); !t.IsZero() {
			return t.UnixNano()
		}
		return 0
	}
	sort.SliceStable(rs, func(i, j int) bool {
		a, b := &rs[i], &rs[j]
		if ta, tb := first(a), first(b); ta != tb {
			return ta < tb
		}
		if a.Repo != b.Repo {
			return a.Repo < b.Repo
		}
		if a.Branch != b.Branch {
			return a.Branch < b.Branch
		}
		if a.Module != b.Module {
			return a.Module < b.Module
		}
		if a.Job != b.Job {
			return a.Job < b.Job
		}
		return a.Arch < b.Arch
	})
}

// explainWaits sets the Reason of queued records from the live runners.
func (s *Store) explainWaits(ctx context.Context, rs []Record) {
	for i := range rs {
		if r := &rs[i]; r.Status == events.StatusHeld {
			var st *events.BranchState
			if s.branches != nil {
				if e, err := s.branches.Get(ctx, events.BranchKey(r.Repo, r.Branch)); err == nil {
					st, _ = events.DecodeAs[events.BranchState](e.Value())
				}
			}
			r.Reason = holdReason(st)
		}
	}
	if !slices.ContainsFunc(rs, func(r Record) bool { return r.Status == events.StatusQueued }) {
		return
	}
	leases, _ := s.leases(ctx)
	explainWaits(rs, leases)
}

func (s *Store) leases(ctx context.Context) ([]events.Lease, error) {
	w, err := s.runners.Watch(ctx, events.LeaseKey("*"), jetstream.IgnoreDeletes())
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	var out []events.Lease
	for e := range w.Updates() {
		if e == nil {
			return out, nil
		}
		var l events.Lease
		if json.Unmarshal(e.Value(), &l) == nil {
			out = append(out, l)
		}
	}
	return out, errors.New("watcher closed")
}

// ErrNoJob is returned for a job id no record has.
var ErrNoJob = errors.New("no such job")

// Get returns the record of one job by its id.
func (s *Store) Get(ctx context.Context, jobID string) (*Record, error) {
	return getRecord(ctx, s.kv, jobID)
}

// FindRecord looks a job's record up by its id alone, for tools that have
// no reporter (jetci artifacts).
func FindRecord(ctx context.Context, js jetstream.JetStream, jobID string) (*Record, error) {
	kv, err := js.KeyValue(ctx, events.BucketResults)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", events.BucketResults, err)
	}
	return getRecord(ctx, kv, jobID)
}

func getRecord(ctx context.Context, kv jetstream.KeyValue, jobID string) (*Record, error) {
	if !events.ValidJobID(jobID) {
		return nil, fmt.Errorf("%w: %q is not a job id (20 hex digits)", ErrNoJob, jobID)
	}
	keys, err := kv.ListKeysFiltered(ctx, "*.*."+jobID)
	if err != nil {
		return nil, fmt.Errorf("look up job %s: %w", jobID, err)
	}
	var key string
	for k := range keys.Keys() {
		key = k
	}
	if key == "" {
		return nil, fmt.Errorf("%w: %s", ErrNoJob, jobID)
	}
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNoJob, jobID)
	}
	if err != nil {
		return nil, fmt.Errorf("get job %s: %w", jobID, err)
	}
	var r Record
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return nil, fmt.Errorf("record %s: %w", key, err)
	}
	return &r, nil
}
