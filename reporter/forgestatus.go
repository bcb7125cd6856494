package reporter

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/forge"
)

// StatusDelivery is one commit status for one forge, in the outbox.
type StatusDelivery struct {
	Repo string `json:"repo"` // jetci's repo name, which names the forge entry
	forge.Status
	// Order ranks the states of one context: 2×queue_seq for pending,
	// +1 for the final state. A state is not posted over a higher one.
	Order uint64 `json:"order"`
}

// statusContext is a job's commit-status context: "jetci/test (amd64)",
// "jetci/core/test (arm64)".
func statusContext(module, job, arch string) string {
	return "jetci/" + events.QualifiedJob(module, job) + " (" + arch + ")"
}

// forgeOf returns the forge entry of a repo, or nil.
func (n *Notifier) forgeOf(repo string) *forge.Repo {
	for i := range n.cfg.Forges {
		if n.cfg.Forges[i].Repo == repo {
			return &n.cfg.Forges[i]
		}
	}
	return nil
}

// statusNote makes the outbox message of one status.
func (n *Notifier) statusNote(repo, branch, sha, jobID string, ctxName, state, desc string, order uint64) *Notification {
	f := n.forgeOf(repo)
	if f == nil {
		return nil
	}
	st := forge.Status{SHA: sha, State: state, Context: ctxName, TargetURL: n.jobURL(jobID), Description: desc}
	if _, pull := events.PullNumber(branch); f.Kind == forge.GitLab && !pull {
		st.Ref = branch
	}
	id := fmt.Sprintf("status.%s.%s.%s.%d", shortHash(repo+"\x00"+sha+"\x00"+ctxName), jobID, state, order)
	return &Notification{ID: id, Event: "status-" + state, JobID: jobID, Status: &StatusDelivery{Repo: repo, Status: st, Order: order}}
}

// queuedStatus is the pending status of a queued job.
func (n *Notifier) queuedStatus(q *events.JobQueued) *Notification {
	desc := "queued"
	if q.Held {
		desc = "held: the branch is broken"
	}
	return n.statusNote(q.Repo, q.Branch, q.Commit, q.JobID, statusContext(q.Module, q.Job, q.Arch), forge.Pending, desc, 2*q.QueueSeq)
}

// finalStatus is the status of a finished job.
func (n *Notifier) finalStatus(r *Record) *Notification {
	state, desc := forge.Success, "passed"
	switch r.Status {
	case events.StatusPassed:
		if s := r.TestSummary; s != nil && s.Total > 0 {
			desc = plural(s.Passed, "test") + " passed"
		}
		if r.Flaky {
			desc += " (flaky: passed on a retry)"
		}
	case events.StatusFailed:
		state = forge.Failure
		desc = fmt.Sprintf("failed: exit code %d", r.ExitCode)
		if s := r.TestSummary; s != nil && s.Failed > 0 {
			desc = plural(s.Failed, "test") + " failed"
		}
	case events.StatusCancelled:
		state, desc = forge.Cancelled, "cancelled"
		if r.Error != "" {
			desc = "cancelled: " + r.Error
		}
	default:
		state, desc = forge.Error, "error"
		if r.Error != "" {
			desc = r.Error
		}
	}
	if r.DurationMs >= 100 && r.Status != events.StatusCancelled {
		desc += " in " + (time.Duration(r.DurationMs) * time.Millisecond).Round(time.Second/10).String()
	}
	return n.statusNote(r.Repo, r.Branch, r.Commit, r.JobID, statusContext(r.Module, r.Job, r.Arch), state, desc, 2*r.QueueSeq+1)
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

// forgeHealth is what the notifier knows of posting to one repo's forge.
type forgeHealth struct {
	Repo    string    `json:"repo"`
	Kind    string    `json:"kind"`
	State   string    `json:"state"` // ok, unknown, token refused, rate limited, failing
	Error   string    `json:"error,omitempty"`
	Since   time.Time `json:"since,omitzero"`
	Until   time.Time `json:"retry_after,omitzero"` // no request to it before this
	Posted  uint64    `json:"posted"`
	LastOK  time.Time `json:"last_ok,omitzero"`
	authLog bool      // the bad-token line was logged
}

// forgeStates holds each forge's health, for holds and /api/v1/forges.
type forgeStates struct {
	mu sync.Mutex
	m  map[string]*forgeHealth
}

func (s *forgeStates) get(repo, kind string) *forgeHealth {
	if s.m == nil {
		s.m = map[string]*forgeHealth{}
	}
	h := s.m[repo]
	if h == nil {
		h = &forgeHealth{Repo: repo, Kind: kind, State: "unknown"}
		s.m[repo] = h
	}
	return h
}

// authHold is how long statuses to a forge that refused the token wait: the
// token does not mend itself, so no fast retry loop.
const authHold = 10 * time.Minute

// holdOf returns when a forge may be asked again (zero: now).
func (n *Notifier) holdOf(repo string) time.Time {
	n.forges.mu.Lock()
	defer n.forges.mu.Unlock()
	if h := n.forges.m[repo]; h != nil {
		return h.Until
	}
	return time.Time{}
}

// sendStatus posts one status and keeps the forge's health.
func (n *Notifier) sendStatus(ctx context.Context, note *Notification) error {
	d := note.Status
	f := n.forgeOf(d.Repo)
	if f == nil {
		return errNoLongerConfigured
	}
	now := n.now()
	err := f.Post(ctx, n.client, d.Status, now)
	n.forges.mu.Lock()
	defer n.forges.mu.Unlock()
	h := n.forges.get(d.Repo, f.Kind)
	var rl *forge.RateLimitError
	var ae *forge.AuthError
	switch {
	case err == nil:
		if h.State != "ok" && h.State != "unknown" {
			n.log.Info().Str("repo", d.Repo).Str("forge", f.Kind).Str("was", h.State).Msg("forge takes commit statuses again")
		}
		h.State, h.Error, h.Since, h.Until, h.authLog = "ok", "", time.Time{}, time.Time{}, false
		h.Posted++
		h.LastOK = now
	case errors.As(err, &rl):
		if h.State != "rate limited" {
			h.Since = now
		}
		h.State, h.Error, h.Until = "rate limited", err.Error(), rl.After
		n.log.Warn().Str("repo", d.Repo).Str("forge", f.Kind).Time("retry_after", rl.After).Msg("forge rate limit: statuses wait")
	case errors.As(err, &ae):
		if h.State != "token refused" {
			h.Since = now
		}
		h.State, h.Error, h.Until = "token refused", err.Error(), now.Add(authHold)
		if !h.authLog {
			h.authLog = true
			n.log.Error().Str("repo", d.Repo).Str("forge", f.Kind).Str("project", f.Project).Err(err).
				Dur("retry_in", authHold).Msg("the forge refuses jetci's token: no commit statuses for this repo until it is fixed")
		}
	default:
		if h.State != "failing" {
			h.Since = now
		}
		h.State, h.Error = "failing", err.Error()
	}
	return err
}

// retryDelay is when a status that failed with err is tried again: the
// forge's Retry-After, the bad-token hold, else the usual backoff.
func (n *Notifier) retryDelay(note *Notification, err error, tries uint64) time.Duration {
	wait := backoff(tries)
	if note.Status != nil {
		if until := n.holdOf(note.Status.Repo); !until.IsZero() {
			if d := until.Sub(n.now()); d > wait {
				wait = d
			}
		}
	}
	return wait
}

// ForgeHealth lists each configured forge's state.
func (n *Notifier) ForgeHealth() []forgeHealth {
	n.forges.mu.Lock()
	defer n.forges.mu.Unlock()
	var out []forgeHealth
	for _, f := range n.cfg.Forges {
		out = append(out, *n.forges.get(f.Repo, f.Kind))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Repo < out[j].Repo })
	return out
}

// newerPosted reports whether a state of the same context ranked above order
// was posted already (then this older one is not posted over it).
func (n *Notifier) newerPosted(ctx context.Context, d *StatusDelivery) (bool, error) {
	e, err := n.sent.Get(ctx, orderKey(d))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	have, _ := strconv.ParseUint(string(e.Value()), 10, 64)
	return have > d.Order, nil
}

// notePosted raises the context's posted rank to d.Order.
func (n *Notifier) notePosted(ctx context.Context, d *StatusDelivery) error {
	key := orderKey(d)
	val := []byte(strconv.FormatUint(d.Order, 10))
	for range 5 {
		e, err := n.sent.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			if _, err = n.sent.Create(ctx, key, val); err == nil || !isConflict(err) {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		if have, _ := strconv.ParseUint(string(e.Value()), 10, 64); have >= d.Order {
			return nil
		}
		if _, err = n.sent.Update(ctx, key, val, e.Revision()); err == nil || !isConflict(err) {
			return err
		}
	}
	return errors.New("posted rank: too many conflicts")
}

func orderKey(d *StatusDelivery) string {
	return "c." + shortHash(d.Repo+"\x00"+d.SHA+"\x00"+d.Context)
}

// consumeQueued posts "pending" for every job queued in a repo with a forge.
func (r *Reporter) consumeQueued(ctx context.Context) error {
	if len(r.cfg.Notify.Forges) == 0 {
		return nil
	}
	cfg := jetstream.ConsumerConfig{
		Durable:       events.ConsumerNotifierQueued,
		Description:   "queued jobs, for pending commit statuses",
		FilterSubject: events.SubjectResults + ".*.*." + events.KindQueued,
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverNewPolicy,
		AckWait:       30 * time.Second,
		MaxAckPending: 1000,
	}
	return events.Consume(ctx, r.js, events.StreamResults, cfg, 64, r.log, func(m jetstream.Msg) {
		q, err := events.DecodeAs[events.JobQueued](m.Data())
		if err != nil {
			_ = m.Term()
			return
		}
		if q.Class == events.ClassBisect || r.notifier.forgeOf(q.Repo) == nil {
			_ = m.Ack()
			return
		}
		if _, err := r.verify(m, q); err != nil {
			_ = m.Term() // the fold records it as forged
			return
		}
		if note := r.notifier.queuedStatus(q); note != nil {
			if err := r.notifier.enqueueStatus(ctx, note, q.Branch); err != nil {
				r.log.Warn().Err(err).Msg("pending status; will retry")
				_ = m.NakWithDelay(time.Second)
				return
			}
		}
		_ = m.Ack()
	})
}

// apiForges lists the forges statuses go to, and how posting to them goes.
func (r *Reporter) apiForges(w http.ResponseWriter, req *http.Request) {
	out := []forgeHealth{}
	if r.notifier != nil {
		out = r.notifier.ForgeHealth()
	}
	writeJSON(w, http.StatusOK, out)
}
