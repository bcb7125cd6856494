// Package dispatcher turns commits into jobs. It consumes CommitDetected events
// from JETCI_COMMITS through one durable consumer, reads the pipeline file the
// event carries (or detects a test command from the event's probe of the tree),
// and queues one JobQueued per job and CPU architecture on the JETCI_JOBS work
// queue, routed to exactly one partition: jetci.job.<pool>.<arch>.<class>.…
// A pipeline with modules (modules.go) queues the jobs of the modules the
// commit changed and of every module that depends on them.
//
// A commit whose pipeline cannot be read gets one `error` result that quotes the
// file and line, never a crash or silence. A commit is acknowledged only after
// every job is stored; a redelivered commit is deduplicated by the jobs' Msg-Ids.
//
// It also schedules: aging, the periodic full check, the broken-build flow
// (gate.go), superseded commits (coalesce.go) and culprit finding, which
// bisects a failure after untested commits to the commit that caused it
// (bisect.go).
package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/internal/parts"
	"github.com/jetci/jetci/metrics"
)

// Config configures a dispatcher.
type Config struct {
	Arch           []string         // default arch matrix
	Pool           string           // default pool
	DefaultTimeout time.Duration    // timeout of jobs that set none
	Metrics        *metrics.Metrics // nil: none
	// Gate puts branches under the broken-build flow (off when empty): a
	// failed first check breaks the branch, later commits are held, and a
	// second check of the head after FixWindow opens it again or fails it.
	Gate      []GateRule
	FixWindow time.Duration
	// GateTick is how often fix windows are looked at; 0: every second, or
	// every quarter of a FixWindow shorter than a second (at least 10ms), so
	// that a short window ends on time.
	GateTick time.Duration
	// AgeAfter moves a job that waited this long in its class, untaken, up
	// one class, so that low classes do not starve (0: never).
	AgeAfter time.Duration
	// Periodic is the full check's schedule in cron syntax ("": none); each
	// time it queues every watched branch head × job × arch at the periodic
	// class, skipping heads that passed since the last one if
	// PeriodicSkipPassed.
	Periodic           string
	PeriodicSkipPassed bool
	PeriodicTick       time.Duration // how often the schedule is looked at
	// Coalesce names branches where a new commit cancels the waiting (not
	// running) first checks of older commits. Off by default: every commit
	// is tested.
	Coalesce []GateRule
	// CoalesceRunning names branches (coalesced or not) where a new commit
	// also cancels the running first checks of older commits, their
	// runners killing them ("superseded by <sha>"): a pull request's old
	// head is not worth finishing. Off by default.
	CoalesceRunning []GateRule
	// Bisect names branches where a failure after untested commits (see
	// Coalesce and Gate) is bisected to the commit that caused it; BisectTick
	// is how often pending decisions and unanswered runs are looked at.
	Bisect     []GateRule
	BisectTick time.Duration
}

// DefaultConfig tests on this machine's architecture in the default pool.
func DefaultConfig() Config {
	return Config{Arch: []string{runtime.GOARCH}, Pool: "default", DefaultTimeout: 30 * time.Minute,
		FixWindow: 30 * time.Minute, AgeAfter: time.Hour, PeriodicTick: time.Second,
		BisectTick: time.Second}
}

// gateTick is GateTick, or its default for FixWindow.
func (c Config) gateTick() time.Duration {
	switch {
	case c.GateTick > 0:
		return c.GateTick
	case c.FixWindow < time.Second:
		return max(c.FixWindow/4, 10*time.Millisecond)
	}
	return time.Second
}

// Validate reports the first bad field.
func (c Config) Validate() error {
	if len(c.Arch) == 0 {
		return errors.New("dispatcher: Arch is empty: name at least one architecture")
	}
	for i, a := range c.Arch {
		if err := events.ValidName("arch", a); err != nil {
			return fmt.Errorf("dispatcher: Arch: %w", err)
		}
		if slices.Contains(c.Arch[:i], a) {
			return fmt.Errorf("dispatcher: Arch: %q is listed twice", a)
		}
	}
	if err := events.ValidName("pool", c.Pool); err != nil {
		return fmt.Errorf("dispatcher: Pool: %w", err)
	}
	if len(c.Gate) > 0 && (c.FixWindow <= 0 || c.GateTick < 0) {
		return fmt.Errorf("dispatcher: FixWindow %s, GateTick %s: want more than 0", c.FixWindow, c.GateTick)
	}
	if c.Periodic != "" {
		if _, err := ParseSchedule(c.Periodic); err != nil {
			return fmt.Errorf("dispatcher: Periodic: %w", err)
		}
		if c.PeriodicTick <= 0 {
			return fmt.Errorf("dispatcher: PeriodicTick %s: want more than 0", c.PeriodicTick)
		}
	}
	if len(c.Bisect) > 0 && c.BisectTick <= 0 {
		return fmt.Errorf("dispatcher: BisectTick %s: want more than 0", c.BisectTick)
	}
	if c.DefaultTimeout <= 0 || c.DefaultTimeout > MaxTimeout {
		return fmt.Errorf("dispatcher: DefaultTimeout %s: want more than 0 and at most %s", c.DefaultTimeout, MaxTimeout)
	}
	return nil
}

// Dispatcher is the commit-to-jobs service.
type Dispatcher struct {
	cfg Config
	js  jetstream.JetStream
	log zerolog.Logger
	now func() time.Time

	mu        sync.Mutex
	consumers map[string]bool      // pool/arch whose job consumers exist
	checked   map[string]time.Time // pool/arch -> last look for a runner serving it
	gate      *gate                // the broken-build flow's buckets; nil when no branch is gated
	parsed    pipelineCache        // the last pipeline files read
	bisect    *bisector            // culprit finding's state; nil when no branch is bisected
}

// New returns a dispatcher; Run starts it.
func New(cfg Config, js jetstream.JetStream, log zerolog.Logger) (*Dispatcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	// Results it publishes (queued events, errors) carry the service key's
	// signature: the reporter takes no unsigned result.
	js = events.SigningJetStream(js, events.LazyServiceSigner(js))
	return &Dispatcher{cfg: cfg, js: js, log: log, now: time.Now, consumers: map[string]bool{}, checked: map[string]time.Time{}}, nil
}

// Expand returns the jobs of a commit, or the error result to publish instead.
func (d *Dispatcher) Expand(ev *events.CommitDetected) ([]*events.JobQueued, *events.JobFinished) {
	var pl *Pipeline
	var err error
	switch {
	case ev.PipelineErr != "":
		err = errors.New(ev.PipelineErr)
	case ev.PipelinePath != "":
		pl, err = d.parsed.parse(ev.PipelinePath, ev.Pipeline)
	default:
		pl, err = Detect(ev.Probe)
	}
	now := d.now().UTC()
	if err != nil {
		return nil, d.failure(ev, err, now)
	}
	if n := d.count(pl); n > MaxJobs {
		err = fmt.Errorf("%s: %d jobs (each job times each arch); the limit is %d", pl.Path, n, MaxJobs)
		return nil, d.failure(ev, err, now)
	}
	if err := pl.checkGlobs(ev.ModuleGlobs); err != nil {
		return nil, d.failure(ev, err, now)
	}
	var jobs []*events.JobQueued
	if ev.OnlyModule == "" {
		for _, j := range pl.Jobs {
			jobs = d.expandJob(jobs, ev, "", j, now)
		}
	}
	// A re-check of one repo-wide job (no module named) is that job alone,
	// not also the job of that name of every module.
	topLevelOnly := ev.OnlyJob != "" && ev.OnlyModule == "" && pl.hasJob(ev.OnlyJob)
	if pl.Graph != nil && !topLevelOnly {
		sel := pl.selectModules(ev)
		mods := pl.Graph.Modules()
		for _, i := range sel.Modules {
			if ev.OnlyModule != "" && mods[i].Name != ev.OnlyModule {
				continue
			}
			for _, j := range mods[i].Jobs {
				jobs = d.expandJob(jobs, ev, mods[i].Name, j, now)
			}
		}
		d.log.Debug().Str("repo", ev.Repo).Str("branch", ev.Branch).Str("commit", events.Short(ev.Commit)).
			Int("modules", len(sel.Modules)).Int("of", len(mods)).Bool("all", sel.All).Str("why", sel.Why).Msg("modules selected")
	}
	if len(jobs) == 0 && (ev.OnlyJob != "" || ev.OnlyArch != "" || ev.OnlyModule != "") {
		what := fmt.Sprintf("job %q on arch %q", ev.OnlyJob, ev.OnlyArch)
		if ev.OnlyModule != "" {
			what = fmt.Sprintf("job %q of module %q on arch %q", ev.OnlyJob, ev.OnlyModule, ev.OnlyArch)
		}
		err = fmt.Errorf("%s has no %s to re-check", pl.Path, what)
		return nil, d.failure(ev, err, now)
	}
	return jobs, nil
}

// expandJob appends the jobs of j (one per arch) of module ("": of the
// whole repository), as narrowed by a re-check.
func (d *Dispatcher) expandJob(jobs []*events.JobQueued, ev *events.CommitDetected, module string, j Job, now time.Time) []*events.JobQueued {
	arch, pool, timeout := j.Arch, j.Pool, j.Timeout
	if len(arch) == 0 {
		arch = d.cfg.Arch
	}
	if pool == "" {
		pool = d.cfg.Pool
	}
	if timeout == 0 {
		timeout = d.cfg.DefaultTimeout
	}
	if ev.OnlyJob != "" && j.Name != ev.OnlyJob {
		return jobs
	}
	for _, a := range arch {
		if ev.OnlyArch != "" && a != ev.OnlyArch {
			continue
		}
		ref := events.JobRef{Repo: ev.Repo, Branch: ev.Branch, Commit: ev.Commit, Job: j.Name, Arch: a, Module: module}
		ref.JobID = events.JobID(ref.Repo, ref.Branch, ref.Commit, ref.QualifiedJob(), ref.Arch)
		secrets := j.Secrets
		if _, pull := events.PullNumber(ev.Branch); pull {
			secrets = nil // a pull request's code may be anyone's (a fork): no secrets (README, GitHub / Gitea / GitLab)
		}
		jobs = append(jobs, &events.JobQueued{
			JobRef: ref, RepoURL: ev.RepoURL, Pool: pool, Class: ev.Class,
			Steps: j.Steps, Env: j.Env, TimeoutMs: timeout.Milliseconds(), Artifacts: j.Artifacts,
			Author: ev.Author, Subject: ev.Subject, TriggerID: ev.TriggerID, QueuedAt: now,
			Reports: j.Reports, Retry: j.Retry, Secrets: secrets, Limits: limitsOf(j.Limits),
			Image: j.Image, Network: j.Network,
		})
	}
	return jobs
}

// MaxJobs bounds the jobs one commit makes, so that a pipeline file cannot
// flood the queue (or the dispatcher's memory) with its matrix.
const MaxJobs = 5000

// count is the number of jobs pl makes.
func (d *Dispatcher) count(pl *Pipeline) int {
	n := 0
	add := func(jobs []Job) {
		for _, j := range jobs {
			if len(j.Arch) == 0 {
				n += len(d.cfg.Arch)
			} else {
				n += len(j.Arch)
			}
		}
	}
	add(pl.Jobs)
	if pl.Graph != nil {
		for _, m := range pl.Graph.Modules() {
			add(m.Jobs)
		}
	}
	return n
}

// failure is the error result of a commit whose pipeline cannot run.
func (d *Dispatcher) failure(ev *events.CommitDetected, err error, now time.Time) *events.JobFinished {
	ref := events.JobRef{Repo: ev.Repo, Branch: ev.Branch, Commit: ev.Commit, Job: "pipeline", Arch: "any"}
	ref.JobID = events.JobID(ref.Repo, ref.Branch, ref.Commit, ref.Job, ref.Arch)
	return &events.JobFinished{
		JobRef: ref, Attempt: 1, Runner: "dispatcher", Status: events.StatusError, ExitCode: -1,
		Error: err.Error(), FinishedAt: now, Author: ev.Author, Subject: ev.Subject, Class: ev.Class, TriggerID: ev.TriggerID,
	}
}

// Run consumes commits until ctx ends.
func (d *Dispatcher) Run(ctx context.Context) error {
	if err := d.openGate(ctx); err != nil {
		return err
	}
	// Run owns its parts and waits for them all. The commit consumer is the
	// dispatcher: its failure ends Run. The others are restarted when they
	// fail (with a pause, shown in /healthz and the metrics), so that a
	// broken culprit search does not stop the dispatching of commits.
	g, _ := parts.New(ctx, "dispatcher", d.cfg.Metrics, d.log)
	g.Restart("reaper", NewReaper(d.js.Conn(), d.js, d.cfg.Metrics, d.log.With().Str("component", "reaper").Logger()).Run)
	g.Restart("aging", d.runAging)
	g.Restart("periodic", d.runPeriodic)
	g.Restart("jetstream watch", func(ctx context.Context) error {
		return parts.WatchJetStream(ctx, d.js, events.StreamJobs, events.HealthSubject("dispatcher", nuid.Next()), d.cfg.Metrics, nil, d.log)
	})
	if d.gate != nil {
		g.Restart("broken-build flow", d.RunGate)
	}
	if len(d.cfg.Bisect) > 0 {
		g.Restart("culprit search", d.RunBisect)
	}
	cfg := jetstream.ConsumerConfig{
		Durable:       events.ConsumerDispatcher,
		Description:   "turns commits into jobs",
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       commitAckWait, // a commit is dispatched in milliseconds; handle keeps a long one alive
	}
	g.Must("commits", func(ctx context.Context) error {
		// Commits are taken in groups only where no feature reasons about
		// the order of dispatches across commits (coalescing, the broken-build
		// flow, culprit search): those keep one commit at a time, as before
		// (TestBisectSurvivesADispatcherRestart failed with groups).
		buffer, batch := commitBatch, commitBatch
		if len(d.cfg.Coalesce) > 0 || len(d.cfg.CoalesceRunning) > 0 || len(d.cfg.Gate) > 0 || len(d.cfg.Bisect) > 0 {
			buffer, batch = 4, 1
		}
		return events.ConsumeBatches(ctx, d.js, events.StreamCommits, cfg, buffer, batch, d.log,
			func(ms []jetstream.Msg) { d.handleBatch(ctx, ms) })
	})
	return g.Wait()
}

// commitBatch bounds the commits pulled ahead and handled together: their
// jobs go to the queue as one group of asynchronous publishes, so a burst of
// commits (a full check's 5,000) costs a few round trips per batch instead of
// three per commit. At 64 the full check took 78 groups of three awaited
// round trips each, every one slow while the runners drained the queue on
// the same CPUs (all queued at 4–5.5 s); at 512, ten groups.
const commitBatch = 512

// handleBatch dispatches commits in stream order. Each is decoded, held by
// the broken-build flow or prepared (expanded, its checks noted) one after
// another as before; then the jobs of every prepared commit are queued as one
// group (enqueue), and each commit is finished (superseding older jobs) and
// acked. A commit that fails is handed back alone; one whose jobs could not
// all be queued is handed back with the others of the group, and the Msg-Ids
// make the retry's duplicates harmless.
func (d *Dispatcher) handleBatch(ctx context.Context, ms []jetstream.Msg) {
	// A group of commits of thousands of jobs can take longer to queue than
	// the commit consumer's ack wait: keep telling the server they are being
	// worked on, or it would hand them to another handler meanwhile.
	for _, m := range ms {
		_ = m.InProgress() // the ack wait runs from now, not from when it was buffered
	}
	stopBeat := make(chan struct{})
	beatDone := make(chan struct{})
	go func() {
		defer close(beatDone)
		t := time.NewTicker(commitAckWait / 4)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				for _, m := range ms {
					_ = m.InProgress()
				}
			case <-stopBeat:
				return
			}
		}
	}()
	type commit struct {
		m    jetstream.Msg
		ev   *events.CommitDetected
		seq  uint64
		log  zerolog.Logger
		jobs []*events.JobQueued
	}
	var acks, naks []jetstream.Msg
	var prepared []commit
	var all []*events.JobQueued
	for _, m := range ms {
		ev, err := events.DecodeAs[events.CommitDetected](m.Data())
		if err != nil {
			d.log.Error().Err(err).Str("subject", m.Subject()).Msg("dropping a bad commit message")
			_ = m.Term()
			continue
		}
		log := d.log.With().Str("repo", ev.Repo).Str("branch", ev.Branch).Str("commit", events.Short(ev.Commit)).Logger()
		var seq uint64 // the commit's place in its branch
		if meta, _ := m.Metadata(); meta != nil {
			seq = meta.Sequence.Stream
		}
		if d.gate != nil {
			held, err := d.hold(ctx, ev, seq)
			if err != nil {
				log.Warn().Err(err).Msg("broken-build flow; will retry")
				_ = m.NakWithDelay(time.Second)
				continue
			}
			if held {
				acks = append(acks, m)
				continue
			}
		}
		jobs, done, err := d.prepare(ctx, ev, seq, log)
		switch {
		case err != nil:
			log.Warn().Err(err).Msg("dispatching a commit failed; will retry")
			naks = append(naks, m)
		case done:
			acks = append(acks, m)
		default:
			prepared = append(prepared, commit{m: m, ev: ev, seq: seq, log: log, jobs: jobs})
			all = append(all, jobs...)
		}
	}
	if err := d.enqueue(ctx, all, ""); err != nil {
		for _, c := range prepared {
			c.log.Warn().Err(err).Msg("dispatching a commit failed; will retry")
			naks = append(naks, c.m)
		}
		prepared = nil
	}
	for _, c := range prepared {
		if err := d.dispatched(ctx, c.ev, c.seq, c.jobs, c.log); err != nil {
			c.log.Warn().Err(err).Msg("dispatching a commit failed; will retry")
			naks = append(naks, c.m)
			continue
		}
		acks = append(acks, c.m)
	}
	close(stopBeat)
	<-beatDone
	for _, m := range naks {
		_ = m.NakWithDelay(dispatchRetry)
	}
	// The acks are awaited together: one round trip for the group.
	var wg sync.WaitGroup
	for _, m := range acks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.DoubleAck(ctx); err != nil {
				d.log.Warn().Err(err).Msg("ack commit")
			}
		}()
	}
	wg.Wait()
}

// dispatch queues a commit's jobs. salt, when set, makes their Msg-Ids new: a
// released commit whose jobs were queued once already (and withdrawn when its
// branch broke) must not be taken for a duplicate of that first queueing.
func (d *Dispatcher) dispatch(ctx context.Context, ev *events.CommitDetected, seq uint64, salt string, log zerolog.Logger) error {
	jobs, done, err := d.prepare(ctx, ev, seq, log)
	if err != nil || done {
		return err
	}
	if err := d.enqueue(ctx, jobs, salt); err != nil {
		return err
	}
	return d.dispatched(ctx, ev, seq, jobs, log)
}

// prepare expands a commit into its jobs and notes them with the broken-build
// flow, before they are queued. A commit without a runnable pipeline has its
// error result published here, and is done.
func (d *Dispatcher) prepare(ctx context.Context, ev *events.CommitDetected, seq uint64, log zerolog.Logger) (jobs []*events.JobQueued, done bool, err error) {
	jobs, fail := d.Expand(ev)
	for _, j := range jobs {
		j.CommitSeq = seq
	}
	if fail != nil {
		if err := publish(ctx, d.js, events.ResultSubject(ev.Repo, ev.Branch, events.KindFinished), fail,
			events.ResultMsgID(fail.JobID, 0, 1, events.KindFinished)); err != nil {
			return nil, false, err
		}
		log.Warn().Str("error", fail.Error).Msg("commit has no runnable pipeline")
		if d.gate != nil {
			return nil, true, d.noteCheckJobs(ctx, ev, seq, 0)
		}
		return nil, true, nil
	}
	if d.gate != nil {
		// Before the jobs are queued, so that a run the flow adopts as a
		// check is known before any of its results can come.
		if err := d.noteCheckJobs(ctx, ev, seq, len(jobs)); err != nil {
			return nil, false, err
		}
	}
	return jobs, false, nil
}

// dispatched finishes a commit whose jobs are queued: a new commit of a
// coalesced branch supersedes the older commits' jobs still waiting.
func (d *Dispatcher) dispatched(ctx context.Context, ev *events.CommitDetected, seq uint64, jobs []*events.JobQueued, log zerolog.Logger) error {
	log.Info().Int("jobs", len(jobs)).Str("class", string(ev.Class)).Str("subject", ev.Subject).Msg("commit dispatched")
	if ev.Class == events.ClassFirst && len(jobs) > 0 && (d.coalesced(ev.Repo, ev.Branch) || d.coalescedRunning(ev.Repo, ev.Branch)) {
		first := jobs[0].QueueSeq
		for _, j := range jobs {
			first = min(first, j.QueueSeq)
		}
		if err := d.supersede(ctx, ev, seq, first, jobs); err != nil {
			return fmt.Errorf("supersede older commits' jobs: %w", err) // retried; the jobs are deduplicated
		}
		if err := d.supersededAlready(ctx, ev, seq, jobs); err != nil {
			return fmt.Errorf("supersede this commit's jobs by a newer commit's: %w", err)
		}
	}
	return nil
}

// enqueue stores a commit's jobs in the work queue, then their queued events
// on the results stream (which carry each job's queue sequence). Each group is
// published asynchronously and awaited as a whole, in order on one connection:
// two round trips per commit instead of two per job. The commit is acked only
// after both; a failure leaves it to be retried, and the Msg-Ids make the
// retry's duplicates harmless.
func (d *Dispatcher) enqueue(ctx context.Context, jobs []*events.JobQueued, salt string) error {
	// In batches: a commit of thousands of jobs must not exceed the client's
	// limit of asynchronous publishes in flight (4,000).
	for len(jobs) > enqueueBatch {
		if err := d.enqueueBatch(ctx, jobs[:enqueueBatch], salt); err != nil {
			return err
		}
		jobs = jobs[enqueueBatch:]
	}
	return d.enqueueBatch(ctx, jobs, salt)
}

// dispatchRetry is how soon a commit whose dispatch failed is tried again:
// soon, as the usual cause is a stream electing a new leader.
const dispatchRetry = 250 * time.Millisecond

// commitAckWait is the commit consumer's ack wait.
const commitAckWait = 10 * time.Second

// enqueueBatch bounds the jobs published before their acks are awaited.
const enqueueBatch = 1000

func (d *Dispatcher) enqueueBatch(ctx context.Context, jobs []*events.JobQueued, salt string) error {
	futs := make([]jetstream.PubAckFuture, 0, len(jobs))
	for _, j := range jobs {
		if err := d.ensureConsumers(ctx, j.Pool, j.Arch); err != nil {
			return err
		}
		f, err := publishAsync(d.js, events.JobSubject(j.Pool, j.Arch, j.Class, j.Repo, j.Branch), j, events.JobMsgID(j.JobID, j.TriggerID)+salt)
		if err != nil {
			return err
		}
		futs = append(futs, f)
	}
	acks, err := awaitAll(ctx, futs)
	if err != nil {
		return err
	}
	futs = futs[:0]
	for i, j := range jobs {
		j.QueueSeq = acks[i].Sequence
		d.cfg.Metrics.JobQueued(j.Pool, j.Arch, j.Class)
		f, err := publishAsync(d.js, events.ResultSubject(j.Repo, j.Branch, events.KindQueued), j,
			events.ResultMsgID(j.JobID, j.QueueSeq, 0, events.KindQueued))
		if err != nil {
			return err
		}
		futs = append(futs, f)
	}
	_, err = awaitAll(ctx, futs)
	return err
}

// publishTimeout bounds the wait for the next ack of a group of asynchronous
// publishes: each ack that comes in starts it again, so a big group has the
// time it needs, while a publish lost with a stream leader (a cluster node
// died) is given up after seconds and retried (the Msg-Ids make the retry's
// duplicates harmless) instead of stalling every commit behind it.
const publishTimeout = 1500 * time.Millisecond

func publishAsync(js jetstream.JetStream, subject string, msg any, id string) (jetstream.PubAckFuture, error) {
	data, err := events.Encode(msg)
	if err != nil {
		return nil, err
	}
	f, err := js.PublishAsync(subject, data, jetstream.WithMsgID(id))
	if err != nil {
		return nil, fmt.Errorf("publish %s: %w", subject, err)
	}
	return f, nil
}

// awaitAll waits for every future's ack, in order.
func awaitAll(ctx context.Context, futs []jetstream.PubAckFuture) ([]*jetstream.PubAck, error) {
	acks := make([]*jetstream.PubAck, len(futs))
	timeout := time.NewTimer(publishTimeout)
	defer timeout.Stop()
	for i, f := range futs {
		select {
		case ack := <-f.Ok():
			acks[i] = ack
			if !timeout.Stop() {
				<-timeout.C
			}
			timeout.Reset(publishTimeout)
		case err := <-f.Err():
			return nil, fmt.Errorf("publish %s: %w", f.Msg().Subject, err)
		case <-timeout.C:
			return nil, fmt.Errorf("publish %s: no ack for %s", f.Msg().Subject, publishTimeout)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return acks, nil
}

// ensureConsumers makes the job consumers of a partition exist before its first
// job is queued, so that the job is held by a durable consumer even while no
// runner serves it, and warns when none does.
func (d *Dispatcher) ensureConsumers(ctx context.Context, pool, arch string) error {
	key := pool + "/" + arch
	d.mu.Lock()
	done := d.consumers[key]
	d.mu.Unlock()
	if !done {
		if _, err := events.EnsureJobConsumers(ctx, d.js, pool, arch); err != nil {
			return err
		}
		d.mu.Lock()
		d.consumers[key] = true
		d.mu.Unlock()
	}
	d.warnIfUnserved(ctx, pool, arch)
	return nil
}

// warnIfUnserved looks at most once a minute per partition.
func (d *Dispatcher) warnIfUnserved(ctx context.Context, pool, arch string) {
	key := pool + "/" + arch
	d.mu.Lock()
	recent := d.now().Sub(d.checked[key]) < time.Minute
	if !recent {
		d.checked[key] = d.now()
	}
	d.mu.Unlock()
	if recent {
		return
	}
	served, err := runnerServes(ctx, d.js, pool, arch)
	if err != nil || served {
		return
	}
	d.log.Warn().Str("pool", pool).Str("arch", arch).
		Msgf("no runner serves pool %s arch %s: its jobs wait in the queue until one joins ('jetci runner --arch %s --pool %s')", pool, arch, arch, pool)
}

// runnerServes reports whether a live runner has announced itself for pool and arch.
func runnerServes(ctx context.Context, js jetstream.JetStream, pool, arch string) (bool, error) {
	kv, err := js.KeyValue(ctx, events.BucketRunners)
	if err != nil {
		return false, err
	}
	w, err := kv.Watch(ctx, events.LeaseKey("*"), jetstream.IgnoreDeletes())
	if err != nil {
		return false, err
	}
	defer w.Stop()
	for e := range w.Updates() {
		if e == nil {
			return false, nil
		}
		var r events.Lease
		if json.Unmarshal(e.Value(), &r) == nil && r.Arch == arch && r.Pool == pool {
			return true, nil
		}
	}
	return false, nil
}

func publishAck(ctx context.Context, js jetstream.JetStream, subject string, msg any, id string) (*jetstream.PubAck, error) {
	data, err := events.Encode(msg)
	if err != nil {
		return nil, err
	}
	ack, err := js.Publish(ctx, subject, data, jetstream.WithMsgID(id))
	if err != nil {
		return nil, fmt.Errorf("publish %s: %w", subject, err)
	}
	return ack, nil
}

func publish(ctx context.Context, js jetstream.JetStream, subject string, msg any, id string) error {
	_, err := publishAck(ctx, js, subject, msg, id)
	return err
}
