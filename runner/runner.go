// Package runner runs jobs. A runner serves one CPU architecture and one pool: it
// pulls jobs from the JETCI_JOBS work queue through the durable consumers shared
// by every runner of that (pool, arch), one per priority class, always trying the
// highest class first and taking one job per free slot with Fetch (never a
// prefetching consumer, whose buffered messages would time out).
//
// For each job it checks the commit out with go-git from a per-repo cache into a
// workspace owned by the slot, runs the steps with `sh -c` under a timeout that
// kills the whole process group, streams the output live and keeps up to LogLimit
// bytes, stores the full log in the jetci-logs object store, and publishes the
// result. It acknowledges the job only after JetStream stored the result; until
// then in-progress acks keep the job from being redelivered, and if the runner
// dies the job goes to another runner.
package runner

import (
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
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
)

// Config configures a runner.
type Config struct {
	ID       string        // shown in results; unique per runner process
	Arch     string        // the CPU architecture served
	Pool     string        // the pool served
	Slots    int           // jobs run in parallel
	WorkDir  string        // caches, workspaces, logs and the result outbox
	LogLimit int64         // bytes of output kept per job
	IdlePoll time.Duration // how often an idle slot looks for redelivered jobs
}

var idRE = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// DefaultConfig serves this machine's architecture in the default pool, one job
// at a time.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	return Config{
		ID:   fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b)),
		Arch: runtime.GOARCH, Pool: "default", Slots: 1, WorkDir: ".jetci-runner",
		LogLimit: 8 << 20, IdlePoll: time.Second,
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
	case c.IdlePoll <= 0:
		return fmt.Errorf("runner: IdlePoll %s: want more than 0", c.IdlePoll)
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

	mu   sync.Mutex
	busy map[int]string // slot -> job id
	born time.Time
}

// New returns a runner; Run starts it.
func New(cfg Config, nc *nats.Conn, js jetstream.JetStream, log zerolog.Logger) (*Runner, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	for _, d := range []string{"cache", "slots", "logs", "outbox"} {
		if err := os.MkdirAll(filepath.Join(cfg.WorkDir, d), 0o755); err != nil {
			return nil, fmt.Errorf("runner: WorkDir: %w", err)
		}
	}
	return &Runner{
		cfg: cfg, id: idRE.ReplaceAllString(cfg.ID, "-"), nc: nc, js: js, log: log,
		caches: &caches{dir: filepath.Join(cfg.WorkDir, "cache"), per: map[string]*sync.RWMutex{}},
		wake:   newNotifier(), busy: map[int]string{}, born: time.Now().UTC(),
	}, nil
}

// Run takes and runs jobs until ctx ends. Jobs still running then are killed and
// handed back to the queue.
func (r *Runner) Run(ctx context.Context) error {
	var cons []jetstream.Consumer
	err := events.Retry(ctx, r.log, "create job consumers", 5*time.Second, func(ctx context.Context) error {
		var err error
		cons, err = events.EnsureJobConsumers(ctx, r.js, r.cfg.Pool, r.cfg.Arch)
		return err
	})
	if err != nil {
		return nil // ctx ended
	}
	sub, err := r.nc.Subscribe(events.SubjectJobs+"."+r.cfg.Pool+"."+r.cfg.Arch+".>", func(*nats.Msg) { r.wake.notify() })
	if err != nil {
		return fmt.Errorf("runner: subscribe: %w", err)
	}
	defer sub.Unsubscribe()
	r.flushOutbox(ctx)

	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); r.register(ctx) }()
	for slot := 1; slot <= r.cfg.Slots; slot++ {
		wg.Add(1)
		go func() { defer wg.Done(); r.slot(ctx, slot, cons) }()
	}
	r.log.Info().Str("arch", r.cfg.Arch).Str("pool", r.cfg.Pool).Int("slots", r.cfg.Slots).Msg("runner ready")
	wg.Wait()
	r.unregister()
	return nil
}

// slot runs jobs one after another.
func (r *Runner) slot(ctx context.Context, n int, cons []jetstream.Consumer) {
	for ctx.Err() == nil {
		woken := r.wake.wait() // taken before looking, so no wake-up is missed
		if m := r.next(cons); m != nil {
			r.runJob(ctx, n, m)
			continue
		}
		select {
		case <-woken:
		case <-time.After(r.cfg.IdlePoll):
		case <-ctx.Done():
		}
	}
}

// next returns the first waiting job, highest class first, or nil.
func (r *Runner) next(cons []jetstream.Consumer) jetstream.Msg {
	for _, c := range cons {
		batch, err := c.FetchNoWait(1)
		if err != nil {
			r.log.Debug().Err(err).Msg("fetch")
			continue
		}
		for m := range batch.Messages() {
			return m
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			r.log.Debug().Err(err).Msg("fetch")
		}
	}
	return nil
}

func (r *Runner) setBusy(slot int, job string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if job == "" {
		delete(r.busy, slot)
	} else {
		r.busy[slot] = job
	}
}

// registration is what a runner announces in the jetci-runners bucket.
type registration struct {
	ID          string    `json:"id"`
	Arch        string    `json:"arch"`
	Pool        string    `json:"pool"`
	Slots       int       `json:"slots"`
	Busy        int       `json:"busy"`
	Jobs        []string  `json:"jobs"`
	Host        string    `json:"host"`
	StartedAt   time.Time `json:"started_at"`
	HeartbeatAt time.Time `json:"heartbeat_at"`
}

// register refreshes the runner's entry every 2 s; entries of dead runners expire.
func (r *Runner) register(ctx context.Context) {
	host, _ := os.Hostname()
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		r.mu.Lock()
		reg := registration{ID: r.cfg.ID, Arch: r.cfg.Arch, Pool: r.cfg.Pool, Slots: r.cfg.Slots, Busy: len(r.busy),
			Jobs: []string{}, Host: host, StartedAt: r.born, HeartbeatAt: time.Now().UTC()}
		for _, j := range r.busy {
			reg.Jobs = append(reg.Jobs, j)
		}
		r.mu.Unlock()
		if kv, err := r.js.KeyValue(ctx, events.BucketRunners); err == nil {
			data, _ := json.Marshal(reg)
			if _, err := kv.Put(ctx, r.id, data); err != nil && ctx.Err() == nil {
				r.log.Debug().Err(err).Msg("refresh registration")
			}
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

func (r *Runner) unregister() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if kv, err := r.js.KeyValue(ctx, events.BucketRunners); err == nil {
		_ = kv.Delete(ctx, r.id)
	}
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
