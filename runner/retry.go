package runner

import (
	"context"
	"io"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
)

// MaxRetry bounds the pipeline's retry: (the dispatcher refuses more).
const MaxRetry = 3

// tries runs the job's steps, and runs them again on a fresh checkout, up to
// job.Retry times, while they fail (exit non-zero; an error, a timeout or a
// cancel is not retried). Each try collects its test results. A job that
// passes on a retry is passed and flaky, with what failed before in
// FailedTries; the tests of the last try go into the result, those that failed
// in an earlier try and pass now marked flaky.
//
// Retrying inside one delivery, rather than queueing the job again, keeps one
// result per attempt: the broken-build flow and the notifier see only the
// verdict after the retries, so a flake never breaks a branch.
func (r *Runner) tries(ctx context.Context, job *events.JobQueued, attempt uint64, ws, tmp string, x *stepExec, lim *jobLimits, out *output, res *events.JobFinished, log zerolog.Logger) {
	retries := min(max(job.Retry, 0), MaxRetry)
	failedBefore := map[string]bool{}
	var coll *testCollector
	for try := 0; ; try++ {
		coll = newTestCollector()
		coll.mask = out.mask.String
		t0 := time.Now()
		r.steps(ctx, job, try, x, lim, out, coll, res)
		coll.Flush()
		for _, n := range readReports(ws, job.Reports, coll) {
			out.Note("[jetci] reports: %s", n)
		}
		// Only steps that exited non-zero are retried: not an error, a
		// timeout, a cancel, nor a resource limit's kill (res.Error says so).
		if res.Status != events.StatusFailed || res.Error != "" || try >= retries || ctx.Err() != nil {
			break
		}
		failed := coll.failedNames(events.MaxFailedTryTests)
		for _, n := range coll.failedNames(maxCollected) {
			failedBefore[n] = true
		}
		res.FailedTries = append(res.FailedTries, events.FailedTry{
			ExitCode: res.ExitCode, DurationMs: time.Since(t0).Milliseconds(), FailedTests: failed})
		out.Note("[jetci] try %d failed (exit code %d); retry %d of %d on a fresh checkout", try+1, res.ExitCode, try+1, retries)
		// A retry starts as the first try did: a clean TMPDIR, and the full
		// CPU limit (as it gets the full timeout).
		if tmp != "" {
			if err := removeAll(tmp); err == nil {
				_ = os.MkdirAll(tmp, 0o700)
			}
		}
		if lim != nil {
			lim.cpuUsed = 0
		}
		if err := r.caches.prepare(ctx, job.Repo, job.RepoURL, job.Commit, ws, log); err != nil {
			// The failure stands: the retry could not even start.
			out.Note("[jetci] retry not run: checkout failed: %v", err)
			res.FailedTries = res.FailedTries[:len(res.FailedTries)-1]
			break
		}
		if err := x.own(); err != nil {
			out.Note("[jetci] retry not run: %v", err)
			res.FailedTries = res.FailedTries[:len(res.FailedTries)-1]
			break
		}
		res.Retries++
		res.ExitCode, res.Error = 0, ""
	}
	if res.Retries > 0 && res.Status == events.StatusPassed {
		res.Flaky = true
		out.Note("[jetci] passed on retry %d: recorded as passed (flaky)", res.Retries)
	}
	res.Tests, res.TestSummary = coll.finish(failedBefore)
	if s := res.TestSummary; s != nil {
		out.Note("[jetci] tests: %d passed, %d failed, %d skipped (%s)", s.Passed, s.Failed, s.Skipped, strings.Join(s.Sources, ", "))
	}
}

// tee writes step output to the log and to the test parsers; the parsers
// never fail, so only the log's answer counts.
type tee struct {
	out io.Writer
	tap io.Writer
}

func (t tee) Write(p []byte) (int, error) {
	n, err := t.out.Write(p)
	_, _ = t.tap.Write(p)
	return n, err
}
