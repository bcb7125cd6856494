package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/events"
)

// stepOf finds the bisection key and step a bisection run's trigger id names.
func stepOf(repo, branch, triggerID string) (string, int, bool) {
	rest := strings.TrimPrefix(triggerID, events.BisectTriggerPrefix)
	id, n, ok := strings.Cut(rest, "-")
	i, err := strconv.Atoi(n)
	if !ok || err != nil || i < 0 || !events.ValidJobID(id) {
		return "", 0, false
	}
	return events.BisectKey(repo, branch, id), i, true
}

func (d *Dispatcher) stepQueued(ctx context.Context, q *events.JobQueued) error {
	key, i, ok := stepOf(q.Repo, q.Branch, q.TriggerID)
	if !ok {
		return nil
	}
	_, err := d.updateBisection(ctx, key, func(b *events.Bisection) ([]int, bool) {
		if i >= len(b.Steps) || b.Steps[i].TriggerID != q.TriggerID || b.Steps[i].Status != "" {
			return nil, false
		}
		b.Steps[i].Status, b.Steps[i].QueueSeq = events.StatusQueued, q.QueueSeq
		return nil, true
	})
	return err
}

func (d *Dispatcher) stepFinished(ctx context.Context, fin *events.JobFinished) error {
	key, i, ok := stepOf(fin.Repo, fin.Branch, fin.TriggerID)
	if !ok {
		return nil
	}
	_, err := d.updateBisection(ctx, key, func(b *events.Bisection) ([]int, bool) {
		if i >= len(b.Steps) || b.Steps[i].TriggerID != fin.TriggerID || b.Steps[i].Status.Final() || b.Steps[i].Status == events.StatusSkipped {
			return nil, false
		}
		s := &b.Steps[i]
		s.Status, s.QueueSeq, s.Log, s.Error, s.EndedAt = fin.Status, fin.QueueSeq, fin.Log, fin.Error, d.now().UTC()
		if fin.Job != b.Job || fin.Module != b.Module || fin.Arch != b.Arch {
			s.Status = events.StatusSkipped // the commit's pipeline could not give the job
		}
		if s.Status == events.StatusCancelled && !b.Done() {
			b.State, b.Reason, b.EndedAt = events.BisectUnresolved, "the run of "+events.Short(s.Commit)+" was cancelled", d.now().UTC()
			return nil, true
		}
		if s.Kind == events.StepBisect {
			for j := range b.Commits {
				if b.Commits[j].Commit == s.Commit {
					b.Commits[j].Status = s.Status
				}
			}
		}
		return d.advance(b), true
	})
	return err
}

// updateBisection applies change until its compare-and-swap wins, publishes
// the new state and asks for the steps change returned.
func (d *Dispatcher) updateBisection(ctx context.Context, key string, change func(*events.Bisection) ([]int, bool)) (*events.Bisection, error) {
	for {
		e, err := d.bisect.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		b, err := events.DecodeAs[events.Bisection](e.Value())
		if err != nil {
			d.log.Error().Err(err).Str("key", key).Msg("culprit finding: an unreadable bisection is left alone")
			return nil, nil
		}
		asks, changed := change(b)
		if !changed {
			return b, nil
		}
		b.UpdatedAt = d.now().UTC()
		data, err := events.Encode(b)
		if err != nil {
			return nil, err
		}
		rev, err := d.bisect.kv.Update(ctx, key, data, e.Revision())
		if isConflict(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		d.publishBisection(ctx, key, rev, data)
		if b.Done() {
			d.log.Info().Str("repo", b.Repo).Str("branch", b.Branch).Str("job", b.Job).Str("arch", b.Arch).Str("state", b.State).
				Int("runs", b.Runs).Str("reason", b.Reason).Msg("bisection ended")
		}
		d.ask(ctx, b, asks)
		return b, nil
	}
}

// publishBisection announces a bisection's new state; the Msg-Id lets the
// watcher publish it again after a crash without doubling it.
func (d *Dispatcher) publishBisection(ctx context.Context, key string, rev uint64, data []byte) {
	b, err := events.DecodeAs[events.Bisection](data)
	if err != nil {
		return
	}
	if _, err := d.js.Publish(ctx, events.BisectSubject(b.Repo, b.Branch), data,
		jetstream.WithMsgID(fmt.Sprintf("bisect:%s:%d", key, rev))); err != nil {
		d.log.Warn().Err(err).Msg("publish a bisection state")
	}
}

// ask requests the runs of the given steps from the observers. A failure is
// logged; the timer asks again.
func (d *Dispatcher) ask(ctx context.Context, b *events.Bisection, steps []int) {
	for _, i := range steps {
		s := b.Steps[i]
		tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := events.RequestTrigger(tctx, d.js.Conn(), &events.TriggerRequest{Repo: b.Repo, Branch: b.Branch, Commit: s.Commit,
			Job: b.Job, Module: b.Module, Arch: b.Arch, Class: events.ClassBisect, TriggerID: s.TriggerID})
		cancel()
		if err != nil {
			d.log.Warn().Err(err).Str("repo", b.Repo).Str("branch", b.Branch).Str("commit", events.Short(s.Commit)).Msg("bisection run; will ask again")
			continue
		}
		d.log.Info().Str("repo", b.Repo).Str("branch", b.Branch).Str("job", b.Job).Str("arch", b.Arch).Str("commit", events.Short(s.Commit)).
			Str("kind", s.Kind).Msg("bisection run asked for")
	}
}

// watchBisections keeps the set of bisections under way, and publishes the
// latest state of recently changed ones again on start (deduplicated by
// Msg-Id), in case a dispatcher died between a write and its publish.
func (d *Dispatcher) watchBisections(ctx context.Context) {
	for ctx.Err() == nil {
		w, err := d.bisect.kv.Watch(ctx, "b.>")
		if err != nil {
			d.log.Warn().Err(err).Msg("culprit finding: watch bisections")
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		for e := range w.Updates() {
			if e == nil {
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				d.bisect.mu.Lock()
				delete(d.bisect.active, e.Key())
				d.bisect.mu.Unlock()
				continue
			}
			b, err := events.DecodeAs[events.Bisection](e.Value())
			if err != nil {
				continue
			}
			d.bisect.mu.Lock()
			if b.Done() {
				delete(d.bisect.active, e.Key())
			} else {
				d.bisect.active[e.Key()] = true
			}
			d.bisect.mu.Unlock()
			if d.now().Sub(b.UpdatedAt) < DedupWindowGuard {
				d.publishBisection(ctx, e.Key(), e.Revision(), e.Value())
			}
		}
		_ = w.Stop()
	}
}

// DedupWindowGuard is how recent a bisection's change must be for the watcher
// to publish it again: inside the streams' dedup window, so it is not doubled.
const DedupWindowGuard = events.DedupWindow / 2

// bisectTimer decides pending failures and asks again for steps nobody queued.
func (d *Dispatcher) bisectTimer(ctx context.Context) {
	t := time.NewTicker(d.cfg.BisectTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if lister, err := d.bisect.kv.ListKeysFiltered(ctx, "p.>"); err == nil {
			for key := range lister.Keys() {
				e, err := d.bisect.kv.Get(ctx, key)
				if err != nil {
					continue
				}
				var p pending
				if json.Unmarshal(e.Value(), &p) != nil {
					_ = d.bisect.kv.Delete(ctx, key)
					continue
				}
				if err := d.decide(ctx, key, &p); err != nil {
					d.log.Warn().Err(err).Msg("culprit finding: decide a failure; will retry")
				}
			}
		}
		d.bisect.mu.Lock()
		keys := make([]string, 0, len(d.bisect.active))
		for k := range d.bisect.active {
			keys = append(keys, k)
		}
		d.bisect.mu.Unlock()
		for _, key := range keys {
			if _, err := d.updateBisection(ctx, key, func(b *events.Bisection) ([]int, bool) {
				var asks []int
				for i := range b.Steps {
					if s := &b.Steps[i]; s.Status == "" && d.now().Sub(s.AskedAt) >= bisectReask {
						s.AskedAt = d.now().UTC()
						asks = append(asks, i)
					}
				}
				if len(asks) == 0 {
					if more := d.advance(b); len(more) > 0 || b.Done() {
						return more, true // a crash between a result and the next step
					}
				}
				return asks, len(asks) > 0
			}); err != nil {
				d.log.Warn().Err(err).Msg("culprit finding: ask again; will retry")
			}
		}
	}
}
