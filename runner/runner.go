// Package runner runs jobs. A runner serves one CPU architecture and one pool: it
// pulls jobs from the JETCI_JOBS work queue through the durable consumers shared
// by every runner of that (pool, arch), one per priority class, always trying the
// highest class first and taking one job per free slot with FetchNoWait (never a
// prefetching consumer, whose buffered messages would time out; a slot asks for
// its next job only while its last one's ack is on its way). Job publishes also
// reach a core-NATS subscription that wakes idle slots at once and tells which
// classes have work (a class found empty is not asked again until then); a slow
// poll catches redeliveries.
//
// For each job it checks the commit out with go-git from a per-repo bare cache
// into a workspace owned by the slot and moved from commit to commit (the
// workspace's .git holds HEAD and index, objects come from the cache, and the git
// CLI finds them through objects/info/alternates); a slot already on the
// job's commit, whose tracked files the last job left as they were, only has
// that job's new files removed. It runs the steps with
// `sh -c` in their own process group, from a clean environment (nothing of the
// runner's own but PATH, the locale and Config.PassEnv, plus the job's env and
// the secrets it names, which are masked in its output), under a timeout and
// optional resource limits that kill the whole group, streams the output live, keeps up to LogLimit bytes, stores the log in
// the jetci-logs object store, and publishes the result. It acknowledges the job
// only after JetStream stored the result (kept in an fsynced on-disk outbox
// from the moment a first publish fails, so an outage or restart loses none);
// until the ack, in-progress acks and the runner's lease keep the job from going
// elsewhere, and if the runner dies the job goes to another runner.
//
// Test results: while the steps run, their output also feeds parsers for
// `go test -json` and Python `unittest -v` lines; after the steps, the JUnit
// XML files the job's reports: globs name are read too (tests.go,
// testparse.go, junit.go). The result carries at most events.MaxTests of them,
// failures first. A job with retry: N whose steps fail runs them again on a
// fresh checkout, within the same delivery (retry.go): a pass on a retry is
// passed with flaky set, so the broken-build flow never sees the flake.
package runner

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/internal/parts"
	"github.com/jetci/jetci/metrics"
)

// Config configures a runner.
type Config struct {
	ID       string // shown in results; unique per runner process
	Arch     string // the CPU architecture served
	Pool     string // the pool served
	Slots    int    // jobs run in parallel
	WorkDir  string // caches, workspaces, logs and the result outbox
	LogLimit int64  // bytes of output kept per job
	// ArtifactLimit bounds the bytes of artifacts one job may store.
	ArtifactLimit int64
	IdlePoll      time.Duration    // how often an idle slot looks for redelivered jobs
	Grace         time.Duration    // on stop, how long running jobs may go on before they are killed and handed back
	Metrics       *metrics.Metrics // nil: none
	// Secrets are the values jobs ask for by name (secrets: in the pipeline
	// file). A job gets only those it names and its repo and branch may have
	// (the first in the list that matches), and their values are masked in
	// its log. They stay on this machine: nothing puts them on the bus.
	Secrets []Secret
	// PassEnv names variables of the runner's environment that steps get
	// (NAME, or PREFIX* for every name that starts so). Nothing else of the
	// runner's environment reaches a step besides PATH, LANG, LC_*, TZ,
	// USER and LOGNAME.
	PassEnv []string
	// Limits are every job's default and maximum resource limits: a job's
	// own limits apply where they are tighter.
	Limits events.Limits
	// Exec is how steps run: host, sandbox or container ("": sandbox on
	// Linux, host elsewhere). See backend.go.
	Exec string
	// HostFallback lets a runner whose machine allows no sandbox run its
	// steps on the host (with a warning at start) instead of refusing to start.
	HostFallback bool
	// SandboxUID is the first user id steps run as when the runner is root
	// (slot N: SandboxUID+N; 0: DefaultSandboxUID).
	SandboxUID int
	// Image is the container image of jobs that name none (--exec container).
	Image string
	// Identity signs every result and start event (events.BucketKeys); the
	// reporter accepts them only with a signature of an identity the admin
	// registered under IdentityName (default: the ID, with odd characters
	// made "-"), which must be the ID or a prefix of it ending before a "-".
	// Nil: a key made up for this process and registered by the runner
	// itself, which only an open server (jetci up) allows.
	Identity     nkeys.KeyPair
	IdentityName string
}

var idRE = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// ownIdentity is the key a runner without a given identity makes up, kept
// in its work directory so that a restart signs with the same key (events
// it published before are still checked against it).
func ownIdentity(workDir string) (nkeys.KeyPair, error) {
	path := filepath.Join(workDir, "identity.seed")
	if data, err := os.ReadFile(path); err == nil {
		if kp, err := nkeys.FromSeed(bytes.TrimSpace(data)); err == nil {
			return kp, nil
		}
	}
	kp, err := nkeys.CreateUser()
	if err != nil {
		return nil, err
	}
	seed, err := kp.Seed()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(workDir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, seed, 0o600); err != nil {
		return nil, err
	}
	return kp, nil
}

// DefaultConfig serves this machine's architecture in the default pool, one job
// per CPU at a time.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	return Config{
		ID:   fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b)),
		Arch: runtime.GOARCH, Pool: "default", Slots: runtime.NumCPU(), WorkDir: ".jetci-runner",
		LogLimit: 8 << 20, ArtifactLimit: 100 << 20, IdlePoll: time.Second, Grace: 30 * time.Second,
	}
}

// Validate reports the first bad field.
func (c Config) Validate() error {
	if c.ID == "" {
		return errors.New("runner: ID is empty")
	}
	if err := events.ValidName("arch", c.Arch); err != nil {
		return fmt.Errorf("runner: Arch: %w", err)
	}
	if err := events.ValidName("pool", c.Pool); err != nil {
		return fmt.Errorf("runner: Pool: %w", err)
	}
	switch {
	case c.Slots < 1 || c.Slots > 256:
		return fmt.Errorf("runner: Slots %d: want 1 to 256", c.Slots)
	case c.WorkDir == "":
		return errors.New("runner: WorkDir is empty")
	case c.LogLimit < 1024:
		return fmt.Errorf("runner: LogLimit %d: want at least 1024 bytes", c.LogLimit)
	case c.ArtifactLimit < 0:
		return fmt.Errorf("runner: ArtifactLimit %d: want 0 (no artifacts) or more", c.ArtifactLimit)
	case c.IdlePoll <= 0:
		return fmt.Errorf("runner: IdlePoll %s: want more than 0", c.IdlePoll)
	case c.Grace < 0:
		return fmt.Errorf("runner: Grace %s: want 0 or more", c.Grace)
	case c.Limits.CPUMs < 0 || c.Limits.MemoryBytes < 0 || c.Limits.Processes < 0:
		return fmt.Errorf("runner: Limits %+v: want 0 (none) or more", c.Limits)
	}
	for _, s := range c.Secrets {
		if err := s.validate(); err != nil {
			return fmt.Errorf("runner: Secrets: %w", err)
		}
	}
	for _, p := range c.PassEnv {
		if err := validPassEnv(p); err != nil {
			return fmt.Errorf("runner: PassEnv: %w", err)
		}
	}
	if err := validExec(c.Exec); err != nil {
		return fmt.Errorf("runner: %w", err)
	}
	if c.SandboxUID < 0 || c.SandboxUID > 1<<31-1-256 {
		return fmt.Errorf("runner: SandboxUID %d: want 0 (the default) or a user id", c.SandboxUID)
	}
	return nil
}

// Runner is the job-running service.
type Runner struct {
	cfg    Config
	id     string // cfg.ID made safe as a KV key
	nc     *nats.Conn
	js     jetstream.JetStream
	log    zerolog.Logger
	caches *caches
	wake   *notifier
	hints  classHints
	// How steps run (backend.go): the backend in use, the container engine
	// ("" when none, engineErr says why) and the emulation of a foreign
	// architecture ("" natively).
	mode      string
	engine    string
	engineErr string
	emulated  string
	cgMu      sync.Mutex
	cgs       map[int]*stepCgroup // slot -> the cgroup its sandboxed steps run in

	mu    sync.Mutex
	busy  map[int]events.LeasedJob // slot -> the job it runs
	jobs  map[string]*running      // job id -> the job running, to cancel it
	lost  map[string]bool          // jobs whose lease lapsed: handed to another runner
	kick  chan struct{}            // asks for the lease to be written now
	lease leaseState
	born  time.Time
	inc   string // this process's incarnation (events.Lease)

	ensured time.Time // when the job consumers were last created again

	cancelKV jetstream.KeyValue // the cancel requests' bucket, once looked up (cancelBucket)

	lock *workLock // held on WorkDir from New until Run returns (or Close)

	spoolKick chan struct{} // a log was spooled: upload it now
}

// New returns a runner; Run starts it.
func New(cfg Config, nc *nats.Conn, js jetstream.JetStream, log zerolog.Logger) (*Runner, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.WorkDir, 0o755); err != nil {
		return nil, fmt.Errorf("runner: WorkDir: %w", err)
	}
	// The work directory is this runner's alone: another runner moving the
	// same workspaces would make a job test a commit it was not given.
	lock, err := lockWorkDir(cfg.WorkDir)
	if err != nil {
		return nil, err
	}
	if cfg.IdentityName == "" {
		cfg.IdentityName = events.IdentityName(cfg.ID)
	}
	if err := events.ValidIdentity(cfg.IdentityName); err != nil {
		lock.release()
		return nil, fmt.Errorf("runner: %w", err)
	}
	if !events.IdentityCovers(cfg.IdentityName, events.IdentityName(cfg.ID)) {
		lock.release()
		return nil, fmt.Errorf("runner: identity %q cannot speak for runner id %q: the id must be the name or start with the name and '-'",
			cfg.IdentityName, cfg.ID)
	}
	if cfg.Identity == nil {
		kp, err := ownIdentity(cfg.WorkDir)
		if err != nil {
			lock.release()
			return nil, fmt.Errorf("runner: identity: %w", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = events.RegisterRunner(ctx, js, cfg.IdentityName, kp) // a refusal's timeout: the caller's Conn.Explain names it
		cancel()
		if err != nil {
			lock.release()
			return nil, fmt.Errorf("runner: no identity given (--identity), and registering one made up here failed: %w "+
				"(on a server with users, have the admin issue one: jetci setup --runner-identity %s=FILE, then jetci runner --identity FILE)",
				err, cfg.IdentityName)
		}
		cfg.Identity = kp
	}
	js = events.SigningJetStream(js, events.RunnerSigner(cfg.Identity, cfg.IdentityName))
	for _, d := range []string{"cache", "slots", "logs", "outbox", "home", "tmp", "spool"} {
		if err := os.MkdirAll(filepath.Join(cfg.WorkDir, d), 0o755); err != nil {
			lock.release()
			return nil, fmt.Errorf("runner: WorkDir: %w", err)
		}
	}
	if cfg.execMode() != ExecHost {
		// The work dir holds every slot's workspace, the caches and the
		// outbox: steps run as other users and must not reach it by name.
		if err := os.Chmod(cfg.WorkDir, 0o700); err != nil {
			lock.release()
			return nil, fmt.Errorf("runner: WorkDir: %w", err)
		}
	}
	x, err := chooseExec(cfg, log)
	if err != nil {
		lock.release()
		return nil, err
	}
	return &Runner{lock: lock,
		mode: x.mode, engine: x.engine, engineErr: x.engineErr, emulated: x.emulated,
		cfg: cfg, id: idRE.ReplaceAllString(cfg.ID, "-"), nc: nc, js: js, log: log,
		caches: &caches{dir: filepath.Join(cfg.WorkDir, "cache"), per: map[string]*sync.RWMutex{}},
		wake:   newNotifier(), busy: map[int]events.LeasedJob{}, jobs: map[string]*running{}, lost: map[string]bool{}, kick: make(chan struct{}, 1), born: time.Now().UTC(),
		spoolKick: make(chan struct{}, 1), inc: incarnation(),
	}, nil
}

// Run takes and runs jobs until ctx ends. Then it takes no more; jobs still
// running get Grace to finish, and are then killed and handed back to the queue.
func (r *Runner) Run(ctx context.Context) error {
	defer r.Close()
	defer r.removeCgroups()
	var cons []jetstream.Consumer
	err := events.Retry(ctx, r.log, "create job consumers", 5*time.Second, func(ctx context.Context) error {
		var err error
		cons, err = events.EnsureJobConsumers(ctx, r.js, r.cfg.Pool, r.cfg.Arch)
		return err
	})
	if err != nil {
		return nil // ctx ended
	}
	// Says so in the log and /healthz when the server's JetStream stops
	// answering (a standalone nats-server on a full disk).
	wctx, stopWatch := context.WithCancel(ctx)
	var watch sync.WaitGroup
	watch.Go(func() {
		_ = parts.WatchJetStream(wctx, r.js, events.StreamJobs, events.HealthSubject("runner", r.id), r.cfg.Metrics, nil, r.log)
	})
	defer watch.Wait()
	defer stopWatch()
	csub, err := r.nc.Subscribe(events.SubjectCancel+".*", r.onCancel)
	if err != nil {
		return fmt.Errorf("runner: subscribe: %w", err)
	}
	defer csub.Unsubscribe()
	// The dispatcher asks this subject whether the process is still
	// connected; "no responders" tells it the connection closed, so it hands
	// this runner's jobs back at once. The subscription goes to the server
	// before the first lease write on this connection, and is dropped only
	// after the lease is deleted.
	asub, err := r.nc.Subscribe(events.AliveSubject(r.id, r.inc), func(m *nats.Msg) { _ = m.Respond(nil) })
	if err != nil {
		return fmt.Errorf("runner: subscribe: %w", err)
	}
	defer asub.Unsubscribe()
	classAt := len(events.SubjectJobs + "." + r.cfg.Pool + "." + r.cfg.Arch + ".")
	wake := func(m *nats.Msg) {
		class := "" // the generic wake-up (a job handed back): every class
		if len(m.Subject) > classAt && m.Subject[:len(events.SubjectJobs)] == events.SubjectJobs {
			class = m.Subject[classAt:]
			if i := strings.IndexByte(class, '.'); i >= 0 {
				class = class[:i]
			}
		}
		r.hints.woken(events.Class(class), time.Now())
		r.wake.notify()
	}
	for _, subj := range []string{events.SubjectJobs + "." + r.cfg.Pool + "." + r.cfg.Arch + ".>", events.WakeSubject(r.cfg.Pool, r.cfg.Arch)} {
		sub, err := r.nc.Subscribe(subj, wake)
		if err != nil {
			return fmt.Errorf("runner: subscribe: %w", err)
		}
		defer sub.Unsubscribe()
	}

	// Jobs run under jobCtx, which outlives ctx by at most Grace.
	jobCtx, killJobs := context.WithCancel(context.Background())
	defer killJobs()
	go func() {
		select {
		case <-ctx.Done():
		case <-jobCtx.Done():
			return
		}
		if r.busyCount() > 0 {
			r.log.Info().Dur("grace", r.cfg.Grace).Int("running", r.busyCount()).Msg("stopping: running jobs may finish")
		}
		select {
		case <-time.After(r.cfg.Grace):
			killJobs()
		case <-jobCtx.Done():
		}
	}()
	r.flushOutbox(jobCtx)

	// Logs spooled by a job (or by an earlier run on this work directory) are
	// uploaded as soon as the store answers, until the slots are done and a
	// last try has had its chance.
	spoolCtx, stopSpool := context.WithCancel(context.Background())
	spoolDone := make(chan struct{})
	go func() { defer close(spoolDone); r.uploadSpool(spoolCtx) }()
	defer func() {
		stopSpool()
		<-spoolDone
		fctx, cancel := context.WithTimeout(context.Background(), logFirstTry)
		defer cancel()
		if left := r.flushSpool(fctx); left > 0 {
			r.log.Warn().Int("logs", left).Str("spool", r.spoolDir()).Msg("stopping with logs not yet stored: the next runner on this --work stores them")
		}
	}()

	leaseDone := make(chan struct{})
	stopLease := make(chan struct{})
	go func() { defer close(leaseDone); r.holdLease(jobCtx, stopLease) }()
	var wg sync.WaitGroup
	for slot := 1; slot <= r.cfg.Slots; slot++ {
		wg.Add(1)
		go func() { defer wg.Done(); r.slot(ctx, jobCtx, slot, cons) }()
	}
	r.log.Info().Str("arch", r.cfg.Arch).Str("pool", r.cfg.Pool).Int("slots", r.cfg.Slots).Msg("runner ready")
	wg.Wait()
	close(stopLease)
	<-leaseDone
	return nil
}

// Close releases the work directory, for a runner that is not Run (Run
// releases it when it returns). It may be called more than once.
func (r *Runner) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lock.release()
}

// wakeRetry spaces the looks after a wake-up that found nothing: the core
// message can overtake the stored one (on a cluster the stream commits through
// Raft first), and a miss would otherwise cost a whole IdlePoll.
var wakeRetry = []time.Duration{2 * time.Millisecond, 10 * time.Millisecond, 50 * time.Millisecond}

// slot runs jobs one after another until ctx ends.
func (r *Runner) slot(ctx, jobCtx context.Context, n int, cons []jetstream.Consumer) {
	retries := 0            // quick looks left after a wake-up
	var taken jetstream.Msg // the next job, fetched while the last one's ack was on its way
	defer func() {
		if taken != nil {
			_ = taken.Nak() // the runner is stopping: hand it back at once
		}
	}()
	// While a job's ack is on its way, the slot already asks for its next
	// job: for a runner far from the broker the two round trips are one.
	prefetch := func() jetstream.Msg {
		if ctx.Err() != nil {
			return nil
		}
		return r.next(ctx, cons)
	}
	for ctx.Err() == nil {
		woken := r.wake.wait() // taken before looking, so no wake-up is missed
		m := taken
		if taken = nil; m == nil {
			m = r.next(ctx, cons)
		}
		if m != nil {
			taken = r.runJob(jobCtx, n, m, prefetch)
			retries = 0
			continue
		}
		wait := r.cfg.IdlePoll
		if retries > 0 {
			wait = min(wait, wakeRetry[len(wakeRetry)-retries])
			retries--
		}
		select {
		case <-woken:
			retries = len(wakeRetry)
		case <-time.After(wait):
		case <-ctx.Done():
		}
	}
}

// next returns the first waiting job, highest class first, or nil. A class
// found empty is not asked again until a job of that class is published, a
// job is handed back, or IdlePoll has passed (classHints): in a drain of one
// class that is one fetch per job instead of one per class.
func (r *Runner) next(ctx context.Context, cons []jetstream.Consumer) jetstream.Msg {
	missing := false
	for i, c := range cons {
		class := events.Classes[i]
		at := time.Now()
		if r.hints.skip(class, at, r.cfg.IdlePoll) {
			continue
		}
		batch, err := c.FetchNoWait(1)
		if err != nil {
			missing = missing || errors.Is(err, jetstream.ErrConsumerNotFound)
			r.log.Debug().Err(err).Msg("fetch")
			continue
		}
		for m := range batch.Messages() {
			return m
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			// A pull that no one answers: the consumer was deleted (or the
			// stream set up again).
			missing = missing || errors.Is(err, nats.ErrNoResponders) ||
				errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted)
			r.log.Debug().Err(err).Msg("fetch")
		} else {
			r.hints.empty(class, at)
		}
	}
	if missing {
		// In the background: while a cluster elects the consumers' new
		// leaders the create waits, and the slot should not (its next look
		// finds the job as soon as there is a leader again).
		go r.recreateConsumers(ctx)
	}
	return nil
}

// recreateConsumers creates the job consumers again, at most every few seconds.
// The Consumer handles only name them, so the slots' handles work again.
func (r *Runner) recreateConsumers(ctx context.Context) {
	r.mu.Lock()
	if time.Since(r.ensured) < 5*time.Second {
		r.mu.Unlock()
		return
	}
	r.ensured = time.Now()
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := events.EnsureJobConsumers(ctx, r.js, r.cfg.Pool, r.cfg.Arch); err != nil {
		r.log.Warn().Err(err).Msg("job consumers are missing and could not be created again")
		return
	}
	r.log.Warn().Msg("job consumers did not answer: made sure they exist")
}

func (r *Runner) setBusy(slot int, job events.LeasedJob) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if job.JobID == "" {
		// The job is acked (or handed back) already; the next renewal drops it
		// from the lease. A reaper acting on the stale entry meanwhile only
		// naks a settled delivery, which the server ignores.
		delete(r.lost, r.busy[slot].JobID)
		delete(r.busy, slot)
		return
	}
	r.busy[slot] = job
	select { // the lease names the jobs held: write it now, not at the next tick
	case r.kick <- struct{}{}:
	default:
	}
}

func (r *Runner) busyCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.busy)
}

// lostJob reports whether the job's lease lapsed while it ran: the dispatcher
// may have handed it to another runner, so this runner must not ack it.
func (r *Runner) lostJob(jobID string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lost[jobID]
}

// holdLease writes the runner's lease every LeaseRenew until stop is closed, then
// deletes it. Each write is a compare-and-swap on the previous one: if it fails,
// the lease expired in between and every job it named counts as lost.
func (r *Runner) holdLease(ctx context.Context, stop <-chan struct{}) {
	t := time.NewTicker(events.LeaseRenew)
	defer t.Stop()
	for {
		r.renewLease(ctx)
		select {
		case <-t.C:
		case <-r.kick:
		case <-stop:
			r.lease.Lock()
			kv := r.lease.kv
			r.lease.Unlock()
			if kv != nil {
				dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_ = kv.Delete(dctx, events.LeaseKey(r.id))
				cancel()
			}
			return
		}
	}
}

// leaseState is the runner's last written lease.
type leaseState struct {
	sync.Mutex
	kv     jetstream.KeyValue
	rev    uint64
	held   []events.LeasedJob // the jobs named by the last lease written
	host   string             // this machine's name, for the lease
	okAt   time.Time          // when the last write that succeeded was begun
	okConn uint64             // the connection's reconnects then
}

// renewedWithin returns when the last successful write of the lease was
// begun, if that is less than d ago and the connection has stayed up since:
// the lease had not lapsed then, and no dispatcher can have ended it for a
// closed connection since.
func (r *Runner) renewedWithin(d time.Duration) (time.Time, bool) {
	r.lease.Lock()
	defer r.lease.Unlock()
	if r.lease.okAt.IsZero() || time.Since(r.lease.okAt) >= d || !r.nc.IsConnected() || r.nc.Stats().Reconnects != r.lease.okConn {
		return time.Time{}, false
	}
	return r.lease.okAt, true
}

// renewLease writes the lease now, as a compare-and-swap on the last write. A
// failed swap means the lease expired in between: the jobs it named are settled
// with the dispatcher (loseJobs). runJob calls it right before acking, so a
// runner that was frozen past its lease never acks a job handed to another.
// It reports whether the lease was written.
func (r *Runner) renewLease(ctx context.Context) bool {
	r.lease.Lock()
	defer r.lease.Unlock()
	began, reconnects := time.Now(), r.nc.Stats().Reconnects
	if r.lease.host == "" {
		r.lease.host, _ = os.Hostname() // a file read: once, not twice a job
	}
	r.mu.Lock()
	l := events.Lease{ID: r.cfg.ID, Arch: r.cfg.Arch, Pool: r.cfg.Pool, Slots: r.cfg.Slots, Busy: len(r.busy),
		Jobs: []events.LeasedJob{}, Host: r.lease.host, StartedAt: r.born, HeartbeatAt: time.Now().UTC(), Incarnation: r.inc}
	for _, j := range r.busy {
		l.Jobs = append(l.Jobs, j)
	}
	r.mu.Unlock()
	data, _ := json.Marshal(l)
	wctx, cancel := context.WithTimeout(ctx, events.LeaseRenew)
	defer cancel()
	if r.lease.kv == nil {
		r.lease.kv, _ = r.js.KeyValue(wctx, events.BucketRunners)
		if r.lease.kv == nil {
			return false
		}
	}
	key := events.LeaseKey(r.id)
	kv := r.lease.kv
	next, err := uint64(0), error(nil)
	if r.lease.rev == 0 {
		next, err = kv.Put(wctx, key, data)
	} else if next, err = kv.Update(wctx, key, data, r.lease.rev); isWrongRevision(err) {
		r.loseJobs(wctx, r.lease.held)
		next, err = kv.Put(wctx, key, data)
	}
	if err == nil {
		r.lease.rev, r.lease.held, r.lease.okAt, r.lease.okConn = next, l.Jobs, began, reconnects
	} else if ctx.Err() == nil {
		// Keep the old revision: if the lease expired while the broker was out
		// of reach, the next renewal finds out.
		r.log.Debug().Err(err).Msg("renew lease")
	}
	return err == nil
}

func incarnation() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// loseJobs settles, for each job the lapsed lease named, whether a dispatcher
// handed it back (then it is lost to this runner) or this runner keeps it.
func (r *Runner) loseJobs(ctx context.Context, jobs []events.LeasedJob) {
	if len(jobs) == 0 {
		return
	}
	claims, err := r.js.KeyValue(ctx, events.BucketReaped)
	for _, j := range jobs {
		if err == nil {
			_, err2 := claims.Create(ctx, events.ReapKey(r.id, j.JobID, j.Attempt), []byte(events.ReapedByRunner))
			if err2 == nil {
				r.log.Info().Str("job_id", j.JobID).Msg("lease lapsed while the job ran, but no dispatcher took it: keeping it")
				continue
			}
		}
		// A dispatcher handed it back. Unless another runner took it since,
		// it still waits in the queue: a delayed NAK takes it out of the
		// queue's redelivery list, the heartbeats keep it, and this run ends
		// it as usual — the job runs once. If another runner has started it,
		// both runs finish and both are recorded (the ack is by stream
		// sequence, so either ack settles it).
		if j.Reply != "" && r.nc.Publish(j.Reply, []byte("-NAK "+events.JobAckWait.String())) == nil {
			r.log.Warn().Str("job_id", j.JobID).Msg("lease lapsed while the job ran and a dispatcher handed it back: taking it back " +
				"(if another runner started it meanwhile, it runs twice and both runs are recorded)")
			continue
		}
		r.mu.Lock()
		r.lost[j.JobID] = true
		r.mu.Unlock()
		r.log.Warn().Str("job_id", j.JobID).Msg("lease lapsed while the job ran and the job was handed to another runner")
	}
}

func isWrongRevision(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// classHints remembers which job classes were found empty, so that a slot
// does not ask their consumers again for every job: each no-wait fetch is a
// round trip and a pull request the server has to answer.
type classHints struct {
	mu    sync.Mutex
	woke  map[events.Class]time.Time // the last job published in the class
	any   time.Time                  // the last wake-up for every class
	found map[events.Class]time.Time // when a fetch found the class empty
}

// wakeSettle is how long after a class's wake-up an empty fetch still does
// not count: the core message can overtake the stored job (a cluster commits
// it through Raft first).
const wakeSettle = 100 * time.Millisecond

func (h *classHints) woken(class events.Class, at time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if class == "" {
		h.any = at
		return
	}
	if h.woke == nil {
		h.woke = map[events.Class]time.Time{}
	}
	h.woke[class] = at
}

// empty notes that a fetch started at at found the class empty.
func (h *classHints) empty(class events.Class, at time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.found == nil {
		h.found = map[events.Class]time.Time{}
	}
	h.found[class] = at
}

// skip reports whether the class was found empty less than idle ago, with no
// wake-up for it since (or shortly before: wakeSettle).
func (h *classHints) skip(class events.Class, now time.Time, idle time.Duration) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	found, ok := h.found[class]
	if !ok || now.Sub(found) >= idle {
		return false
	}
	last := h.woke[class]
	if h.any.After(last) {
		last = h.any
	}
	return last.Before(found.Add(-wakeSettle))
}

// notifier wakes every waiting slot at once.
type notifier struct {
	mu sync.Mutex
	ch chan struct{}
}

func newNotifier() *notifier { return &notifier{ch: make(chan struct{})} }

func (n *notifier) wait() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ch
}

func (n *notifier) notify() {
	n.mu.Lock()
	defer n.mu.Unlock()
	close(n.ch)
	n.ch = make(chan struct{})
}
