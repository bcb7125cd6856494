package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
)

const triggerUsage = `
Usage: jetci trigger --nats URL --repo R --branch B [--commit SHA] [--job NAME [--arch ARCH]] [--module M]

Runs the head of a branch (or one commit of it) now, at the highest priority,
whether or not it was tested before. A triggered commit checks every job, and
every module of a pipeline with modules. With --job (and --arch) only that job
of the commit runs again: a re-check; --module narrows it to that module's job
(the job "core/test" is --module core --job test). An observer watching the
repository resolves the commit; the command prints it.
`

func (m *Main) trigger(ctx context.Context, args []string) error {
	fs := m.flagSet("trigger", triggerUsage)
	nf := connFlags(fs, events.RoleAdmin)
	repo := fs.String("repo", "", "repository name (as in results)")
	branch := fs.String("branch", "", "branch name")
	commit := fs.String("commit", "", "commit to run (full sha or a prefix); default: the branch head")
	job := fs.String("job", "", "run only this job of the commit")
	arch := fs.String("arch", "", "run only on this arch")
	module := fs.String("module", "", "run only this pipeline module's job (with --job)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *repo == "" || *branch == "" {
		fs.Usage()
		return errors.New("--repo and --branch are required")
	}
	nc, _, err := m.connect(ctx, nf, "jetci-trigger", false, zerolog.Nop())
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	reply, err := events.RequestTrigger(ctx, nc.Conn, &events.TriggerRequest{Repo: *repo, Branch: *branch, Commit: *commit, Job: *job, Arch: *arch, Module: *module})
	if err != nil {
		return err
	}
	fmt.Fprintf(m.Stdout, "triggered %s %s at %s\n", *repo, *branch, reply.Commit)
	return nil
}
