package main

import (
	"context"
	"errors"
	"fmt"

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
	reply, err := events.RequestRecheck(ctx, nc.Conn, &events.RecheckRequest{Repo: *repo, Branch: *branch, By: "cli"})
	if err != nil {
		return err
	}
	fmt.Fprintf(m.Stdout, "re-checking %s %s at %s\n", *repo, *branch, reply.Commit)
	return nil
}
