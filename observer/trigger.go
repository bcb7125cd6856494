package observer

import (
	"context"
	"fmt"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/jetci/jetci/events"
)

// serveTrigger answers `jetci trigger`: it fetches, resolves the branch head (or
// the given commit) and publishes it as a user-triggered commit. The branch's
// recorded head does not move.
func (o *Observer) serveTrigger(ctx context.Context, m *nats.Msg) {
	reply := &events.TriggerReply{}
	req, err := events.DecodeAs[events.TriggerRequest](m.Data)
	if err == nil {
		reply.Commit, reply.TriggerID, err = o.trigger(ctx, req)
	}
	if err != nil {
		reply.Error = err.Error()
		o.log.Warn().Err(err).Msg("trigger refused")
	}
	data, _ := events.Encode(reply)
	if m.Reply != "" {
		_ = m.Respond(data)
	}
}

func (o *Observer) trigger(ctx context.Context, req *events.TriggerRequest) (string, string, error) {
	w, ok := o.repos[req.Repo]
	if !ok {
		return "", "", fmt.Errorf("this observer does not watch a repo named %q", req.Repo)
	}
	if err := o.openHeads(ctx); err != nil {
		return "", "", err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := o.open(ctx, w); err != nil {
		return "", "", err
	}
	remote, err := w.cache.Remote("origin")
	if err != nil {
		return "", "", err
	}
	if err := fetch(ctx, remote); err != nil {
		return "", "", fmt.Errorf("fetch %s: %w", w.URL, err)
	}
	ref, err := w.cache.Reference(plumbing.NewRemoteReferenceName("origin", req.Branch), true)
	if err != nil {
		return "", "", fmt.Errorf("no branch %q in repo %s", req.Branch, req.Repo)
	}
	h := ref.Hash()
	if req.Commit != "" {
		if len(req.Commit) < 4 {
			return "", "", fmt.Errorf("commit %q: give at least 4 hex digits", req.Commit)
		}
		ph, err := w.cache.ResolveRevision(plumbing.Revision(req.Commit))
		if err != nil {
			return "", "", fmt.Errorf("no commit %s in repo %s", req.Commit, req.Repo)
		}
		if _, err := w.cache.CommitObject(*ph); err != nil {
			return "", "", fmt.Errorf("%s in repo %s is not a commit", req.Commit, req.Repo)
		}
		h = *ph
	}
	ev, err := o.event(w, req.Branch, h)
	if err != nil {
		return "", "", err
	}
	ev.Class = events.ClassUser
	ev.TriggerID = nuid.Next()
	if err := o.publish(ctx, ev, ev.TriggerID); err != nil {
		return "", "", err
	}
	w.log.Info().Str("branch", req.Branch).Str("commit", h.String()[:10]).Str("trigger_id", ev.TriggerID).Msg("triggered")
	return h.String(), ev.TriggerID, nil
}
