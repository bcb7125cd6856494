package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter"
)

const resultsUsage = `
Usage: jetci results --nats URL [--repo R] [--branch B] [--commit SHA] [--module M]
                     [--job J] [--arch A] [--status S,...] [--since T] [--limit N] [--json] [--all]

Prints one line per job result, oldest first (by when the job was first
queued). It asks a running reporter (its results service on NATS, which reads
an indexed database), page by page; at most --limit results (default 1000;
0: every one). --since takes a time (RFC 3339) or a duration before now
(24h); with a limit and no --since the newest results are printed. With --json, prints JSON Lines: one
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
	job := fs.String("job", "", "only this job (its name, without the module)")
	arch := fs.String("arch", "", "only this architecture")
	status := fs.String("status", "", "only these statuses, comma-separated (e.g. failed,error)")
	since := fs.String("since", "", "only jobs first queued at or after this: RFC 3339, or a duration before now (24h)")
	limit := fs.Int("limit", 0, "at most this many results, the newest (0: all)")
	timeout := fs.Duration("timeout", 30*time.Second, "give up after this long")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *limit < 0 {
		return fmt.Errorf("--limit must be ≥ 0")
	}
	q := reporter.ResultsQuery{Repo: *repo, Branch: *branch, Commit: *commit, Module: *module, All: *all, Job: *job, Arch: *arch}
	if *status != "" {
		for _, s := range strings.Split(*status, ",") {
			q.Status = append(q.Status, events.Status(strings.TrimSpace(s)))
		}
	}
	if *since != "" {
		if t, err := time.Parse(time.RFC3339Nano, *since); err == nil {
			q.Since = t
		} else if d, err := time.ParseDuration(*since); err == nil && d > 0 {
			q.Since = time.Now().Add(-d)
		} else {
			return fmt.Errorf("--since %q: want an RFC 3339 time or a duration like 24h", *since)
		}
	}
	nc, _, err := m.connect(ctx, nf, "jetci-results", false, zerolog.Nop())
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	recs, err := queryResults(ctx, nc.Conn, q, *limit)
	if errors.Is(err, errNoReporter) {
		// No reporter: read the jetci-results bucket itself (slow with a
		// long history, and only what the bucket still keeps).
		fmt.Fprintln(m.Stderr, "jetci results: no reporter answers; reading the jetci-results bucket instead")
		recs, err = resultsFromBucket(ctx, nc.Conn, q, *limit)
	}
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

// queryResults asks the reporter's results service for at most limit
// records (0: all), oldest first: with a limit and no --since, the newest,
// read backwards page by page from the end.
func queryResults(ctx context.Context, nc *nats.Conn, q reporter.ResultsQuery, limit int) ([]reporter.Record, error) {
	backwards := limit > 0 && q.Since.IsZero()
	var out [][]reporter.Record
	n := 0
	for {
		q.Limit = reporter.DefaultPage * 5
		if limit > 0 {
			q.Limit = min(q.Limit, limit-n)
		}
		if backwards && q.Before == "" {
			q.Before = "end"
		}
		page, err := askResults(ctx, nc, q)
		if err != nil {
			return nil, err
		}
		out = append(out, page.Results)
		n += len(page.Results)
		next := page.Next
		if backwards {
			next = page.Prev
		}
		if next == "" || len(page.Results) == 0 || limit > 0 && n >= limit {
			break
		}
		if backwards {
			q.Before = next
		} else {
			q.After = next
		}
	}
	if backwards {
		slices.Reverse(out)
	}
	recs := slices.Concat(out...)
	if limit > 0 && len(recs) > limit {
		recs = recs[len(recs)-limit:]
	}
	return recs, nil
}

var errNoReporter = errors.New("no reporter answers on " + events.SubjectQueryResults + ": is a reporter (jetci reporter or jetci up) running?")

// resultsFromBucket lists the records of the jetci-results bucket that q
// selects (its repo, branch, commit, module and all), oldest first.
func resultsFromBucket(ctx context.Context, nc *nats.Conn, q reporter.ResultsQuery, limit int) ([]reporter.Record, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	store, err := reporter.OpenStore(ctx, js)
	if err != nil {
		return nil, err
	}
	recs, err := store.List(ctx, reporter.Filter{Repo: q.Repo, Branch: q.Branch, Commit: q.Commit, Module: q.Module, All: q.All})
	if err != nil {
		return nil, err
	}
	out := recs[:0]
	for _, r := range recs {
		if (q.Job == "" || r.Job == q.Job) && (q.Arch == "" || r.Arch == q.Arch) &&
			(len(q.Status) == 0 || slices.Contains(q.Status, r.Status)) && (q.Since.IsZero() || !r.FirstQueuedAt.Before(q.Since)) {
			out = append(out, r)
		}
	}
	if limit > 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out, nil
}

func askResults(ctx context.Context, nc *nats.Conn, q reporter.ResultsQuery) (*reporter.ResultsPage, error) {
	data, err := json.Marshal(q)
	if err != nil {
		return nil, err
	}
	for {
		msg, err := nc.RequestWithContext(ctx, events.SubjectQueryResults, data)
		if errors.Is(err, nats.ErrNoResponders) {
			return nil, errNoReporter
		}
		if err != nil {
			return nil, fmt.Errorf("ask the reporter for results: %w", err)
		}
		if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
			if code == "503" && strings.Contains(msg.Header.Get(micro.ErrorHeader), "still loading") {
				select { // the reporter is catching up after a start
				case <-ctx.Done():
					return nil, fmt.Errorf("the reporter is still loading results: %w", ctx.Err())
				case <-time.After(200 * time.Millisecond):
					continue
				}
			}
			return nil, fmt.Errorf("reporter: %s", msg.Header.Get(micro.ErrorHeader))
		}
		var page reporter.ResultsPage
		if err := json.Unmarshal(msg.Data, &page); err != nil {
			return nil, fmt.Errorf("the reporter's answer: %w", err)
		}
		return &page, nil
	}
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
