package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
)

const notifyUsage = `
Usage: jetci notify --nats URL --repo R

Tells the observers of a repository that it changed, so they look at it now
instead of at their next poll. Made for a git post-receive hook on the server
that holds the repository, e.g. hooks/post-receive:

    #!/bin/sh
    jetci notify --nats nats://ci.example.com:4222 --repo proj || true
`

func (m *Main) notify(ctx context.Context, args []string) error {
	fs := m.flagSet("notify", notifyUsage)
	nf := connFlags(fs, events.RoleHook)
	repo := fs.String("repo", "", "repository name (as jetci names it)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *repo == "" {
		fs.Usage()
		return errors.New("--repo is required")
	}
	nc, _, err := m.connect(ctx, nf, "jetci-notify", false, zerolog.Nop())
	if err != nil {
		return err
	}
	defer nc.Close()
	if err := events.Poke(ctx, nc.Conn, *repo); err != nil {
		return err
	}
	fmt.Fprintf(m.Stdout, "%s: observers told\n", *repo)
	return nil
}
