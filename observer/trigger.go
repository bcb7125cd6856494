package observer

import (
	"context"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"

	"github.com/go-git/go-git/v5"
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
	log := o.log
	req, err := events.DecodeAs[events.TriggerRequest](m.Data)
	if err == nil {
		log = log.With().Str("repo", req.Repo).Str("branch", req.Branch).Str("commit", req.Commit).Logger()
		reply.Commit, reply.TriggerID, err = o.trigger(ctx, req)
	}
	if err != nil {
		reply.Error = err.Error()
		log.Warn().Err(err).Msg("trigger refused")
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
	if err := fetch(ctx, remote, w.Pulls); err != nil {
		return "", "", fmt.Errorf("fetch %s: %w", w.URL, err)
	}
	ref, err := w.cache.Reference(plumbing.NewRemoteReferenceName("origin", req.Branch), true)
	if err != nil {
		return "", "", fmt.Errorf("no branch %q in repo %s", req.Branch, req.Repo)
	}
	h := ref.Hash()
	if req.Commit != "" {
		if h, err = resolveCommit(w.cache, req.Repo, req.Commit); err != nil {
			return "", "", err
		}
	}
	ev, err := o.event(w, req.Branch, h)
	if err != nil {
		return "", "", err
	}
	ev.Class = events.ClassUser
	if req.Class == events.ClassSecond || req.Class == events.ClassPeriodic || req.Class == events.ClassBisect {
		ev.Class = req.Class // the dispatcher's second check, its periodic full check, or a culprit search's run
	}
	ev.TriggerID = nuid.Next()
	if req.TriggerID != "" {
		ev.TriggerID = req.TriggerID // the dispatcher names its checks before asking
	}
	ev.OnlyJob, ev.OnlyArch, ev.OnlyModule = req.Job, req.Arch, req.Module
	if err := o.publish(ctx, ev, ev.TriggerID); err != nil {
		return "", "", err
	}
	w.log.Info().Str("branch", req.Branch).Str("commit", h.String()[:10]).Str("trigger_id", ev.TriggerID).Msg("triggered")
	return h.String(), ev.TriggerID, nil
}

var hexRE = regexp.MustCompile(`^[0-9a-fA-F]{4,40}$`)

// resolveCommit finds the commit a full sha or an unambiguous prefix of at least
// 4 hex digits names. go-git's ResolveRevision takes prefixes too, but also
// branch names and revision expressions, and returns the first of several
// commits sharing a prefix; a trigger wants exactly one commit or an error.
func resolveCommit(repo *git.Repository, name, s string) (plumbing.Hash, error) {
	if !hexRE.MatchString(s) {
		return plumbing.ZeroHash, fmt.Errorf("no commit %q in repo %s: give a sha or at least 4 of its hex digits", s, name)
	}
	s = strings.ToLower(s)
	var candidates []plumbing.Hash
	if len(s) == 40 {
		candidates = []plumbing.Hash{plumbing.NewHash(s)}
	} else {
		prefixer, ok := repo.Storer.(interface {
			HashesWithPrefix(prefix []byte) ([]plumbing.Hash, error)
		})
		if !ok {
			return plumbing.ZeroHash, fmt.Errorf("no commit %s in repo %s: the cache cannot look up short hashes; give the full sha", s, name)
		}
		b, err := hex.DecodeString(s[:len(s)&^1])
		if err != nil {
			return plumbing.ZeroHash, fmt.Errorf("no commit %s in repo %s: %w", s, name, err)
		}
		hs, err := prefixer.HashesWithPrefix(b)
		if err != nil {
			return plumbing.ZeroHash, fmt.Errorf("look up commit %s in repo %s: %w", s, name, err)
		}
		for _, h := range hs {
			if strings.HasPrefix(h.String(), s) {
				candidates = append(candidates, h)
			}
		}
	}
	var commits []plumbing.Hash
	for _, h := range candidates {
		if _, err := repo.CommitObject(h); err == nil {
			commits = append(commits, h)
		}
	}
	switch len(commits) {
	case 0:
		return plumbing.ZeroHash, fmt.Errorf("no commit %s in repo %s", s, name)
	case 1:
		return commits[0], nil
	}
	return plumbing.ZeroHash, fmt.Errorf("commit %s is ambiguous in repo %s (%d commits start with it): give more digits", s, name, len(commits))
}
