package reporter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/forge"
)

// The combined context (a forge entry's combined: NAME) is one more commit
// status per commit: the worst state of all its jobs' contexts. Its state is
// kept in jetci-sent under m.<hash of repo, commit and name>: the latest
// state of each job context, and the combined state with the number of
// times it changed (Version). A job status changes that record first
// (compare-and-set, so reporters and the pending and result consumers may
// race), and only a change of the combined state puts a status in the
// outbox, with the version in its id: each state change goes out once, as
// a job's statuses do (the outbox's sent claims). A job status that comes
// again (a redelivery after a crash between the record and the outbox) puts
// the current version in the outbox again, which its id makes a no-op if it
// was there.
type combinedState struct {
	Jobs    map[string]jobState `json:"jobs"` // by job context
	State   string              `json:"state,omitempty"`
	Desc    string              `json:"desc,omitempty"`
	Version uint64              `json:"version"`
}

type jobState struct {
	State string `json:"s"`
	Order uint64 `json:"o"` // StatusDelivery.Order: a newer run of the job is higher
}

// combinedRank orders jetci's states from best to worst: a failure shows at
// once, while other jobs still run; a cancelled job only once none is
// pending.
var combinedRank = map[string]int{forge.Success: 0, forge.Cancelled: 1, forge.Pending: 2, forge.Error: 3, forge.Failure: 4}

// decide sums the job contexts up: the worst state, and a description (as
// of the change: a description alone changing posts nothing).
func (c *combinedState) decide() (state, desc string) {
	n := map[string]int{}
	state = forge.Success
	for _, j := range c.Jobs {
		n[j.State]++
		if combinedRank[j.State] > combinedRank[state] {
			state = j.State
		}
	}
	jobs := plural(len(c.Jobs), "job")
	switch state {
	case forge.Success:
		return state, jobs + " passed"
	case forge.Failure, forge.Error:
		desc = fmt.Sprintf("%d of %s failed", n[forge.Failure]+n[forge.Error], jobs)
		if p := n[forge.Pending]; p > 0 {
			desc += fmt.Sprintf(", %d still to run", p)
		}
	case forge.Pending:
		// The first job queued makes it pending, before the others are
		// known: no count then.
		desc = "waiting or running"
		if p := n[forge.Pending]; p < len(c.Jobs) {
			desc = fmt.Sprintf("%d of %s waiting or running", p, jobs)
		}
	case forge.Cancelled:
		desc = fmt.Sprintf("%d of %s cancelled", n[forge.Cancelled], jobs)
	}
	return state, desc
}

func combinedKey(repo, sha, name string) string {
	return "m." + shortHash(repo+"\x00"+sha+"\x00"+name)
}

// combine folds a job's status into its commit's combined context, when the
// repo's forge entry asks for one, and puts a changed combined state in the
// outbox.
func (n *Notifier) combine(ctx context.Context, d *StatusDelivery, branch string) error {
	note, err := n.decideCombined(ctx, d, branch)
	if err != nil || note == nil {
		return err
	}
	return n.enqueue(ctx, note)
}

// decideCombined records a job's status in its commit's combined state and
// returns the combined status to put in the outbox: one whose state changed
// now, or the current one again when this job status was recorded already
// (it comes again: its first handling may have stopped before the outbox).
func (n *Notifier) decideCombined(ctx context.Context, d *StatusDelivery, branch string) (*Notification, error) {
	f := n.forgeOf(d.Repo)
	if f == nil || f.Combined == "" || d.Context == f.Combined {
		return nil, nil
	}
	key := combinedKey(d.Repo, d.SHA, f.Combined)
	for range 20 {
		st := combinedState{}
		var rev uint64
		e, err := n.sent.Get(ctx, key)
		switch {
		case err == nil:
			rev = e.Revision()
			if json.Unmarshal(e.Value(), &st) != nil {
				st = combinedState{} // unreadable: start over rather than stop
			}
		case errors.Is(err, jetstream.ErrKeyNotFound):
			// Versions go on from what was posted (a record that
			// expired before its context's posted rank).
			if pe, err := n.sent.Get(ctx, orderKey(&StatusDelivery{Repo: d.Repo, Status: forge.Status{SHA: d.SHA, Context: f.Combined}})); err == nil {
				st.Version, _ = strconv.ParseUint(string(pe.Value()), 10, 64)
			}
		default:
			return nil, fmt.Errorf("combined status %s: %w", key, err)
		}
		if st.Jobs == nil {
			st.Jobs = map[string]jobState{}
		}
		was, had := st.Jobs[d.Context]
		again := had && was == jobState{d.State, d.Order}
		if had && was.Order > d.Order || again {
			// An older state of the job, or this one again: nothing moves.
			if again && st.State != "" {
				return n.combinedNote(f, d, branch, &st), nil
			}
			return nil, nil
		}
		st.Jobs[d.Context] = jobState{d.State, d.Order}
		state, desc := st.decide()
		changed := state != st.State
		if changed {
			st.State, st.Desc = state, desc
			st.Version++
		}
		data, _ := json.Marshal(&st)
		if rev == 0 {
			_, err = n.sent.Create(ctx, key, data)
		} else {
			_, err = n.sent.Update(ctx, key, data, rev)
		}
		if isConflict(err) {
			continue // another job's status came first: decide again on it
		}
		if err != nil {
			return nil, fmt.Errorf("combined status %s: %w", key, err)
		}
		if !changed {
			return nil, nil
		}
		return n.combinedNote(f, d, branch, &st), nil
	}
	return nil, fmt.Errorf("combined status %s: too many concurrent changes", key)
}

// combinedNote is the outbox message of a commit's combined state.
func (n *Notifier) combinedNote(f *forge.Repo, d *StatusDelivery, branch string, st *combinedState) *Notification {
	s := forge.Status{SHA: d.SHA, State: st.State, Context: f.Combined, Description: st.Desc, Ref: d.Ref}
	if n.cfg.PublicURL != "" {
		s.TargetURL = strings.TrimRight(n.cfg.PublicURL, "/") + commitURL(d.Repo, branch, d.SHA)
	}
	id := fmt.Sprintf("status.%s.combined.%s.%d", shortHash(d.Repo+"\x00"+d.SHA+"\x00"+f.Combined), st.State, st.Version)
	return &Notification{ID: id, Event: "status-" + st.State, Status: &StatusDelivery{Repo: d.Repo, Status: s, Order: st.Version}}
}

// enqueueStatus puts a job's status in the outbox, and then its commit's
// combined status when that changes.
func (n *Notifier) enqueueStatus(ctx context.Context, note *Notification, branch string) error {
	if err := n.enqueue(ctx, note); err != nil {
		return err
	}
	return n.combine(ctx, note.Status, branch)
}
