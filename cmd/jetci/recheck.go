package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
)

const recheckUsage = `
Usage: jetci recheck --nats URL --repo R --branch B

Re-checks a branch under the broken-build flow (dispatcher --gate): runs its head
now as user-triggered; if every job passes, the branch opens again and the
commits held while it was broken are checked, oldest first. On a branch that is
not broken it simply runs the head. (Any full passing run of the head of a broken
or failed branch opens it: "jetci trigger" of the head does the same.)
`

func (m *Main) recheck(ctx context.Context, args []string) error {
	fs := m.flagSet("recheck", recheckUsage)
	nf := connFlags(fs, events.RoleAdmin)
	repo := fs.String("repo", "", "repository name (as in results)")
	branch := fs.String("branch", "", "branch name")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *repo == "" || *branch == "" {
		fs.Usage()
		return errors.New("--repo and --branch are required")
	}
	nc, _, err := m.connect(ctx, nf, "jetci-recheck", false, zerolog.Nop())
	if err != nil {
		return err
	}
	defer nc.Close()
	reply, err := requestRecheck(ctx, nc.Conn, *repo, *branch, "cli")
	if err != nil {
		return err
	}
	fmt.Fprintf(m.Stdout, "re-checking %s %s at %s\n", *repo, *branch, reply.Commit)
	return nil
}

// requestRecheck asks the dispatchers to re-check a branch.
func requestRecheck(ctx context.Context, nc *nats.Conn, repo, branch, by string) (*events.TriggerReply, error) {
	data, err := events.Encode(&events.RecheckRequest{Repo: repo, Branch: branch, By: by})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	msg, err := nc.RequestWithContext(ctx, events.RecheckSubject(repo), data)
	if errors.Is(err, nats.ErrNoResponders) {
		return nil, errors.New("no dispatcher answers re-check requests: is one running with --gate?")
	}
	if err != nil {
		return nil, fmt.Errorf("recheck: %w", err)
	}
	reply, err := events.DecodeAs[events.TriggerReply](msg.Data)
	if err != nil {
		return nil, fmt.Errorf("recheck: bad reply: %w", err)
	}
	if reply.Error != "" {
		return nil, errors.New(reply.Error)
	}
	return reply, nil
}
