package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"sort"
	"strings"
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
	key := fmt.Sprintf("%s.%020d", events.BranchKey(ev.Repo, ev.Branch), seq)
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
		if err := publish(ctx, d.js, events.ResultSubject(j.Repo, j.Branch, events.KindQueued), j,
			events.ResultMsgID(j.JobID, 0, 0, "held")); err != nil {
			return false, err
		}
	}
	d.log.Info().Str("repo", ev.Repo).Str("branch", ev.Branch).Str("commit", events.Short(ev.Commit)).Str("state", st.State).
		Int("held", st.Held).Msg("commit held: its branch is not open")
	return true, nil
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
	go d.runTimer(ctx)
	go d.serveRecheck(ctx)
	return events.Consume(ctx, d.js, events.StreamResults, cfg, 64, d.log, func(m jetstream.Msg) {
		fin, err := events.DecodeAs[events.JobFinished](m.Data())
		if err != nil || !d.signed(ctx, m, fin) {
			_ = m.Term()
			return
		}
		if err := d.onResult(ctx, fin); err != nil {
			d.log.Warn().Err(err).Msg("broken-build flow: a result; will retry")
			_ = m.NakWithDelay(time.Second)
			return
		}
		_ = m.Ack()
	})
}

func (d *Dispatcher) onResult(ctx context.Context, fin *events.JobFinished) error {
	if !d.gated(fin.Repo, fin.Branch) || fin.Status == events.StatusCancelled {
		return nil
	}
	opened := false
	_, _, err := d.updateBranch(ctx, fin.Repo, fin.Branch, func(st *events.BranchState) bool {
		opened = false
		switch {
		case st.Check != nil && fin.TriggerID != "" && fin.TriggerID == st.Check.TriggerID:
			if slices.Contains(st.Check.Passed, fin.JobID) || slices.Contains(st.Check.Failed, fin.JobID) {
				return false
			}
			kind := st.Check.Kind
			if failing(fin.Status) {
				st.Check.Failed = append(st.Check.Failed, fin.JobID)
				st.State, st.Check = events.BranchFailed, nil
				st.Reason = fmt.Sprintf("the %s of %s failed (%s on %s): nothing runs until someone re-checks", checkName(kind),
					events.Short(fin.Commit), fin.Job, fin.Arch)
				return true
			}
			st.Check.Passed = append(st.Check.Passed, fin.JobID)
			if st.Check.Jobs > 0 && len(st.Check.Passed) >= st.Check.Jobs {
				st.State, st.Check, st.BrokenBy, st.Author, st.WindowEnds = events.BranchOpen, nil, nil, events.Person{}, time.Time{}
				st.Reason = fmt.Sprintf("the %s of %s passed", checkName(kind), events.Short(fin.Commit))
				opened = true
			}
			return true
		case st.State == events.BranchOpen && events.Kind(fin.Class, fin.Origin) == events.ClassFirst && failing(fin.Status):
			ref := fin.JobRef
			st.State, st.BrokenBy, st.Author = events.BranchBroken, &ref, fin.Author
			st.WindowEnds = d.now().UTC().Add(d.cfg.FixWindow)
			st.Reason = fmt.Sprintf("%s failed on %s at %s: later commits wait; a second check of the head runs at %s",
				fin.QualifiedJob(), fin.Arch, events.Short(fin.Commit), st.WindowEnds.Format(time.RFC3339))
			return true
		}
		return false
	})
	if err != nil {
		return err
	}
	if opened {
		return d.release(ctx, fin.Repo, fin.Branch)
	}
	return nil
}

func checkName(kind string) string {
	if kind == "recheck" {
		return "re-check"
	}
	return "second check"
}

// noteCheckJobs records how many jobs a check's commit made, once the
// dispatcher queued them (a check decides when all of them passed).
func (d *Dispatcher) noteCheckJobs(ctx context.Context, ev *events.CommitDetected, n int) error {
	if ev.TriggerID == "" || !d.gated(ev.Repo, ev.Branch) {
		return nil
	}
	opened := false
	_, _, err := d.updateBranch(ctx, ev.Repo, ev.Branch, func(st *events.BranchState) bool {
		if st.Check == nil || st.Check.TriggerID != ev.TriggerID || st.Check.Jobs == n {
			return false
		}
		st.Check.Jobs, st.Check.Commit = n, ev.Commit
		if n > 0 && len(st.Check.Passed) >= n { // its results came first
			st.State, st.Check, st.BrokenBy, st.WindowEnds = events.BranchOpen, nil, nil, time.Time{}
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
	t := time.NewTicker(d.cfg.GateTick)
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

// release dispatches a branch's held commits, oldest first.
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
		var seq uint64
		if _, err := fmt.Sscan(strings.TrimPrefix(k, prefix), &seq); err != nil {
			_ = d.gate.held.Delete(ctx, k)
			continue
		}
		raw, err := d.gate.commits.GetMsg(ctx, seq)
		if err == nil {
			var ev *events.CommitDetected
			if ev, err = events.DecodeAs[events.CommitDetected](raw.Data); err == nil {
				err = d.dispatch(ctx, ev, seq, d.log.With().Str("repo", repo).Str("branch", branch).Str("commit", events.Short(ev.Commit)).Logger())
			}
		}
		if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) && !errors.Is(err, events.ErrBadMessage) {
			return fmt.Errorf("release commit %d: %w", seq, err)
		}
		if err := d.gate.held.Delete(ctx, k); err != nil {
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
