package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/jetci/jetci/events"
)

// GateRule puts the branches of a repo ("*": every repo) that match a
// path.Match pattern ("": every branch) under the broken-build flow.
type GateRule struct {
	Repo, Branch string
}

// ParseGateRule parses REPO[:BRANCH_PATTERN].
func ParseGateRule(s string) (GateRule, error) {
	repo, branch, _ := strings.Cut(s, ":")
	if repo == "" {
		return GateRule{}, fmt.Errorf("%q: want REPO[:BRANCH_PATTERN] (REPO * for every repo)", s)
	}
	if _, err := path.Match(branch, ""); err != nil {
		return GateRule{}, fmt.Errorf("%q: branch pattern: %w", s, err)
	}
	return GateRule{Repo: repo, Branch: branch}, nil
}

func (d *Dispatcher) gated(repo, branch string) bool {
	for _, r := range d.cfg.Gate {
		if r.Repo != "*" && r.Repo != repo {
			continue
		}
		if r.Branch == "" {
			return true
		}
		if ok, _ := path.Match(r.Branch, branch); ok {
			return true
		}
	}
	return false
}

func failing(s events.Status) bool { return s == events.StatusFailed || s == events.StatusError }

// gate is the broken-build flow's state, in JetStream: every change is a
// compare-and-swap on the branch's entry, so any number of dispatchers agree.
type gate struct {
	branches jetstream.KeyValue
	held     jetstream.KeyValue
	commits  jetstream.Stream
}

func (d *Dispatcher) openGate(ctx context.Context) error {
	if d.gate != nil || len(d.cfg.Gate) == 0 {
		return nil
	}
	g := &gate{}
	var err error
	if g.branches, err = d.js.KeyValue(ctx, events.BucketBranches); err != nil {
		return fmt.Errorf("open %s: %w", events.BucketBranches, err)
	}
	if g.held, err = d.js.KeyValue(ctx, events.BucketHeld); err != nil {
		return fmt.Errorf("open %s: %w", events.BucketHeld, err)
	}
	if g.commits, err = d.js.Stream(ctx, events.StreamCommits); err != nil {
		return fmt.Errorf("open %s: %w", events.StreamCommits, err)
	}
	d.gate = g
	return nil
}

// branchState reads a branch's state; a branch never seen is open.
func (d *Dispatcher) branchState(ctx context.Context, repo, branch string) (*events.BranchState, uint64, error) {
	st := &events.BranchState{Repo: repo, Branch: branch, State: events.BranchOpen}
	e, err := d.gate.branches.Get(ctx, events.BranchKey(repo, branch))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return st, 0, nil
	case err != nil:
		return nil, 0, err
	}
	if err := json.Unmarshal(e.Value(), st); err != nil {
		return nil, 0, fmt.Errorf("branch state %s %s: %w", repo, branch, err)
	}
	return st, e.Revision(), nil
}

// updateBranch applies change to a branch's state until its compare-and-swap
// wins. change returns false to leave the state alone. Every change is
// published on the branch's subject.
func (d *Dispatcher) updateBranch(ctx context.Context, repo, branch string, change func(*events.BranchState) bool) (*events.BranchState, bool, error) {
	for {
		st, rev, err := d.branchState(ctx, repo, branch)
		if err != nil {
			return nil, false, err
		}
		before := st.State
		if !change(st) {
			return st, false, nil
		}
		if st.State != before {
			st.Since = d.now().UTC()
		}
		data, err := events.Encode(st)
		if err != nil {
			return nil, false, err
		}
		key := events.BranchKey(repo, branch)
		if rev == 0 {
			_, err = d.gate.branches.Create(ctx, key, data)
		} else {
			_, err = d.gate.branches.Update(ctx, key, data, rev)
		}
		if err != nil {
			if isConflict(err) {
				continue
			}
			return nil, false, fmt.Errorf("branch state %s %s: %w", repo, branch, err)
		}
		if _, err := d.js.Publish(ctx, events.BranchSubject(repo, branch), data); err != nil {
			d.log.Warn().Err(err).Msg("publish a branch state")
		}
		if st.State != before {
			d.log.Info().Str("repo", repo).Str("branch", branch).Str("from", before).Str("to", st.State).Str("reason", st.Reason).
				Int("held", st.Held).Msg("branch state")
		}
		return st, true, nil
	}
}

func isConflict(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
		return true
	}
	return errors.Is(err, jetstream.ErrKeyExists)
}

// hold keeps a first check of a commit on a branch that is not open: the
// commit waits in jetci-held and its jobs show as held. It reports whether the
// commit was held (false: dispatch it now).
func (d *Dispatcher) hold(ctx context.Context, ev *events.CommitDetected, seq uint64) (bool, error) {
	if ev.Class != events.ClassFirst || !d.gated(ev.Repo, ev.Branch) {
		return false, nil
	}
	st, _, err := d.branchState(ctx, ev.Repo, ev.Branch)
	if err != nil {
		return false, err
	}
	if st.State == events.BranchOpen {
		return false, nil
	}
	key := heldKey(ev.Repo, ev.Branch, seq)
	_, err = d.gate.held.Create(ctx, key, []byte(fmt.Sprint(seq)))
	again := isConflict(err) // a redelivered commit: held and counted already
	if err != nil && !again {
		return false, fmt.Errorf("hold commit: %w", err)
	}
	st, _, err = d.updateBranch(ctx, ev.Repo, ev.Branch, func(st *events.BranchState) bool {
		if st.State == events.BranchOpen || again {
			return false
		}
		st.Held++
		newHead(st, ev.Commit, seq)
		return true
	})
	if err != nil {
		return false, err
	}
	if st.State == events.BranchOpen {
		// It opened meanwhile: dispatch now.
		_ = d.gate.held.Delete(ctx, key)
		return false, nil
	}
	jobs, _ := d.Expand(ev)
	for _, j := range jobs {
		j.Held = true
		j.CommitSeq = seq
		if err := publish(ctx, d.js, events.ResultSubject(j.Repo, j.Branch, events.KindQueued), j,
			events.ResultMsgID(j.JobID, 0, 0, "held")); err != nil {
			return false, err
		}
	}
	d.log.Info().Str("repo", ev.Repo).Str("branch", ev.Branch).Str("commit", events.Short(ev.Commit)).Str("state", st.State).
		Int("held", st.Held).Msg("commit held: its branch is not open")
	return true, nil
}

// heldKey is a held commit's key in jetci-held: the branch, then the commit's
// sequence in JETCI_COMMITS, zero-padded (decimal) so that keys sort oldest
// first.
func heldKey(repo, branch string, seq uint64) string {
	return fmt.Sprintf("%s.%020d", events.BranchKey(repo, branch), seq)
}

// heldSeq reads the commit sequence at the end of a held key. It is decimal:
// the zero padding is not an octal prefix.
func heldSeq(key, prefix string) (uint64, error) {
	rest, ok := strings.CutPrefix(key, prefix)
	if !ok || rest == "" || strings.Contains(rest, ".") {
		return 0, fmt.Errorf("held key %q: not %s<sequence>", key, prefix)
	}
	seq, err := strconv.ParseUint(rest, 10, 64)
	if err != nil || seq == 0 {
		return 0, fmt.Errorf("held key %q: sequence %q: want a decimal number above 0", key, rest)
	}
	return seq, nil
}

// newHead moves a branch's head forward to commit, if seq is newer.
func newHead(st *events.BranchState, commit string, seq uint64) {
	if seq == 0 || seq >= st.HeadSeq {
		st.Head, st.HeadSeq = commit, max(seq, st.HeadSeq)
	}
}

// RunGate follows finished jobs of gated branches: a failed first check
// breaks the branch, and the jobs of a second check or re-check decide
// whether it opens again.
func (d *Dispatcher) RunGate(ctx context.Context) error {
	if len(d.cfg.Gate) == 0 {
		return nil
	}
	cfg := jetstream.ConsumerConfig{
		Durable:       events.ConsumerGate,
		Description:   "broken-build flow: finished jobs of gated branches",
		FilterSubject: events.SubjectResults + ".*.*." + events.KindFinished,
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverNewPolicy,
		AckWait:       30 * time.Second,
	}
	// Its helpers end with it, and it waits for them (a restart must not
	// run a second timer beside the first).
	ctx, stop := context.WithCancel(ctx)
	var helpers sync.WaitGroup
	defer func() { stop(); helpers.Wait() }()
	helpers.Go(func() { d.runTimer(ctx) })
	helpers.Go(func() { d.serveRecheck(ctx) })
	return events.Consume(ctx, d.js, events.StreamResults, cfg, 64, d.log, func(m jetstream.Msg) {
		fin, err := events.DecodeAs[events.JobFinished](m.Data())
		if err != nil || !d.signed(ctx, m, fin) {
			_ = m.Term()
			return
		}
		var seq uint64 // the result's place in JETCI_RESULTS: what started after it started after the break
		if meta, _ := m.Metadata(); meta != nil {
			seq = meta.Sequence.Stream
		}
		if err := d.onResult(ctx, fin, seq); err != nil {
			d.log.Warn().Err(err).Msg("broken-build flow: a result; will retry")
			_ = m.NakWithDelay(time.Second)
			return
		}
		_ = m.Ack()
	})
}

// openBranch moves a branch whose check passed to open, and notes the fix: the
// held commits are released next (release).
func openBranch(st *events.BranchState, now time.Time) {
	c := st.Check
	fix := events.BranchFix{FixedBy: c.Commit, Kind: c.Kind, Before: c.CommitSeq, Released: st.Held, At: now}
	if st.BrokenBy != nil {
		fix.BrokenBy, fix.Author = st.BrokenBy.Commit, st.Author
	}
	if fix.BrokenBy != "" {
		st.Fixes = append(st.Fixes, fix)
		if len(st.Fixes) > events.MaxBranchFixes {
			st.Fixes = slices.Clone(st.Fixes[len(st.Fixes)-events.MaxBranchFixes:])
		}
	}
	st.Reason = fmt.Sprintf("the %s of %s passed", checkName(c.Kind), events.Short(c.Commit))
	if fix.BrokenBy != "" {
		st.Reason = fmt.Sprintf("broken by %s, fixed by %s: the %s passed; %d held commit(s) released", events.Short(fix.BrokenBy),
			events.Short(fix.FixedBy), checkName(c.Kind), st.Held)
	}
	st.State, st.Check, st.BrokenBy, st.Author, st.WindowEnds = events.BranchOpen, nil, nil, events.Person{}, time.Time{}
	st.Head, st.HeadSeq, st.FailedCheck = "", 0, ""
}

func (d *Dispatcher) onResult(ctx context.Context, fin *events.JobFinished, resultSeq uint64) error {
	if !d.gated(fin.Repo, fin.Branch) {
		return nil
	}
	if fin.Status == events.StatusCancelled {
		if strings.HasPrefix(fin.Error, "cancelled by "+pausedBy) {
			// A job the flow stopped at the break: it shows as paused.
			// (Its pool is not in the result; the record has it already.)
			j := &events.JobQueued{JobRef: fin.JobRef, Pool: d.cfg.Pool, Class: fin.Class, Origin: fin.Origin, TriggerID: fin.TriggerID,
				Author: fin.Author, Subject: fin.Subject, QueueSeq: fin.QueueSeq, Held: true}
			return publish(ctx, d.js, events.ResultSubject(j.Repo, j.Branch, events.KindQueued), j,
				events.ResultMsgID(j.JobID, j.QueueSeq, 0, "paused"))
		}
		if fin.TriggerID != "" {
			// A check cancelled by someone decides nothing: drop it, so
			// that the next second check or re-check can run.
			_, _, err := d.updateBranch(ctx, fin.Repo, fin.Branch, func(st *events.BranchState) bool {
				if st.Check == nil || st.Check.TriggerID != fin.TriggerID {
					return false
				}
				st.Check = nil
				return true
			})
			return err
		}
		return nil
	}
	opened, broke := false, false
	_, _, err := d.updateBranch(ctx, fin.Repo, fin.Branch, func(st *events.BranchState) bool {
		opened, broke = false, false
		switch {
		case st.Check != nil && fin.TriggerID != "" && fin.TriggerID == st.Check.TriggerID:
			if slices.Contains(st.Check.Passed, fin.JobID) || slices.Contains(st.Check.Failed, fin.JobID) {
				return false
			}
			kind := st.Check.Kind
			if failing(fin.Status) {
				st.Check.Failed = append(st.Check.Failed, fin.JobID)
				if kind == "trigger" && st.State == events.BranchBroken {
					// A user's run of the head failed inside the fix window:
					// the second check still comes when the window ends.
					st.Check = nil
					return true
				}
				st.State, st.Check, st.FailedCheck = events.BranchFailed, nil, fin.Commit
				st.Reason = fmt.Sprintf("the %s of %s failed (%s on %s): nothing runs until someone re-checks", checkName(kind),
					events.Short(fin.Commit), fin.QualifiedJob(), fin.Arch)
				return true
			}
			st.Check.Passed = append(st.Check.Passed, fin.JobID)
			if st.Check.Commit == "" {
				st.Check.Commit = fin.Commit
			}
			if st.Check.Jobs > 0 && len(st.Check.Passed) >= st.Check.Jobs {
				openBranch(st, d.now().UTC())
				opened = true
			}
			return true
		case st.State == events.BranchOpen && events.Kind(fin.Class, fin.Origin) == events.ClassFirst && failing(fin.Status):
			if st.CoveredBy(fin.Commit) != nil {
				// A released commit older than the one whose check opened
				// the branch: it fails with the break that check saw fixed.
				return false
			}
			ref := fin.JobRef
			st.State, st.BrokenBy, st.Author = events.BranchBroken, &ref, fin.Author
			st.WindowEnds = d.now().UTC().Add(d.cfg.FixWindow)
			st.Head, st.HeadSeq, st.FailedCheck = fin.Commit, 0, ""
			st.Reason = fmt.Sprintf("%s failed on %s at %s: later commits wait; a second check of the head runs at %s",
				fin.QualifiedJob(), fin.Arch, events.Short(fin.Commit), st.WindowEnds.Format(time.RFC3339))
			broke = true
			return true
		}
		return false
	})
	if err != nil {
		return err
	}
	if broke {
		if err := d.withdraw(ctx, fin, resultSeq); err != nil {
			return err
		}
	}
	if opened {
		return d.release(ctx, fin.Repo, fin.Branch)
	}
	return nil
}

// pausedBy names the broken-build flow in the cancel requests it makes.
const pausedBy = "the broken-build flow"

// withdraw holds the later commits of a branch that just broke whose first
// checks had not started when it broke: the seed pauses every later change,
// not only those that arrive after the break. A job still waiting in the
// queue is taken out of it; one a runner started after the breaking result
// was published (with one runner slot, the next job starts at once) is
// cancelled. Each such commit is held (as if it had come now) before its
// jobs are touched, so that a crash in between runs a job twice at worst,
// never loses one. A job that was running before the break runs on.
func (d *Dispatcher) withdraw(ctx context.Context, fin *events.JobFinished, resultSeq uint64) error {
	stream, err := d.js.Stream(ctx, events.StreamJobs)
	if err != nil {
		return err
	}
	later := func(job *events.JobQueued, seq uint64) bool {
		return seq > fin.QueueSeq && job.Commit != fin.Commit && job.Repo == fin.Repo && job.Branch == fin.Branch &&
			job.CommitSeq != 0 && events.Kind(job.Class, job.Origin) == events.ClassFirst
	}
	type paused struct {
		seq     uint64
		job     *events.JobQueued
		running bool
	}
	var found []paused
	for _, p := range d.partitions(ctx, stream) {
		pool, arch, _ := strings.Cut(p, "/")
		for _, class := range []events.Class{events.ClassFirst, events.ClassUser} { // a first check may have aged to user
			info, err := d.jobConsumerInfo(ctx, pool, arch, class)
			if err != nil {
				return err
			}
			if info == nil {
				continue
			}
			// Above the consumer's delivered sequence: no runner has it.
			subject := events.JobSubject(pool, arch, class, fin.Repo, fin.Branch)
			for seq := max(fin.QueueSeq, info.Delivered.Stream) + 1; ; {
				raw, err := stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
				if errors.Is(err, jetstream.ErrMsgNotFound) {
					break
				}
				if err != nil {
					return err
				}
				seq = raw.Sequence + 1
				if job, err := events.DecodeAs[events.JobQueued](raw.Data); err == nil && later(job, raw.Sequence) {
					found = append(found, paused{seq: raw.Sequence, job: job})
				}
			}
		}
	}
	if resultSeq > 0 {
		// Started after the breaking result was published.
		results, err := d.js.Stream(ctx, events.StreamResults)
		if err != nil {
			return err
		}
		subject := events.ResultSubject(fin.Repo, fin.Branch, events.KindStarted)
		for seq := resultSeq + 1; ; {
			raw, err := results.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				break
			}
			if err != nil {
				return err
			}
			seq = raw.Sequence + 1
			st, err := events.DecodeAs[events.JobStarted](raw.Data)
			if err != nil || st.QueueSeq <= fin.QueueSeq {
				continue
			}
			jm, err := stream.GetMsg(ctx, st.QueueSeq)
			if err != nil {
				continue // acked: it finished already
			}
			if job, err := events.DecodeAs[events.JobQueued](jm.Data); err == nil && later(job, st.QueueSeq) {
				found = append(found, paused{seq: st.QueueSeq, job: job, running: true})
			}
		}
	}
	if len(found) == 0 {
		return nil
	}
	// A job seen waiting and then started (the consumer's delivered
	// sequence was read before its delivery) is cancelled, not deleted.
	running := map[uint64]bool{}
	for _, w := range found {
		running[w.seq] = running[w.seq] || w.running
	}
	found = slices.DeleteFunc(found, func(w paused) bool { return running[w.seq] && !w.running })
	// Hold each commit once.
	held := map[uint64]bool{}
	for _, w := range found {
		if held[w.job.CommitSeq] {
			continue
		}
		held[w.job.CommitSeq] = true
		_, err := d.gate.held.Create(ctx, heldKey(fin.Repo, fin.Branch, w.job.CommitSeq), []byte(fmt.Sprint(w.job.CommitSeq)))
		if isConflict(err) {
			continue // held already (a redelivered result)
		}
		if err != nil {
			return fmt.Errorf("hold a waiting commit: %w", err)
		}
		commit, seq := w.job.Commit, w.job.CommitSeq
		if _, _, err := d.updateBranch(ctx, fin.Repo, fin.Branch, func(st *events.BranchState) bool {
			st.Held++
			newHead(st, commit, seq)
			return true
		}); err != nil {
			return err
		}
	}
	cancels, err := d.js.KeyValue(ctx, events.BucketCancel)
	if err != nil {
		return err
	}
	n := 0
	for _, w := range found {
		j := *w.job
		if w.running {
			req := &events.CancelRequest{JobID: j.JobID, QueueSeq: w.seq, At: d.now().UTC(),
				By: fmt.Sprintf("%s: %s broke at %s", pausedBy, fin.Branch, events.Short(fin.Commit))}
			data, err := events.Encode(req)
			if err != nil {
				return err
			}
			if _, err := cancels.Put(ctx, j.JobID, data); err != nil {
				return fmt.Errorf("pause a started job: %w", err)
			}
			if err := d.js.Conn().Publish(events.CancelSubject(j.JobID), data); err != nil {
				return fmt.Errorf("pause a started job: %w", err)
			}
			n++
			continue
		}
		if err := stream.DeleteMsg(ctx, w.seq); err != nil {
			if events.MsgGone(err) {
				continue // taken meanwhile: it runs
			}
			return err
		}
		j.QueueSeq, j.Held = w.seq, true
		if err := publish(ctx, d.js, events.ResultSubject(j.Repo, j.Branch, events.KindQueued), &j,
			events.ResultMsgID(j.JobID, w.seq, 0, "withdrawn")); err != nil {
			return fmt.Errorf("record a paused job: %w", err)
		}
		n++
	}
	d.log.Info().Str("repo", fin.Repo).Str("branch", fin.Branch).Str("broken_by", events.Short(fin.Commit)).Int("commits", len(held)).
		Int("jobs", n).Msg("jobs of later commits paused")
	return nil
}

func checkName(kind string) string {
	switch kind {
	case "recheck":
		return "re-check"
	case "trigger":
		return "triggered run of the head"
	}
	return "second check"
}

// noteCheckJobs records how many jobs a check's commit makes, before the
// dispatcher queues them (a check decides when all of them passed). A
// user's full run of the head of a broken or failed branch (`jetci trigger`)
// becomes its check: if it passes, the branch opens as after a re-check.
func (d *Dispatcher) noteCheckJobs(ctx context.Context, ev *events.CommitDetected, seq uint64, n int) error {
	if ev.TriggerID == "" || !d.gated(ev.Repo, ev.Branch) {
		return nil
	}
	opened := false
	_, _, err := d.updateBranch(ctx, ev.Repo, ev.Branch, func(st *events.BranchState) bool {
		if st.Check == nil && st.State != events.BranchOpen && ev.Class == events.ClassUser && ev.Commit == st.Head &&
			ev.OnlyJob == "" && ev.OnlyArch == "" && ev.OnlyModule == "" && n > 0 {
			st.Check = &events.BranchCheck{Kind: "trigger", TriggerID: ev.TriggerID, StartedAt: d.now().UTC()}
		}
		if st.Check == nil || st.Check.TriggerID != ev.TriggerID || st.Check.Jobs == n && st.Check.Commit == ev.Commit {
			return false
		}
		st.Check.Jobs, st.Check.Commit, st.Check.CommitSeq = n, ev.Commit, seq
		if st.State != events.BranchOpen {
			newHead(st, ev.Commit, seq)
		}
		if n > 0 && len(st.Check.Passed) >= n { // its results came first
			openBranch(st, d.now().UTC())
			opened = true
		}
		return true
	})
	if err == nil && opened {
		err = d.release(ctx, ev.Repo, ev.Branch)
	}
	return err
}

// startCheck runs a branch's head as a second check (class second) or a
// re-check (class user). The run is named before the observer is asked, so
// its results are recognised however fast they come.
func (d *Dispatcher) startCheck(ctx context.Context, repo, branch, kind string) (*events.TriggerReply, error) {
	id := nuid.Next()
	class := events.ClassSecond
	if kind == "recheck" {
		class = events.ClassUser
	}
	_, changed, err := d.updateBranch(ctx, repo, branch, func(st *events.BranchState) bool {
		if kind == "second" && (st.State != events.BranchBroken || st.Check != nil) {
			return false // another dispatcher started it, or the branch moved on
		}
		st.Check = &events.BranchCheck{Kind: kind, TriggerID: id, StartedAt: d.now().UTC()}
		return true
	})
	if err != nil || !changed {
		return nil, err
	}
	tctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	reply, err := events.RequestTrigger(tctx, d.js.Conn(), &events.TriggerRequest{Repo: repo, Branch: branch, Class: class, TriggerID: id})
	if err != nil {
		// Undo the claim, so that the next look tries again.
		_, _, _ = d.updateBranch(context.WithoutCancel(ctx), repo, branch, func(st *events.BranchState) bool {
			if st.Check == nil || st.Check.TriggerID != id {
				return false
			}
			st.Check = nil
			return true
		})
		return nil, fmt.Errorf("%s of %s %s: %w", checkName(kind), repo, branch, err)
	}
	d.log.Info().Str("repo", repo).Str("branch", branch).Str("commit", events.Short(reply.Commit)).Str("kind", kind).Msg("branch check started")
	return reply, nil
}

// runTimer starts second checks when fix windows end, and releases held
// commits of open branches (after a crash mid-release, say).
func (d *Dispatcher) runTimer(ctx context.Context) {
	t := time.NewTicker(d.cfg.gateTick())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		keys, err := d.gate.branches.ListKeys(ctx)
		if err != nil {
			continue
		}
		for key := range keys.Keys() {
			e, err := d.gate.branches.Get(ctx, key)
			if err != nil {
				continue
			}
			var st events.BranchState
			if json.Unmarshal(e.Value(), &st) != nil {
				continue
			}
			switch {
			case st.State == events.BranchBroken && st.Check == nil && !d.now().Before(st.WindowEnds):
				if _, err := d.startCheck(ctx, st.Repo, st.Branch, "second"); err != nil {
					d.log.Warn().Err(err).Msg("second check; will retry")
				}
			case st.State == events.BranchOpen && st.Held > 0:
				if err := d.release(ctx, st.Repo, st.Branch); err != nil {
					d.log.Warn().Err(err).Msg("release held commits; will retry")
				}
			}
		}
	}
}

// release dispatches a branch's held commits, oldest first. A commit older
// than the one whose check opened the branch (and so reached by it) is noted
// in that fix's Covered list before it is dispatched: if it fails, it fails
// with the break, and neither breaks the branch again nor is blamed.
func (d *Dispatcher) release(ctx context.Context, repo, branch string) error {
	prefix := events.BranchKey(repo, branch) + "."
	lister, err := d.gate.held.ListKeysFiltered(ctx, prefix+"*")
	if err != nil {
		return err
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	sort.Strings(keys) // the commit sequence is zero-padded
	for _, k := range keys {
		seq, err := heldSeq(k, prefix)
		if err != nil {
			d.log.Warn().Err(err).Msg("dropping a bad held key")
			_ = d.gate.held.Delete(ctx, k)
			continue
		}
		entry, err := d.gate.held.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // released by another dispatcher meanwhile
		}
		if err != nil {
			return err
		}
		raw, err := d.gate.commits.GetMsg(ctx, seq)
		if err == nil {
			var ev *events.CommitDetected
			if ev, err = events.DecodeAs[events.CommitDetected](raw.Data); err == nil {
				if ev.Repo != repo || ev.Branch != branch {
					err = fmt.Errorf("held key %s names commit %d of %s %s: %w", k, seq, ev.Repo, ev.Branch, events.ErrBadMessage)
				}
			}
			if err == nil {
				err = d.cover(ctx, ev, seq)
			}
			if err == nil {
				log := d.log.With().Str("repo", repo).Str("branch", branch).Str("commit", events.Short(ev.Commit)).Logger()
				err = d.dispatch(ctx, ev, seq, fmt.Sprintf(":h%d", entry.Revision()), log)
			}
		}
		if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) && !errors.Is(err, events.ErrBadMessage) {
			return fmt.Errorf("release commit %d: %w", seq, err)
		}
		if err != nil {
			d.log.Warn().Err(err).Str("key", k).Msg("a held commit cannot be released")
		}
		if err := d.gate.held.Delete(ctx, k, jetstream.LastRevision(entry.Revision())); err != nil {
			if isConflict(err) || errors.Is(err, jetstream.ErrKeyNotFound) {
				continue // another dispatcher released it
			}
			return err
		}
		_, _, _ = d.updateBranch(ctx, repo, branch, func(st *events.BranchState) bool {
			if st.Held == 0 {
				return false
			}
			st.Held--
			return true
		})
	}
	if len(keys) > 0 {
		d.log.Info().Str("repo", repo).Str("branch", branch).Int("commits", len(keys)).Msg("held commits released")
	}
	return nil
}

// cover notes a released commit older than the last fix's commit in that
// fix, before it is dispatched.
func (d *Dispatcher) cover(ctx context.Context, ev *events.CommitDetected, seq uint64) error {
	_, _, err := d.updateBranch(ctx, ev.Repo, ev.Branch, func(st *events.BranchState) bool {
		if st.State != events.BranchOpen || len(st.Fixes) == 0 {
			return false
		}
		f := &st.Fixes[len(st.Fixes)-1]
		if seq >= f.Before || ev.Commit == f.FixedBy || ev.Commit == f.BrokenBy || slices.Contains(f.Covered, ev.Commit) ||
			len(f.Covered) >= events.MaxCoveredCommits {
			return false
		}
		f.Covered = append(f.Covered, ev.Commit)
		return true
	})
	return err
}

// serveRecheck answers `jetci recheck` and the web UI's branch re-check.
func (d *Dispatcher) serveRecheck(ctx context.Context) {
	sub, err := d.js.Conn().QueueSubscribe(events.SubjectRecheck+".*", "dispatchers", func(m *nats.Msg) {
		reply := &events.TriggerReply{}
		req, err := events.DecodeAs[events.RecheckRequest](m.Data)
		if err == nil {
			var r *events.TriggerReply
			if r, err = d.startCheck(ctx, req.Repo, req.Branch, "recheck"); err == nil && r != nil {
				reply = r
			}
		}
		if err != nil {
			reply.Error = err.Error()
		}
		data, _ := events.Encode(reply)
		_ = m.Respond(data)
	})
	if err != nil {
		d.log.Error().Err(err).Msg("re-check requests: subscribe")
		return
	}
	<-ctx.Done()
	_ = sub.Unsubscribe()
}
