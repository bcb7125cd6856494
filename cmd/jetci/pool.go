package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/metrics"
)

const poolUsage = `
Usage: jetci pool --nats URL --min A --max B [--arch ARCH] [--pool POOL] [--slots N] [--work DIR]

Runs between --min and --max 'jetci runner' processes on this machine for one
arch and pool, following the load: when jobs wait in that partition it starts
runners (up to --max); a runner idle for --idle is stopped gracefully (down to
--min). A runner is only ever stopped while idle, and stopping it drains it: it
takes no new job and any job it holds finishes. A runner that dies is replaced.
On SIGTERM the pool stops all its runners the same way.
`

// poolChild is one runner process of the pool.
type poolChild struct {
	id        string
	cmd       *exec.Cmd
	done      chan struct{}
	stopping  bool
	idleSince time.Time
}

func (m *Main) pool(ctx context.Context, args []string) error {
	fs := m.flagSet("pool", poolUsage)
	nf := connFlags(fs, events.RolePool)
	minN := fs.Int("min", 0, "runners kept even when idle")
	maxN := fs.Int("max", runtime.NumCPU(), "runners at most")
	arch := fs.String("arch", runtime.GOARCH, "CPU architecture the runners serve")
	poolName := fs.String("pool", "default", "runner pool the runners serve")
	slots := fs.Int("slots", 1, "jobs each runner runs in parallel (1: the pool follows the load by starting runners, up to --max; a lone jetci runner defaults to the number of CPUs)")
	work := fs.String("work", ".jetci-pool", "directory for the runners' work directories")
	idle := fs.Duration("idle", time.Minute, "stop a runner idle this long (above --min)")
	tick := fs.Duration("interval", time.Second, "how often the load is looked at")
	bin := fs.String("runner-bin", "", "jetci binary to run the runners with (default: this one)")
	identity := fs.String("identity", os.Getenv("JETCI_RUNNER_IDENTITY"), "runner identity seed file the runners sign with "+
		"(jetci setup --runner-identity NAME=FILE); their ids then start with NAME-")
	identityName := fs.String("identity-name", "", "NAME the identity was issued as (needed with --identity)")
	lf := registerLogFlags(fs)
	log, err := m.parseLogged(fs, args, lf)
	if err != nil {
		return err
	}
	switch {
	case *minN < 0 || *maxN < 1 || *minN > *maxN:
		return fmt.Errorf("--min %d --max %d: want 0 <= min <= max and max >= 1", *minN, *maxN)
	case *slots < 1:
		return fmt.Errorf("--slots %d: want at least 1", *slots)
	case *idle <= 0 || *tick <= 0:
		return errors.New("--idle and --interval must be more than 0")
	}
	if err := events.ValidName("arch", *arch); err != nil {
		return err
	}
	if err := events.ValidName("pool", *poolName); err != nil {
		return err
	}
	exe := *bin
	if exe == "" {
		if exe, err = os.Executable(); err != nil {
			return fmt.Errorf("find the jetci binary: %w (give --runner-bin)", err)
		}
	}
	host, _ := os.Hostname()
	prefix := fmt.Sprintf("%s-pool%d", host, os.Getpid())
	if *identity != "" {
		if *identityName == "" {
			return errors.New("--identity needs --identity-name: the NAME it was issued as")
		}
		prefix = fmt.Sprintf("%s-%d", *identityName, os.Getpid())
	}
	p := &runnerPool{conn: nf, exe: exe, arch: *arch, pool: *poolName, slots: *slots, work: *work, idle: *idle,
		min: *minN, max: *maxN, log: log, prefix: prefix, children: map[string]*poolChild{},
		identity: *identity, identityName: *identityName}
	return m.serve(ctx, nf, "jetci-pool", "", false, log, func(_ *nats.Conn, js jetstream.JetStream, _ *metrics.Metrics) error {
		p.js = js
		return p.run(ctx, *tick)
	})
}

type runnerPool struct {
	exe, arch, pool, work, prefix string
	identity, identityName        string
	conn                          *natsFlags
	slots, min, max               int
	idle                          time.Duration
	js                            jetstream.JetStream
	log                           zerolog.Logger

	mu       sync.Mutex
	n        int
	children map[string]*poolChild
}

func (p *runnerPool) run(ctx context.Context, tick time.Duration) error {
	p.log.Info().Str("arch", p.arch).Str("pool", p.pool).Int("min", p.min).Int("max", p.max).Msg("runner pool up")
	t := time.NewTicker(tick)
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
func (p *runnerPool) scale(ctx context.Context) {
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
	// Up: enough runners for what waits, at least min, at most max.
	want := live
	if need := int(waiting) - starting*p.slots; need > 0 {
		want = live + (need+p.slots-1)/p.slots
	}
	want = min(max(want, p.min), p.max)
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

// waiting counts the jobs no runner has taken yet in the pool's partition.
func (p *runnerPool) waiting(ctx context.Context) (uint64, error) {
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
func (p *runnerPool) busy(ctx context.Context) map[string]int {
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
func (p *runnerPool) start() error {
	p.n++
	id := p.prefix + "-" + strconv.Itoa(p.n)
	args := append([]string{"runner"}, p.conn.args()...)
	args = append(args, "--arch", p.arch, "--pool", p.pool, "--slots", strconv.Itoa(p.slots),
		"--id", id, "--work", filepath.Join(p.work, id), "--grace", "720h", "--log-format", "json")
	if p.identity != "" {
		args = append(args, "--identity", p.identity, "--identity-name", p.identityName)
	}
	cmd := exec.Command(p.exe, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.Env = append(append(os.Environ(), "JETCI_NATS="+p.conn.url), p.conn.env()...)
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
func (p *runnerPool) stopAll() {
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
