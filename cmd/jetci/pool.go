package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/metrics"
	"github.com/jetci/jetci/pool"
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
	cfg := pool.Config{Exe: exe, Arch: *arch, Pool: *poolName, Slots: *slots, Work: *work, Idle: *idle, Interval: *tick,
		Min: *minN, Max: *maxN, Prefix: prefix, Identity: *identity, IdentityName: *identityName}
	return m.serve(ctx, nf, "jetci-pool", "", false, log, func(_ *nats.Conn, js jetstream.JetStream, _ *metrics.Metrics) error {
		// After connecting: the flags' password is resolved then.
		cfg.Args, cfg.Env = nf.args(), append([]string{"JETCI_NATS=" + nf.url}, nf.env()...)
		return pool.New(cfg, js, log).Run(ctx)
	})
}
