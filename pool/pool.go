// Package pool keeps between Min and Max `jetci runner` processes running on
// this machine for one arch and pool, following the load (`jetci pool`): when
// jobs wait in that partition of the work queue it starts runners (up to
// Max); a runner idle for Idle is stopped gracefully (down to Min). A runner
// is only ever stopped while idle, and stopping it drains it: it takes no new
// job and any job it holds finishes. A runner that dies is replaced. When Run's
// context ends, every runner is stopped the same way.
//
// The policy (how many runners the queue and the leases call for) is scale;
// the supervision of the runner processes is start and stopAll.
package pool

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
)

// poolChild is one runner process of the pool.
type poolChild struct {
	id        string
	cmd       *exec.Cmd
	done      chan struct{}
	stopping  bool
	idleSince time.Time
}

// Config is what a pool runs and how it follows the load.
type Config struct {
	Exe  string   // the jetci binary the runners run
	Args []string // connection flags every runner gets (--nats, credentials, TLS)
	Env  []string // added to each runner's environment (e.g. its NATS password)
	Arch string   // the arch and pool the runners serve
	Pool string
	// Slots is each runner's --slots; Min and Max bound the runners.
	Slots, Min, Max int
	Work            string        // the runners' work directories are Work/<id>
	Idle            time.Duration // a runner idle this long is stopped (above Min)
	Interval        time.Duration // how often the load is looked at
	// Prefix starts each runner's id: Prefix-1, Prefix-2…
	Prefix string
	// Identity and IdentityName are the runners' identity seed file and the
	// name it was issued as ("": none).
	Identity, IdentityName string
}

// Pool runs the runner processes; Run starts it.
type Pool struct {
	exe, arch, pool, work, prefix string
	identity, identityName        string
	args, env                     []string
	slots, min, max               int
	idle, tick                    time.Duration
	js                            jetstream.JetStream
	log                           zerolog.Logger

	mu       sync.Mutex
	n        int
	children map[string]*poolChild
}

// New returns a pool that reads the queue and the runners' leases through js.
func New(cfg Config, js jetstream.JetStream, log zerolog.Logger) *Pool {
	return &Pool{exe: cfg.Exe, args: cfg.Args, env: cfg.Env, arch: cfg.Arch, pool: cfg.Pool, slots: cfg.Slots, work: cfg.Work,
		idle: cfg.Idle, tick: cfg.Interval, min: cfg.Min, max: cfg.Max, prefix: cfg.Prefix, identity: cfg.Identity,
		identityName: cfg.IdentityName, js: js, log: log, children: map[string]*poolChild{}}
}

// Run follows the load until ctx ends, then stops every runner (each
// finishing what it holds) and returns nil.
func (p *Pool) Run(ctx context.Context) error {
	p.log.Info().Str("arch", p.arch).Str("pool", p.pool).Int("min", p.min).Int("max", p.max).Msg("runner pool up")
	t := time.NewTicker(p.tick)
	defer t.Stop()
	for {
		p.scale(ctx)
		select {
		case <-ctx.Done():
			p.stopAll()
			return nil
		case <-t.C:
		}
	}
}

// scale looks at the waiting jobs and the runners' leases once.
func (p *Pool) scale(ctx context.Context) {
	waiting, err := p.waiting(ctx)
	if err != nil {
		p.log.Warn().Err(err).Msg("pool: read the queue")
		return
	}
	busy := p.busy(ctx)
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	live, starting := 0, 0
	for _, c := range p.children {
		if !c.stopping {
			live++
			if _, ok := busy[c.id]; !ok {
				starting++ // started, not serving yet: it will take its share
			}
		}
	}
	want := wanted(live, starting, waiting, p.slots, p.min, p.max)
	for i := live; i < want; i++ {
		if err := p.start(); err != nil {
			p.log.Error().Err(err).Msg("pool: start a runner")
			break
		}
	}
	if want > live {
		p.log.Info().Uint64("waiting", waiting).Int("runners", want).Msg("pool: scaled up")
		return
	}
	// Down: stop runners idle for p.idle, never below min, never one busy.
	if waiting > 0 {
		return
	}
	ids := make([]string, 0, len(p.children))
	for id := range p.children {
		ids = append(ids, id)
	}
	sort.Sort(sort.Reverse(sort.StringSlice(ids))) // newest first
	for _, id := range ids {
		c := p.children[id]
		if c.stopping {
			continue
		}
		b, known := busy[c.id]
		switch {
		case !known || b > 0:
			c.idleSince = time.Time{} // not ready yet, or working
		case c.idleSince.IsZero():
			c.idleSince = now
		case now.Sub(c.idleSince) >= p.idle && live > p.min:
			p.log.Info().Str("runner", c.id).Dur("idle", now.Sub(c.idleSince)).Msg("pool: stopping an idle runner")
			c.stopping = true
			_ = c.cmd.Process.Signal(syscall.SIGTERM)
			live--
		}
	}
}

// wanted is how many runners the load calls for: enough for the waiting jobs
// (a runner started but not serving yet takes its share of them, slots jobs
// each), at least lo, at most hi.
func wanted(live, starting int, waiting uint64, slots, lo, hi int) int {
	want := live
	if need := int(waiting) - starting*slots; need > 0 {
		want = live + (need+slots-1)/slots
	}
	return min(max(want, lo), hi)
}

// waiting counts the jobs no runner has taken yet in the pool's partition.
func (p *Pool) waiting(ctx context.Context) (uint64, error) {
	var n uint64
	for _, c := range events.Classes {
		cons, err := p.js.Consumer(ctx, events.StreamJobs, events.JobConsumerName(p.pool, p.arch, c))
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			continue
		}
		if err != nil {
			return 0, err
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return 0, err
		}
		n += info.NumPending
	}
	return n, nil
}

// busy returns the busy slots of each live runner, by id.
func (p *Pool) busy(ctx context.Context) map[string]int {
	out := map[string]int{}
	kv, err := p.js.KeyValue(ctx, events.BucketRunners)
	if err != nil {
		return out
	}
	w, err := kv.Watch(ctx, events.LeaseKey("*"), jetstream.IgnoreDeletes())
	if err != nil {
		return out
	}
	defer w.Stop()
	for e := range w.Updates() {
		if e == nil {
			break
		}
		var l events.Lease
		if json.Unmarshal(e.Value(), &l) == nil {
			out[l.ID] = l.Busy
		}
	}
	return out
}

// start launches one runner; p.mu is held.
func (p *Pool) start() error {
	p.n++
	id := p.prefix + "-" + strconv.Itoa(p.n)
	args := append([]string{"runner"}, p.args...)
	args = append(args, "--arch", p.arch, "--pool", p.pool, "--slots", strconv.Itoa(p.slots),
		"--id", id, "--work", filepath.Join(p.work, id), "--grace", "720h", "--log-format", "json")
	if p.identity != "" {
		args = append(args, "--identity", p.identity, "--identity-name", p.identityName)
	}
	cmd := exec.Command(p.exe, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.Env = append(os.Environ(), p.env...)
	if err := cmd.Start(); err != nil {
		return err
	}
	c := &poolChild{id: id, cmd: cmd, done: make(chan struct{})}
	p.children[id] = c
	go func() {
		err := cmd.Wait()
		close(c.done)
		p.mu.Lock()
		delete(p.children, id)
		p.mu.Unlock()
		_ = os.RemoveAll(filepath.Join(p.work, id))
		if !c.stopping {
			p.log.Warn().Err(err).Str("runner", id).Msg("pool: a runner died; it is replaced if needed")
		} else {
			p.log.Info().Str("runner", id).Msg("pool: runner stopped")
		}
	}()
	p.log.Info().Str("runner", id).Msg("pool: runner started")
	return nil
}

// stopAll drains every runner and waits for them.
func (p *Pool) stopAll() {
	p.mu.Lock()
	var all []*poolChild
	for _, c := range p.children {
		c.stopping = true
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		all = append(all, c)
	}
	p.mu.Unlock()
	for _, c := range all {
		<-c.done
	}
}
