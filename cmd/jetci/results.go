package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter"
)

const resultsUsage = `
Usage: jetci results --nats URL [--repo R] [--branch B] [--commit SHA] [--module M] [--json] [--all]

Prints one line per job result, oldest first. With --json, prints JSON Lines: one
object per job with at least repo, branch, commit (full sha), arch, job, status
(passed, failed, error, cancelled), attempt, exit_code, duration_ms, runner,
error and finished_at, and module for the job of a pipeline module (the table
shows it as module/job). Jobs still queued or running are left out unless --all;
a queued job has a "reason" saying why it waits (e.g. no runner for its arch).
A job that passed only on a retry (retry: in the pipeline file) is status
passed with "flaky": true (the table says "passed (flaky)"); jobs with test
results carry "tests" and "test_summary".
`

func (m *Main) results(ctx context.Context, args []string) error {
	fs := m.flagSet("results", resultsUsage)
	nf := connFlags(fs, events.RoleAdmin)
	repo := fs.String("repo", "", "only this repository (its name)")
	branch := fs.String("branch", "", "only this branch (needs no --repo)")
	commit := fs.String("commit", "", "only this commit (full sha or a prefix)")
	module := fs.String("module", "", "only the jobs of this pipeline module")
	asJSON := fs.Bool("json", false, "print JSON Lines instead of a table")
	all := fs.Bool("all", false, "include queued and running jobs")
	if err := parse(fs, args); err != nil {
		return err
	}
	nc, js, err := m.connect(ctx, nf, "jetci-results", false, zerolog.Nop())
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	store, err := reporter.OpenStore(ctx, js)
	if err != nil {
		return err
	}
	recs, err := store.List(ctx, reporter.Filter{Repo: *repo, Branch: *branch, Commit: *commit, Module: *module, All: *all})
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(m.Stdout)
		for i := range recs {
			if err := enc.Encode(&recs[i]); err != nil {
				return err
			}
		}
		return nil
	}
	if len(recs) == 0 {
		fmt.Fprintln(m.Stderr, "no results yet")
		return nil
	}
	tw := tabwriter.NewWriter(m.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STATUS\tREPO\tBRANCH\tCOMMIT\tJOB\tARCH\tATTEMPT\tDURATION\tFINISHED\tERROR")
	for _, r := range recs {
		fin := ""
		if !r.FinishedAt.IsZero() {
			fin = r.FinishedAt.Local().Format("2006-01-02 15:04:05")
		}
		status := string(r.Status)
		if r.Flaky {
			status += " (flaky)" // passed on a retry; --json keeps status "passed" and "flaky": true
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", status, r.Repo, r.Branch, events.Short(r.Commit),
			r.Name(), r.Arch, r.Attempt, (time.Duration(r.DurationMs) * time.Millisecond).String(), fin, oneLine(r.Error+r.Reason, 60))
	}
	return tw.Flush()
}

func oneLine(s string, max int) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i] + " …"
	}
	if r := []rune(s); len(r) > max {
		s = string(r[:max]) + "…"
	}
	return s
}
