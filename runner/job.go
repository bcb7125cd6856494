package runner

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
)

const defaultTimeout = 30 * time.Minute

// runJob runs one delivered job to its acknowledged result. While the ack is
// on its way it calls prefetch, and returns what that fetched: the slot's
// next job (nil when none, or when the job did not end in an ack).
func (r *Runner) runJob(ctx context.Context, slot int, m jetstream.Msg, prefetch func() jetstream.Msg) jetstream.Msg {
	job, err := events.DecodeAs[events.JobQueued](m.Data())
	if err != nil {
		r.log.Error().Err(err).Str("subject", m.Subject()).Msg("dropping a bad job message")
		_ = m.Term()
		return nil
	}
	meta, err := m.Metadata()
	if err != nil {
		r.log.Error().Err(err).Msg("job without metadata")
		_ = m.Term()
		return nil
	}
	attempt, seq := meta.NumDelivered, meta.Sequence.Stream
	r.mu.Lock()
	already := r.jobs[job.JobID] != nil && r.jobs[job.JobID].seq == seq
	r.mu.Unlock()
	if already {
		// A job this runner still runs, handed back while its lease lapsed
		// (cut off from the broker), came back to another of its slots: the
		// run under way keeps it (its heartbeat and ack settle the message).
		_ = m.NakWithDelay(events.JobAckWait)
		r.log.Info().Str("job_id", job.JobID).Msg("redelivered a job this runner still runs: left to the run under way")
		return nil
	}
	// The run's id and the delivery's token bind its results to it: the
	// reporter takes results of this delivery from this run only.
	run, token := newRunID(), fmt.Sprintf("%d.%d", meta.Sequence.Consumer, meta.Timestamp.UnixNano()) // the message's time
	log := r.log.With().Str("job_id", job.JobID).Str("repo", job.Repo).Str("branch", job.Branch).
		Str("commit", events.Short(job.Commit)).Str("job", job.Job).Str("arch", job.Arch).Uint64("attempt", attempt).Logger()
	r.setBusy(slot, events.LeasedJob{JobID: job.JobID, Attempt: attempt, Reply: m.Reply()})
	defer r.setBusy(slot, events.LeasedJob{})

	// In-progress acks go on until the job is acked: publishing the result may
	// wait for the broker, and the job must not be redelivered meanwhile.
	stopBeat := r.heartbeat(m)
	defer stopBeat()
	started := time.Now().UTC()
	st := &events.JobStarted{JobRef: job.JobRef, QueueSeq: seq, Attempt: attempt, Runner: r.cfg.ID, StartedAt: started,
		Run: run, Token: token}
	// The start goes out without waiting for its ack, which comes while the
	// cancel look below and the checkout go on: for a runner far from the
	// broker that is a round trip less per job. It is on the connection
	// before the result, so it is stored first.
	r.announce(ctx, events.ResultSubject(job.Repo, job.Branch, events.KindStarted), st,
		events.RunMsgID(job.JobID, run, events.KindStarted), log)
	log.Info().Int("slot", slot).Msg("job started")

	done := r.cfg.Metrics.JobStarted(r.cfg.Pool, r.cfg.Arch, attempt)
	// The job runs under its own context: a cancel request stops it without
	// stopping the runner. It is registered before the look for a request
	// made while it waited, so no request slips between the two.
	jobCtx, untrack := r.track(ctx, job.JobID, seq)
	defer untrack()
	// The look runs while the commit is checked out; the steps wait for it.
	looked := make(chan struct{})
	go func() { defer close(looked); r.checkCancelled(ctx, job.JobID) }()
	res, storeLog := r.execute(jobCtx, slot, job, seq, attempt, run, looked, log)
	// The log goes out with the result (and the lease's renewal) below, not
	// before them: one round trip for all three.
	logDone := make(chan struct{})
	go func() { defer close(logDone); storeLog() }()
	defer func() { <-logDone }()
	if ctx.Err() != nil {
		done("")
	} else {
		done(res.Status)
	}
	if ctx.Err() != nil {
		// The runner is stopping: hand the job back for another runner.
		stopBeat()
		_ = m.Nak()
		log.Info().Msg("runner stopping: job handed back")
		return nil
	}
	res.JobRef, res.QueueSeq, res.Attempt, res.Runner, res.StartedAt = job.JobRef, seq, attempt, r.cfg.ID, started
	res.Run, res.Token = run, token
	res.Author, res.Subject = job.Author, job.Subject // so a result alone says whose commit it is
	res.Class, res.TriggerID, res.Origin = job.Class, job.TriggerID, job.Origin
	res.FinishedAt = time.Now().UTC()
	res.DurationMs = res.FinishedAt.Sub(started).Milliseconds()
	log.Info().Str("status", string(res.Status)).Int("exit_code", res.ExitCode).
		Dur("duration", time.Duration(res.DurationMs)*time.Millisecond).Str("error", res.Error).Msg("job finished")
	// The result's publish and the lease's renewal go out together (one
	// round trip for both); the job is acked only after both.
	delivered := make(chan error, 1)
	go func() { delivered <- r.deliver(ctx, res, m.Reply()) }()
	// A write of the lease begun a moment ago (another slot's job starting
	// or ending, the ticker) proves as much as one made now: the lease had
	// not lapsed then. In a drain that is most jobs: one lease write per
	// job instead of two.
	renewedAt, renewed := r.renewedWithin(leaseShared)
	if !renewed {
		renewedAt = time.Now()
		renewed = r.renewLease(ctx)
	}
	if err := <-delivered; err != nil {
		log.Warn().Err(err).Msg("result kept in the outbox; it will be published when the broker is back")
		return nil
	}
	if time.Since(renewedAt) > leaseFresh {
		// The publish took its time (the broker away, the outbox): the
		// lease may have lapsed since.
		renewed = r.renewLease(ctx)
	}
	// Find out whether the lease lapsed (or a dispatcher ended it, finding
	// this runner's connection closed) while the job ran. Until the lease is
	// written that is unknown: acking after a reconnect could otherwise ack
	// the delivery another runner was handed meanwhile.
	for wait, deadline := 100*time.Millisecond, time.Now().Add(2*events.JobAckWait); !renewed; wait = min(2*wait, 5*time.Second) {
		if ctx.Err() != nil || time.Now().After(deadline) {
			log.Warn().Msg("result published but the job not acked: the lease could not be renewed, so the job may have been handed to another runner")
			return nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		renewed = r.renewLease(ctx)
	}
	if r.lostJob(job.JobID) {
		log.Warn().Msg("result published but the job not acked: its lease lapsed and it was handed to another runner")
		return nil
	}
	next := make(chan jetstream.Msg, 1)
	go func() { next <- prefetch() }()
	t0 := time.Now()
	r.ack(ctx, m, log)
	n := <-next
	if n != nil && time.Since(t0) > prefetchHold {
		// The ack took its time (the broker away): the job fetched
		// meanwhile has waited without in-progress acks, so it goes back
		// rather than risk running where its ack wait has let it go.
		_ = n.Nak()
		return nil
	}
	return n
}

// ack acknowledges a job whose result is stored, retrying for a while if the
// broker is away (the result's Msg-Id makes a rerun's result a duplicate only if
// it is the same attempt, so an ack lost here costs a second run).
func (r *Runner) ack(ctx context.Context, m jetstream.Msg, log zerolog.Logger) {
	wait, deadline := 100*time.Millisecond, time.Now().Add(2*events.JobAckWait)
	var noResponders time.Time // since when no one answers
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := m.DoubleAck(actx)
		cancel()
		if err == nil {
			return
		}
		// No responders: the consumer is gone (deleted), and the ack can never
		// land; or, on a cluster, its leader died and a new one is being
		// elected, which takes seconds. Only the first lasts.
		if !errors.Is(err, nats.ErrNoResponders) {
			noResponders = time.Time{}
		} else if noResponders.IsZero() {
			noResponders = time.Now()
		}
		if ctx.Err() != nil || time.Now().After(deadline) || (!noResponders.IsZero() && time.Since(noResponders) > ackNoResponders) {
			log.Warn().Err(err).Msg("could not ack the job; it may run again")
			return
		}
		log.Debug().Err(err).Dur("retry_in", wait).Msg("ack job")
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// prefetchHold bounds how long a job fetched while the last one's ack was on
// its way may have waited to be kept; far inside JobAckWait.
const prefetchHold = 2 * time.Second

// leaseFresh is how old a renewal of the lease may be when the job is acked;
// an older one is made again first. Well inside the lease's TTL.
const leaseFresh = 500 * time.Millisecond

// leaseShared is how old a renewal made for something else may be for a
// finished job to count on it instead of writing the lease itself; well
// inside leaseFresh, which is checked again before the ack.
const leaseShared = 100 * time.Millisecond

// ackNoResponders is how long an ack that no one answers is retried: longer
// than a cluster takes to elect a consumer's new leader.
const ackNoResponders = 15 * time.Second

// heartbeat keeps the job from being redelivered while it runs. The returned
// stop may be called more than once; no in-progress ack is sent after it returns.
func (r *Runner) heartbeat(m jetstream.Msg) func() {
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(events.JobAckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				_ = m.InProgress()
			case <-done:
				return
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(done) })
		<-exited
	}
}

// execute checks the commit out and runs the steps. The result carries status,
// exit code, error and log fields.
//
// The log is stored by the returned function (called once, whatever happens
// to the result), so that it can go with the result: a log not stored is
// spooled, to be stored when the store answers.
func (r *Runner) execute(ctx context.Context, slot int, job *events.JobQueued, seq, attempt uint64, run string, looked <-chan struct{}, log zerolog.Logger) (*events.JobFinished, func()) {
	res := &events.JobFinished{}
	nothing := func() {}
	if c, ok := cancelledBy(ctx); ok {
		res.Status, res.ExitCode, res.Error = events.StatusCancelled, -1, c.Error()+" before it started"
		return res, nothing
	}
	logPath := filepath.Join(r.cfg.WorkDir, "logs", fmt.Sprintf("%s-%d.log", job.JobID, attempt))
	var chunkSeq uint64
	out, err := newOutput(logPath, r.cfg.LogLimit, func(b []byte) {
		chunkSeq++
		data, err := events.Encode(&events.LogChunk{JobID: job.JobID, QueueSeq: seq, Attempt: attempt, Seq: chunkSeq, Data: string(b)})
		if err == nil {
			_ = r.nc.Publish(events.LogSubject(job.JobID), data)
		}
	})
	if err != nil {
		res.Status, res.ExitCode, res.Error = events.StatusError, -1, "runner: "+err.Error()
		return res, nothing
	}
	ws := filepath.Join(r.cfg.WorkDir, "slots", strconv.Itoa(slot), events.Token(job.Repo))
	// The runner knows the run (its queue sequence) and this delivery of
	// it, not the record's attempt number, which counts every run and
	// delivery of the job (the job page says it): the header names what it
	// knows, so that the two never disagree.
	out.Note("[jetci] %s %s@%s job %s arch %s run %d delivery %d on %s", job.Repo, job.Branch, job.Commit, events.QualifiedJob(job.Module, job.Job), job.Arch, seq, attempt, r.cfg.ID)
	// Secrets are masked from here on: before any step prints.
	secrets, serr := r.secretsFor(job)
	masked := make([]string, 0, len(secrets))
	for _, v := range secrets {
		masked = append(masked, v)
	}
	out.maskSecrets(masked)
	var env []string
	var home, tmp, cacheHome string
	if serr == nil {
		if home, tmp, cacheHome, serr = r.jobDirs(slot, job.Repo, job.Branch); serr == nil {
			env = r.stepEnv(job, attempt, home, tmp, cacheHome, secrets)
		}
	}
	lim := r.limitsFor(job, out)
	t0 := time.Now()
	ran := false // the steps started
	if serr == nil {
		err = r.caches.prepare(ctx, job.Repo, job.RepoURL, job.Commit, ws, log)
	}
	var x *stepExec
	if serr == nil && err == nil {
		x, serr = r.newStepExec(slot, job, ws, home, tmp, cacheHome, env)
	}
	if x != nil {
		res.Exec, res.Emulation = x.mode, r.emulated
		note := "[jetci] steps run " + map[string]string{ExecHost: "on the host", ExecSandbox: "in a sandbox", ExecContainer: "in container image " + x.image}[x.mode]
		if !x.network {
			note += ", without network"
		}
		if r.emulated != "" {
			note += "; " + job.Arch + " emulated: " + r.emulated
		}
		out.Note("%s", note)
		if x.mode == ExecContainer && lim != nil && lim.CPUMs > 0 && x.slotCgroup == nil {
			why := engineCgroupsWhy(x.engine)
			if why == "" {
				why = "no cgroups here"
			}
			out.Note("[jetci] the cpu limit is not enforced in this container (memory and processes are): %s", why)
		}
	}
	switch {
	case serr != nil:
		res.Status, res.ExitCode, res.Error = events.StatusError, -1, "runner: "+serr.Error()
	case errors.Is(err, errNoCommit):
		res.Status, res.ExitCode, res.Error = events.StatusError, -1, err.Error()
	case err != nil:
		res.Status, res.ExitCode, res.Error = events.StatusError, -1, "checkout failed: "+err.Error()
	default:
		out.Note("[jetci] checked out in %s", time.Since(t0).Round(time.Millisecond))
		<-looked // a cancel request made while the job waited stops it here
		if _, ok := cancelledBy(ctx); ok {
			break // "before it started", below
		}
		ran = true
		r.tries(ctx, job, attempt, ws, tmp, x, lim, out, res, log)
		if res.Status != events.StatusCancelled && !stopping(ctx) {
			res.Artifacts = r.uploadArtifacts(ctx, job, seq, attempt, ws, out)
		}
	}
	if c, ok := cancelledBy(ctx); ok && res.Status != events.StatusPassed && res.Status != events.StatusFailed {
		res.Status, res.ExitCode, res.Error = events.StatusCancelled, -1, c.Error()
		if !ran {
			res.Error += " before it started" // during the checkout
		}
	}
	res.Error = out.mask.String(res.Error)
	if res.Error != "" {
		out.Note("[jetci] %s", res.Error)
	}
	size, cut, cerr := out.Close()
	res.LogBytes, res.LogTruncated = size, cut
	if stopping(ctx) {
		_ = os.Remove(logPath) // the job is handed back and runs again
		return res, nothing
	}
	if cerr != nil {
		return res, nothing
	}
	name := events.RunLogObject(job.JobID, seq, attempt, run)
	mem, inMem := out.inMemory()
	var digest string
	if inMem {
		digest = dataDigest(mem)
	} else if digest, err = fileDigest(logPath); err != nil {
		log.Warn().Err(err).Msg("could not read the log back; the result goes without it")
		return res, nothing
	}
	// The result names the log and its digest; the log goes out with the
	// result (one round trip for both, storeLog), and one the store did not
	// take is spooled, to be stored as soon as the store answers, byte for
	// byte what was digested here.
	res.Log, res.LogDigest = name, digest
	return res, func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), logFirstTry)
		defer cancel()
		var err error
		if inMem {
			if err = putFreshData(sctx, r.js, events.BucketLogs, name, "job log", mem); err == nil {
				return
			}
			// Spooled through the file, as a longer log is.
			if werr := os.WriteFile(logPath, mem, 0o644); werr != nil {
				log.Warn().Err(err).AnErr("spool", werr).Msg("could not store or spool the log; the result names it without it")
				return
			}
		} else {
			err = r.storeLog(sctx, name, logPath)
		}
		if err == nil {
			_ = os.Remove(logPath)
		} else if serr := r.spoolLog(name, logPath); serr == nil {
			log.Warn().Err(err).Msg("log store did not answer: log spooled, to be stored when it does")
		} else {
			log.Warn().Err(err).AnErr("spool", serr).Msg("could not store or spool the log; the result names it without it")
		}
	}
}

// steps runs the job's steps in order, stopping at the first failure. Their
// output goes to out and, when tap is set, to tap as well (the test parsers);
// retry numbers the try (JETCI_RETRY: 0, then 1 on a retry...).
func (r *Runner) steps(ctx context.Context, job *events.JobQueued, retry int, x *stepExec, lim *jobLimits, out *output, tap io.Writer, res *events.JobFinished) {
	timeout := time.Duration(job.TimeoutMs) * time.Millisecond
	if timeout <= 0 {
		timeout = defaultTimeout
	}
	deadline := time.Now().Add(timeout)
	xr := *x
	xr.env = append(x.env[:len(x.env):len(x.env)], "JETCI_RETRY="+strconv.Itoa(retry))
	var w io.Writer = out
	if tap != nil {
		w = tee{out, tap}
	}
	res.Status = events.StatusPassed
	for _, step := range job.Steps {
		out.Note("$ %s", step)
		code, err := runStep(ctx, &xr, step, w, deadline, lim)
		var over *limitError
		switch {
		case errors.As(err, &over):
			res.Status, res.ExitCode, res.Error = events.StatusFailed, code, over.Error()
			return
		case errors.Is(err, errTimeout):
			res.Status, res.ExitCode, res.Error = events.StatusError, -1, "timeout after "+timeout.String()
			return
		case err != nil && !stopping(ctx) && ctx.Err() != nil:
			c, _ := cancelledBy(ctx)
			res.Status, res.ExitCode, res.Error = events.StatusCancelled, -1, c.Error()
			return
		case err != nil:
			res.Status, res.ExitCode, res.Error = events.StatusError, -1, err.Error()
			return
		case code != 0:
			res.Status, res.ExitCode = events.StatusFailed, code
			out.Note("[jetci] step exited with code %d", code)
			return
		}
	}
}

// storeLog makes one try to store a run's log (the caller bounds it); a log
// it could not store is spooled by the caller.
func (r *Runner) storeLog(ctx context.Context, name, path string) error {
	return putFreshObject(ctx, r.js, events.BucketLogs, name, "job log", path)
}

// newRunID makes a run id: 64 random bits, hex.
func newRunID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// announce publishes a start event without waiting for its ack; a publish
// that fails or is not acked within 5 s is logged, as a start event that
// could not be published always was (the result follows regardless).
func (r *Runner) announce(ctx context.Context, subject string, msg any, id string, log zerolog.Logger) {
	data, err := events.Encode(msg)
	if err == nil {
		var f jetstream.PubAckFuture
		if f, err = r.js.PublishAsync(subject, data, jetstream.WithMsgID(id)); err == nil {
			go func() {
				t := time.NewTimer(5 * time.Second)
				defer t.Stop()
				select {
				case <-f.Ok():
				case err := <-f.Err():
					log.Warn().Err(err).Msg("could not announce the job start")
				case <-t.C:
					log.Warn().Msg("could not announce the job start: no ack in 5s")
				case <-ctx.Done():
				}
			}()
			return
		}
	}
	log.Warn().Err(err).Msg("could not announce the job start")
}

// stopping reports whether the runner itself is stopping (its context, the
// parent of a job's, ended), as opposed to the job being cancelled.
func stopping(ctx context.Context) bool {
	if ctx.Err() == nil {
		return false
	}
	_, cancelled := cancelledBy(ctx)
	return !cancelled
}

// limitsFor returns the job's limits, tightened by the runner's, and notes
// them in the log; nil when there are none.
func (r *Runner) limitsFor(job *events.JobQueued, out *output) *jobLimits {
	l := r.cfg.Limits
	if job.Limits != nil {
		l = l.Tighter(*job.Limits)
	}
	if l.IsZero() {
		return nil
	}
	if !limitsEnforced {
		out.Note("[jetci] limits (%s) are not enforced on %s", l, runtime.GOOS)
		return nil
	}
	out.Note("[jetci] limits: %s", l)
	return &jobLimits{Limits: l}
}
