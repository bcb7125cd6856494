package reporter

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/jetci/jetci/events"
)

// Record is what jetci knows of one job: the latest attempt of the latest run.
// There is exactly one record per job (repo, branch, commit, job, arch); it lives
// in the jetci-results bucket under events.RecordKey.
type Record struct {
	JobID  string        `json:"job_id"`
	Repo   string        `json:"repo"`
	Branch string        `json:"branch"`
	Commit string        `json:"commit"`
	Arch   string        `json:"arch"`
	Job    string        `json:"job"`
	Status events.Status `json:"status"`
	// Module is the pipeline module the job checks ("": the whole repo).
	Module string `json:"module,omitempty"`
	// Attempt numbers the attempt this record shows, counting every run
	// (re-checks) and every delivery (a runner died) of the job: 1, 2, 3...
	// It is 0 while the current run waits in the queue.
	Attempt    uint64    `json:"attempt"`
	ExitCode   int       `json:"exit_code"`
	DurationMs int64     `json:"duration_ms"`
	Runner     string    `json:"runner"`
	Error      string    `json:"error"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
	QueuedAt   time.Time `json:"queued_at,omitzero"`
	// FirstQueuedAt is when the job was first queued, before any re-check or
	// culprit-search run of it: where its commit stands in the branch.
	FirstQueuedAt time.Time         `json:"first_queued_at,omitzero"`
	StartedAt     time.Time         `json:"started_at,omitzero"`
	Pool          string            `json:"pool,omitempty"`
	Class         events.Class      `json:"class,omitempty"`
	Author        events.Person     `json:"author,omitzero"`
	Subject       string            `json:"subject,omitempty"`
	TriggerID     string            `json:"trigger_id,omitempty"`
	Log           string            `json:"log,omitempty"`
	LogBytes      int64             `json:"log_bytes,omitempty"`
	LogTruncated  bool              `json:"log_truncated,omitempty"`
	Artifacts     []events.Artifact `json:"artifacts,omitempty"`
	QueueSeq      uint64            `json:"queue_seq"`
	// Delivery is the current attempt's delivery count within its run.
	Delivery uint64 `json:"delivery,omitempty"`
	// Run is the current attempt's run id (events.JobFinished.Run), and
	// LogDigest its log's digest.
	Run       string `json:"run,omitempty"`
	LogDigest string `json:"log_digest,omitempty"`
	// Attempts is the history of every attempt, oldest first (at most
	// MaxAttempts; Dropped counts the older ones left out).
	Attempts []Attempt `json:"attempts,omitempty"`
	Dropped  int       `json:"attempts_dropped,omitempty"`
	// Phase orders events of one attempt: 0 queued, 1 started, 2 finished.
	Phase int `json:"phase"`
	// Pending holds runner events the fold could not judge yet (Admit said
	// ErrWait: another run, under way on a live runner, holds their
	// delivery); they are looked at again whenever the record changes. Kept
	// in the read model only: readers never see them (recordOf, mirror).
	Pending []PendingEvent `json:"pending,omitempty"`
	// Reason says why a queued job waits. It is worked out when records are
	// read (from the live runners), not stored.
	Reason string `json:"reason,omitempty"`
	// Label names a failing job of a gated branch in the broken-build
	// flow's words ("first check failed", "second check failed", "fixed by
	// <commit>", "broken by <commit>, fixed by <commit>"); worked out when
	// records are read, from the branch's state, not stored.
	Label string `json:"label,omitempty"`
	// FailingSince, on a failing job, names the commit where its failing
	// streak began and who made it; worked out when records are read (from
	// the read model), not stored.
	FailingSince *FailingSince `json:"failing_since,omitempty"`
	// NoRunner, on a queued job, says that no live runner serves its arch
	// and pool ("no runner for riscv64 in pool default"): a state of its
	// own on the pages, not ordinary queueing. Worked out when records are
	// read, from the runners' leases, not stored.
	NoRunner string `json:"no_runner,omitempty"`
	// The current attempt's test results (see events.JobFinished): status
	// stays one of the job statuses, a pass on retry is passed with flaky
	// true ("passed (flaky)" on the pages).
	Tests       []events.TestResult `json:"tests,omitempty"`
	TestSummary *events.TestSummary `json:"test_summary,omitempty"`
	Flaky       bool                `json:"flaky,omitempty"`
	Retries     int                 `json:"retries,omitempty"`
	FailedTries []events.FailedTry  `json:"failed_tries,omitempty"`
	// How the current attempt's steps ran (events.JobFinished): host,
	// sandbox or container, and the emulator of a foreign architecture.
	Exec      string `json:"exec,omitempty"`
	Emulation string `json:"emulation,omitempty"`
	// Waiting are the runs of the job queued and not started yet, oldest
	// first (at most MaxWaiting): a trigger may queue a run of a job whose
	// periodic run still waits, and each run's attempt keeps its own class,
	// trigger and queue time.
	Waiting []WaitingRun `json:"waiting,omitempty"`
}

// WaitingRun is a queued run of a job that no runner has started.
type WaitingRun struct {
	QueueSeq  uint64       `json:"queue_seq"`
	Class     events.Class `json:"class,omitempty"`
	Origin    events.Class `json:"origin,omitempty"` // the class it was first queued at, when aging moved it
	TriggerID string       `json:"trigger_id,omitempty"`
	QueuedAt  time.Time    `json:"queued_at,omitzero"`
}

// MaxWaiting bounds Record.Waiting.
const MaxWaiting = 10

// wait notes a queued run; started forgets it and says how it was queued.
func (r *Record) wait(e *events.JobQueued) bool {
	if e.QueueSeq == 0 || slices.ContainsFunc(r.Waiting, func(w WaitingRun) bool { return w.QueueSeq == e.QueueSeq }) {
		return false
	}
	for i := range r.Attempts {
		if r.Attempts[i].QueueSeq == e.QueueSeq {
			return false // started already
		}
	}
	w := WaitingRun{QueueSeq: e.QueueSeq, Class: e.Class, Origin: e.Origin, TriggerID: e.TriggerID, QueuedAt: e.QueuedAt}
	if e.Origin != "" {
		// Aging moved a waiting run up a class: the same run, queued anew.
		r.Waiting = slices.DeleteFunc(r.Waiting, func(o WaitingRun) bool {
			return o.QueueSeq < e.QueueSeq && o.TriggerID == e.TriggerID && events.Kind(o.Class, o.Origin) == e.Origin
		})
	}
	r.Waiting = append(r.Waiting, w)
	slices.SortFunc(r.Waiting, func(a, b WaitingRun) int { return cmp.Compare(a.QueueSeq, b.QueueSeq) })
	if len(r.Waiting) > MaxWaiting {
		r.Waiting = r.Waiting[len(r.Waiting)-MaxWaiting:]
	}
	return true
}

func (r *Record) started(seq uint64, a *Attempt) {
	i := slices.IndexFunc(r.Waiting, func(w WaitingRun) bool { return w.QueueSeq == seq })
	if i < 0 {
		return
	}
	if w := r.Waiting[i]; a.Class == "" {
		a.Class, a.TriggerID, a.QueuedAt = w.Class, w.TriggerID, w.QueuedAt
	}
	r.Waiting = slices.Delete(r.Waiting, i, i+1)
	if len(r.Waiting) == 0 {
		r.Waiting = nil
	}
}

// Name is the job's name with its module, "core/test" (the job's name alone
// for a job of the whole repository).
func (r Record) Name() string { return events.QualifiedJob(r.Module, r.Job) }

// Attempt is one attempt of a job: one delivery of one run to a runner.
type Attempt struct {
	N            uint64            `json:"n"`
	QueueSeq     uint64            `json:"queue_seq"`
	Delivery     uint64            `json:"delivery"`
	Class        events.Class      `json:"class,omitempty"`
	TriggerID    string            `json:"trigger_id,omitempty"`
	Runner       string            `json:"runner,omitempty"`
	Status       events.Status     `json:"status"`
	ExitCode     int               `json:"exit_code"`
	Error        string            `json:"error,omitempty"`
	QueuedAt     time.Time         `json:"queued_at,omitzero"`
	StartedAt    time.Time         `json:"started_at,omitzero"`
	FinishedAt   time.Time         `json:"finished_at,omitzero"`
	DurationMs   int64             `json:"duration_ms,omitempty"`
	Log          string            `json:"log,omitempty"`
	LogBytes     int64             `json:"log_bytes,omitempty"`
	LogTruncated bool              `json:"log_truncated,omitempty"`
	Artifacts    []events.Artifact `json:"artifacts,omitempty"`
	// Run and Token name the run and the server's delivery it claimed
	// (events.JobStarted); ResultSeq is the results stream sequence of the
	// finished event taken, so a replay of it is told from a redelivery.
	Run       string `json:"run,omitempty"`
	Token     string `json:"delivery_token,omitempty"`
	ResultSeq uint64 `json:"result_seq,omitempty"`
	LogDigest string `json:"log_digest,omitempty"`
	// Disputed says why this run does not count: it claimed a delivery
	// another run had claimed first (with another delivery token). Either
	// the server delivered the job twice with the same count (it lost its
	// consumer state) or a runner made the claim up; its result never
	// changes the record's status, and admins see it under /forgeries.
	Disputed string `json:"disputed,omitempty"`
	// Each attempt keeps its test counts and the names of its first failing
	// tests (the record's Tests are the current attempt's only).
	Flaky       bool                `json:"flaky,omitempty"`
	Retries     int                 `json:"retries,omitempty"`
	TestSummary *events.TestSummary `json:"test_summary,omitempty"`
	FailedTests []string            `json:"failed_tests,omitempty"`
}

// MaxAttemptFailedTests bounds the failing test names an attempt keeps.
const MaxAttemptFailedTests = 10

// failedTests names the failing tests of a result, at most limit.
func failedTests(e *events.JobFinished, limit int) []string {
	var out []string
	for _, t := range e.Tests {
		if len(out) == limit {
			break
		}
		if events.Failing(t.Status) {
			out = append(out, t.Name)
		}
	}
	return out
}

// MaxAttempts bounds the history a record keeps.
const MaxAttempts = 50

// attempt returns the history entry of (seq, delivery, run), adding it in
// order if it is new, and renumbers the history. Two runs of one delivery
// (the server delivered the job again with the same count, after losing its
// consumer state) are two entries; an entry without a run (queued or
// service-made) is taken by the first run.
func (r *Record) attempt(seq, delivery uint64, run string) *Attempt {
	i := sort.Search(len(r.Attempts), func(i int) bool {
		a := &r.Attempts[i]
		return a.QueueSeq > seq || a.QueueSeq == seq && a.Delivery >= delivery
	})
	for ; i < len(r.Attempts) && r.Attempts[i].QueueSeq == seq && r.Attempts[i].Delivery == delivery; i++ {
		if a := &r.Attempts[i]; a.Run == run || a.Run == "" || run == "" {
			if a.Run == "" {
				a.Run = run
			}
			return a
		}
	}
	{
		r.Attempts = slices.Insert(r.Attempts, i, Attempt{QueueSeq: seq, Delivery: delivery, Run: run})
		if len(r.Attempts) > MaxAttempts {
			r.Attempts = r.Attempts[1:]
			r.Dropped++
			i--
		}
		for j := range r.Attempts {
			r.Attempts[j].N = uint64(r.Dropped + j + 1)
		}
	}
	if i < 0 {
		return &Attempt{} // older than everything kept
	}
	return &r.Attempts[i]
}

// Find returns the history entry numbered n, or nil.
func (r *Record) Find(n uint64) *Attempt {
	for i := range r.Attempts {
		if r.Attempts[i].N == n {
			return &r.Attempts[i]
		}
	}
	return nil
}

// position orders the events of one job: a later run (higher queue sequence) wins,
// then a later attempt, then a later phase. Anything at or below the record's
// position is stale (a late report from a runner whose job was redelivered) or a
// duplicate, and does not change the state.
type position struct {
	seq, attempt uint64
	phase        int
}

func (p position) after(q position) bool {
	if p.seq != q.seq {
		return p.seq > q.seq
	}
	if p.attempt != q.attempt {
		return p.attempt > q.attempt
	}
	return p.phase > q.phase
}

func (r *Record) position() position { return position{r.QueueSeq, r.Delivery, r.Phase} }

// Apply folds one event into the record and reports whether it changed. Every
// started and finished event updates its attempt in the history; only events
// newer than the record's position change the record's current state.
func (r *Record) Apply(ev any) bool {
	switch e := ev.(type) {
	case *events.JobQueued:
		changed := r.fill(e.JobRef, e.Author, e.Subject)
		if r.FirstQueuedAt.IsZero() && r.JobID != "" && !firstSeen(r).IsZero() {
			// A record stored before first_queued_at existed: its place
			// is what firstSeen made of its history, not this run's time.
			r.FirstQueuedAt, changed = firstSeen(r), true
		}
		if first := r.FirstQueuedAt; !e.QueuedAt.IsZero() && (first.IsZero() || e.QueuedAt.Before(first)) {
			r.FirstQueuedAt, changed = e.QueuedAt, true
		}
		if r.Pool == "" || r.QueuedAt.IsZero() {
			r.Pool, r.Class, r.QueuedAt, r.TriggerID = e.Pool, e.Class, e.QueuedAt, e.TriggerID
			changed = true
		}
		for i := range r.Attempts {
			if a := &r.Attempts[i]; !e.Held && a.QueueSeq == e.QueueSeq && (a.Class == "" || a.TriggerID != e.TriggerID || a.QueuedAt.IsZero()) {
				a.Class, a.TriggerID, a.QueuedAt, changed = e.Class, e.TriggerID, e.QueuedAt, true
			}
		}
		if e.Held && e.QueueSeq != 0 && e.QueueSeq == r.QueueSeq && (r.Phase == 0 && r.Status == events.StatusQueued || r.Status == events.StatusCancelled) {
			// Withdrawn from the queue before a runner took it, or stopped
			// as it started: its branch broke (the broken-build flow pauses
			// later commits).
			r.Status = events.StatusHeld
			r.started(e.QueueSeq, &Attempt{})
			return true
		}
		if e.Held && e.QueueSeq == 0 {
			// Not dispatched (its branch is broken): shown as held until the
			// real queued event comes.
			if r.Status == "" || r.Status == events.StatusHeld {
				r.Status, r.Class = events.StatusHeld, e.Class
				return true
			}
			return changed
		}
		if !e.Held && r.wait(e) {
			changed = true
		}
		if !(position{e.QueueSeq, 0, 0}).after(r.position()) {
			return changed
		}
		*r = Record{
			JobID: r.JobID, Repo: r.Repo, Branch: r.Branch, Commit: r.Commit, Arch: r.Arch, Job: r.Job, Module: r.Module,
			Author: r.Author, Subject: r.Subject, Attempts: r.Attempts, Dropped: r.Dropped, FirstQueuedAt: r.FirstQueuedAt, Waiting: r.Waiting,
			Status: events.StatusQueued, QueueSeq: e.QueueSeq, Pool: e.Pool, Class: e.Class,
			QueuedAt: e.QueuedAt, TriggerID: e.TriggerID,
		}
		return true
	case *events.JobStarted:
		changed := r.fill(e.JobRef, events.Person{}, "")
		a := r.attempt(e.QueueSeq, e.Attempt, e.Run)
		if a.Status == "" {
			a.Status, a.Runner, a.StartedAt, changed = events.StatusRunning, e.Runner, e.StartedAt, true
			a.Token = e.Token
			if e.QueueSeq == r.QueueSeq {
				a.Class, a.TriggerID, a.QueuedAt = r.Class, r.TriggerID, r.QueuedAt
			}
		}
		if len(r.Waiting) > 0 {
			r.started(e.QueueSeq, a)
		}
		if !(position{e.QueueSeq, e.Attempt, 1}).after(r.position()) {
			r.syncAttempt()
			return r.loseEarlier() || changed
		}
		r.QueueSeq, r.Delivery, r.Phase, r.Run, r.LogDigest = e.QueueSeq, e.Attempt, 1, e.Run, ""
		r.Status, r.Runner, r.StartedAt = events.StatusRunning, e.Runner, e.StartedAt
		r.ExitCode, r.DurationMs, r.Error, r.FinishedAt = 0, 0, "", time.Time{}
		r.Log, r.LogBytes, r.LogTruncated, r.Artifacts = "", 0, false, nil
		r.Tests, r.TestSummary, r.Flaky, r.Retries, r.FailedTries = nil, nil, false, 0, nil
		r.Exec, r.Emulation = "", ""
		r.syncAttempt()
		r.loseEarlier()
		return true
	case *events.JobFinished:
		changed := r.fill(e.JobRef, e.Author, e.Subject)
		a := &Attempt{} // delivery 0: ended before any runner took it (cancelled in the queue); no attempt
		if e.Attempt > 0 {
			a = r.attempt(e.QueueSeq, e.Attempt, e.Run)
		}
		if !a.Status.Final() {
			a.Status, a.Runner, a.ExitCode, a.Error = e.Status, e.Runner, e.ExitCode, e.Error
			a.DurationMs, a.FinishedAt = e.DurationMs, e.FinishedAt
			if !e.StartedAt.IsZero() {
				a.StartedAt = e.StartedAt
			}
			a.Log, a.LogBytes, a.LogTruncated, a.Artifacts = e.Log, e.LogBytes, e.LogTruncated, e.Artifacts
			a.LogDigest = e.LogDigest
			if a.Token == "" {
				a.Token = e.Token
			}
			a.Flaky, a.Retries, a.TestSummary, a.FailedTests = e.Flaky, e.Retries, e.TestSummary, failedTests(e, MaxAttemptFailedTests)
			if e.QueueSeq == r.QueueSeq && a.Class == "" {
				a.Class, a.TriggerID, a.QueuedAt = r.Class, r.TriggerID, r.QueuedAt
			}
			changed = true
		}
		if len(r.Waiting) > 0 {
			// Started, or ended in the queue (cancelled, superseded).
			r.started(e.QueueSeq, a)
		}
		if !(position{e.QueueSeq, e.Attempt, 2}).after(r.position()) {
			r.syncAttempt()
			return r.loseEarlier() || changed
		}
		r.QueueSeq, r.Delivery, r.Phase, r.Run, r.LogDigest = e.QueueSeq, e.Attempt, 2, e.Run, e.LogDigest
		r.Status, r.Runner, r.ExitCode, r.Error = e.Status, e.Runner, e.ExitCode, e.Error
		r.DurationMs, r.FinishedAt = e.DurationMs, e.FinishedAt
		if !e.StartedAt.IsZero() {
			r.StartedAt = e.StartedAt
		}
		r.Log, r.LogBytes, r.LogTruncated, r.Artifacts = e.Log, e.LogBytes, e.LogTruncated, e.Artifacts
		r.Tests, r.TestSummary, r.Flaky, r.Retries, r.FailedTries = e.Tests, e.TestSummary, e.Flaky, e.Retries, e.FailedTries
		r.Exec, r.Emulation = e.Exec, e.Emulation
		r.syncAttempt()
		r.loseEarlier()
		return true
	}
	return false
}

// loseEarlier marks the attempts still "running" that come before the
// record's current one as lost, saying why: their runner stopped answering
// (killed, frozen, cut off) and the job went on without them. A late result of
// such an attempt still replaces its entry (lost is not final).
func (r *Record) loseEarlier() bool {
	changed := false
	for i := range r.Attempts {
		a := &r.Attempts[i]
		if a.Status != events.StatusRunning || !(position{r.QueueSeq, r.Delivery, 1}).after(position{a.QueueSeq, a.Delivery, 1}) {
			continue
		}
		who := "its runner"
		if a.Runner != "" {
			who = "runner " + a.Runner
		}
		if a.QueueSeq == r.QueueSeq {
			a.Error = who + " stopped answering (killed, frozen or cut off) and the job was handed to another attempt"
		} else {
			a.Error = who + " stopped answering (killed, frozen or cut off) before a later run of the job"
		}
		a.Status, changed = events.StatusLost, true
	}
	return changed
}

// syncAttempt sets Attempt to the number of the current attempt. Numbers move
// when an older attempt's first event arrives late, so this runs after every
// change.
func (r *Record) syncAttempt() {
	r.Attempt = 0
	if r.Phase == 0 || r.Delivery == 0 {
		return
	}
	for i := range r.Attempts {
		if a := &r.Attempts[i]; a.QueueSeq == r.QueueSeq && a.Delivery == r.Delivery && (r.Run == "" || a.Run == r.Run) {
			r.Attempt = a.N
		}
	}
}

// fill sets the identity fields a record may not have yet (events can arrive in any
// order across producers: a fast runner's started event can beat the dispatcher's
// queued event).
func (r *Record) fill(ref events.JobRef, author events.Person, subject string) bool {
	changed := false
	if r.JobID == "" {
		r.JobID, r.Repo, r.Branch, r.Commit, r.Job, r.Arch = ref.JobID, ref.Repo, ref.Branch, ref.Commit, ref.Job, ref.Arch
		r.Module = ref.Module
		changed = true
	}
	if r.Author == (events.Person{}) && author != (events.Person{}) {
		r.Author, changed = author, true
	}
	if r.Subject == "" && subject != "" {
		r.Subject, changed = subject, true
	}
	return changed
}

func refOf(ev any) (events.JobRef, bool) {
	switch e := ev.(type) {
	case *events.JobQueued:
		return e.JobRef, true
	case *events.JobStarted:
		return e.JobRef, true
	case *events.JobFinished:
		return e.JobRef, true
	}
	return events.JobRef{}, false
}

// ErrWait says a runner's event names a delivery that another run, still
// under way on a live runner, claimed first: whether it is a forgery or a
// second run after a power cut is known once that run ends or its runner is
// gone, so the event is to be looked at again later.
var ErrWait = errors.New("a live run holds this delivery: looked at again later")

// Admit checks a runner's started or finished event against the claims in the
// history before it is folded in. at is when the server stored the event (its
// results stream time) and holds(runner, jobID) whether a runner's live lease
// names a job (nil: assume it does).
//
//   - A finished event of a run whose result is already in is a replay
//     (resultSeq, the event's results stream sequence, differs from the one
//     taken; the same sequence is the reporter's own redelivery): refused.
//   - While the first run that reported the same delivery (queue sequence
//     and count) is under way on a live runner: ErrWait.
//   - If that run ended after this event was stored, the claim was made while
//     it ran: refused if it names the same delivery token, disputed (returned:
//     why) if another.
//   - Otherwise — that run ended before, or its runner is gone without ending
//     it (a power cut: the server lost its consumer state and delivers the
//     job again with the same count and token) — a new run is an attempt like
//     any other.
//
// Errors wrap events.ErrForged, or are ErrWait.
func (r *Record) Admit(ev any, resultSeq uint64, at time.Time, holds func(runner, jobID string) bool) (disputed string, err error) {
	var seq, delivery uint64
	var run, token, runner string
	finished := false
	switch e := ev.(type) {
	case *events.JobStarted:
		seq, delivery, run, token, runner = e.QueueSeq, e.Attempt, e.Run, e.Token, e.Runner
	case *events.JobFinished:
		seq, delivery, run, token, runner, finished = e.QueueSeq, e.Attempt, e.Run, e.Token, e.Runner, true
	default:
		return "", nil
	}
	if run == "" || token == "" || delivery == 0 {
		return "", fmt.Errorf("%w: a runner's event without its run and delivery", events.ErrForged)
	}
	for i := range r.Attempts {
		a := &r.Attempts[i]
		if a.QueueSeq != seq || a.Delivery != delivery || a.Run != run {
			continue
		}
		if finished && a.Status.Final() && a.ResultSeq != 0 && a.ResultSeq != resultSeq {
			return "", fmt.Errorf("%w: replay: run %s of attempt %d already reported its result", events.ErrForged, run, a.N)
		}
		return a.Disputed, nil // this run's claim was judged at its first event
	}
	for i := range r.Attempts {
		a := &r.Attempts[i]
		if a.QueueSeq != seq || a.Delivery != delivery || a.Run == "" || a.Disputed != "" {
			continue
		}
		if !a.Status.Final() {
			if holds == nil || holds(a.Runner, r.JobID) {
				return "", ErrWait
			}
			continue // its runner is gone
		}
		if at.IsZero() || !at.Before(a.FinishedAt) {
			continue // claimed after that run ended: a second run
		}
		if a.Token == token {
			return "", fmt.Errorf("%w: delivery %d of run %d was held by runner %s (run %s), not %s (run %s)",
				events.ErrForged, delivery, seq, a.Runner, a.Run, runner, run)
		}
		return fmt.Sprintf("runner %s (run %s) claims delivery %d of run %d while runner %s (run %s) ran it",
			runner, run, delivery, seq, a.Runner, a.Run), nil
	}
	return "", nil
}

// Dispute folds a runner's event of a disputed run (see Admit) into the
// history only, marked with why; the record's current state stays as it is.
func (r *Record) Dispute(ev any, why string) bool {
	c := *r
	c.Attempts = slices.Clone(r.Attempts)
	changed := c.Apply(ev)
	var run string
	var seq, delivery uint64
	switch e := ev.(type) {
	case *events.JobStarted:
		run, seq, delivery = e.Run, e.QueueSeq, e.Attempt
	case *events.JobFinished:
		run, seq, delivery = e.Run, e.QueueSeq, e.Attempt
	}
	r.Attempts, r.Dropped = c.Attempts, c.Dropped
	for i := range r.Attempts {
		if a := &r.Attempts[i]; a.Run == run && a.QueueSeq == seq && a.Delivery == delivery && a.Disputed != why {
			a.Disputed, changed = why, true
		}
	}
	r.syncAttempt()
	return changed
}

// markResult notes the results stream sequence of the finished event taken
// for a run (see Admit).
func (r *Record) markResult(run string, resultSeq uint64) {
	for i := range r.Attempts {
		if a := &r.Attempts[i]; a.Run == run && run != "" && a.Status.Final() && a.ResultSeq == 0 {
			a.ResultSeq = resultSeq
		}
	}
}

// Validate checks a record read from the results bucket under key: its
// identity is complete and is the one of its key, its status and attempts are
// possible.
func (r *Record) Validate(key string) error {
	switch {
	case !events.ValidJobID(r.JobID):
		return fmt.Errorf("no valid job_id")
	case r.Repo == "" || r.Branch == "" || r.Commit == "" || r.Job == "" || r.Arch == "":
		return fmt.Errorf("job %s: repo, branch, commit, job or arch missing", r.JobID)
	case key != events.RecordKey(r.Repo, r.Branch, r.JobID):
		return fmt.Errorf("job %s is stored under another job's key", r.JobID)
	case len(r.Attempts) > MaxAttempts:
		return fmt.Errorf("job %s: %d attempts, more than %d", r.JobID, len(r.Attempts), MaxAttempts)
	}
	switch r.Status {
	case "", events.StatusQueued, events.StatusHeld, events.StatusRunning, events.StatusPassed, events.StatusFailed,
		events.StatusError, events.StatusCancelled, events.StatusLost:
	default:
		return fmt.Errorf("job %s: unknown status %q", r.JobID, r.Status)
	}
	return nil
}

// PendingEvent is a runner's event, signature checked, whose claim waits to
// be judged (Record.Pending).
type PendingEvent struct {
	Seq     uint64    `json:"seq"`
	At      time.Time `json:"at"`
	Subject string    `json:"subject"`
	Signer  string    `json:"signer,omitempty"`
	Data    []byte    `json:"data"`
}

// MaxPending bounds the events a record holds waiting (Record.Pending): a
// claim past it is refused.
const MaxPending = 16
