package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/jetci/jetci/broker"
	"github.com/jetci/jetci/dispatcher"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/metrics"
	"github.com/jetci/jetci/observer"
	"github.com/jetci/jetci/reporter"
	"github.com/jetci/jetci/runner"
)

const upUsage = `
Usage: jetci up --repo PATH_OR_URL [--repo ...] [flags]

Runs all of jetci in one process: an embedded NATS JetStream server, an observer
for the given repositories, a dispatcher, a reporter with the web UI and API, and
--runners local runners for this machine's CPU architecture. Every new commit on
every branch is tested; results survive restarts in --data.

Its NATS server has no authentication and no TLS, and says so at start; it
listens on loopback, so only users of this machine can reach it. Listening on a
reachable address (--nats-listen) needs --insecure, and then anyone who reaches
it can queue jobs and read results: for several machines, run 'jetci server
--config nats.conf' with a user per role instead (docs/security.md).

A repo is a local path or a git URL; it is named after its base name without
".git", or give the name: --repo name=PATH_OR_URL.
`

// upGroups are the headings of jetci up's help. A new flag of up goes in one.
var upGroups = []flagGroup{
	{"Repositories", []string{"repo", "pull-requests", "poll", "max-new-commits"}},
	{"Broker (the embedded NATS server and its storage)", []string{"data", "nats-listen", "insecure", "log-retention", "artifact-retention", "live-logs-max"}},
	{"Web UI and API", []string{"http", "public-url", "db", "history-retention"}},
	{"Runners (local to this machine)", []string{"runners", "slots", "arch", "grace", "artifact-limit", "exec", "host-fallback", "sandbox-uid",
		"image", "secret", "pass-env", "limit-cpu", "limit-memory", "limit-processes"}},
	{"Scheduling", []string{"age-after", "gate", "fix-window", "coalesce", "coalesce-running", "bisect", "periodic", "periodic-skip-passed"}},
	{"Notifications", []string{"notify-config", "smtp", "smtp-tls", "smtp-user", "smtp-password-file", "mail-from", "mail-to", "mail-results",
		"mail-managers", "webhook", "webhook-secret-file", "webhook-events"}},
	{"Security", []string{"admin-token", "admin-token-file", "hook-secret-file"}},
	{"Logging", []string{"log-level", "log-format"}},
}

func (m *Main) up(ctx context.Context, args []string) error {
	fs := m.flagSet("up", upUsage)
	of := addObserverFlags(fs, "how often each repository is polled for new commits")
	data := fs.String("data", "./.jetci", "directory for all state: NATS storage, git caches, runner workspaces")
	listen := fs.String("nats-listen", "127.0.0.1:4222", "address of the embedded NATS server (port 0: any free port); it has no authentication, so a non-loopback address needs --insecure")
	insecure := fs.Bool("insecure", false, "allow --nats-listen on a non-loopback address although the embedded server has no authentication or TLS: anyone who reaches it can queue jobs (run code) and read results")
	rf := addReporterFlags(fs, "address of the web UI and API (empty: none)", "DATA/"+reporter.DBFile)
	runners := fs.Int("runners", 2, "local runners to start (0: none, runners join with 'jetci runner')")
	lrf := addRunnerFlags(fs, 1, "jobs each local runner runs in parallel (1: with --runners 2, two jobs at once; a lone jetci runner, which has the machine to itself, defaults to the number of CPUs)",
		30*time.Second, "on stop, how long running jobs may finish before they are killed and handed back")
	df := addDispatcherFlags(fs, "CPU architectures to test each job on, comma-separated (default: this machine's, "+runtime.GOARCH+")")
	retention := retentionFlags(fs)
	lf := registerLogFlags(fs)
	groupFlags(fs, upUsage, upGroups)
	log, err := m.parseLogged(fs, args, lf)
	if err != nil {
		return err
	}
	ocfg, err := of.config(filepath.Join(*data, "observer"))
	if errors.Is(err, errNoRepo) {
		fs.Usage()
	}
	if err != nil {
		return err
	}
	rcfg, err := rf.config(*data)
	if err != nil {
		return err
	}
	setup, err := retention(events.DefaultSetup())
	if err != nil {
		return err
	}
	if !isLoopback(*listen) && !*insecure {
		return fmt.Errorf("--nats-listen %s is reachable from other machines, and jetci up's NATS server has no authentication or TLS: anyone who reaches it could queue jobs (run code on your runners) and read every result. "+
			"For several machines run 'jetci server --config nats.conf' with its per-role users (docs/security.md), or pass --insecure to accept the risk", *listen)
	}
	if *runners < 0 {
		return fmt.Errorf("--runners %d: want 0 or more", *runners)
	}
	dcfg, err := df.config(func(c *dispatcher.Config) {
		c.Coalesce = append(c.Coalesce, pullCoalesce(ocfg)...) // a PR's new head supersedes its older runs
	})
	if err != nil {
		return err
	}
	rcfgs := make([]runner.Config, *runners)
	host, _ := os.Hostname()
	for i := range rcfgs {
		c := runner.DefaultConfig()
		c.ID = fmt.Sprintf("%s-%d-up%d", host, os.Getpid(), i+1)
		c.WorkDir = filepath.Join(*data, "runners", strconv.Itoa(i+1))
		if rcfgs[i], err = lrf.config(c); err != nil {
			return err
		}
	}

	if err := os.MkdirAll(*data, 0o755); err != nil {
		return fmt.Errorf("--data %s: %w", *data, err)
	}
	srv, err := broker.Start(broker.Config{Listen: *listen, StoreDir: filepath.Join(*data, "nats")}, log)
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	// Sized to the disk when created: a small disk can still start.
	setup.CreateLiveLogBytes = events.LiveLogBytesFor(srv.StoreFree())
	setup.Update, setup.Note = true, func(msg string) { log.Info().Msg(msg) }
	nc, js, err := events.Connect(srv.ClientURL(), events.ConnectOptions{Name: "jetci-up", Wait: true, Log: log})
	if err != nil {
		return err
	}
	defer nc.Close()
	if err := setup.Ensure(ctx, js); err != nil {
		return err
	}

	mets := metrics.New(js)
	rcfg.Metrics, rcfg.Health = mets, srv.StorageProblem
	rep, err := reporter.New(ctx, rcfg, js, log.With().Str("component", "reporter").Logger())
	if err != nil {
		return err
	}
	ocfg.Metrics, dcfg.Metrics = mets, mets
	obs, err := observer.New(ocfg, nc.Conn, js, log.With().Str("component", "observer").Logger())
	if err != nil {
		return err
	}
	disp, err := dispatcher.New(dcfg, js, log.With().Str("component", "dispatcher").Logger())
	if err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return rep.Run(gctx) })
	g.Go(func() error { return disp.Run(gctx) })
	g.Go(func() error { return obs.Run(gctx) })
	for _, c := range rcfgs {
		c.Metrics = mets
		r, err := runner.New(c, nc.Conn, js, log.With().Str("component", "runner").Str("runner", c.ID).Logger())
		if err != nil {
			return err
		}
		g.Go(func() error { return r.Run(gctx) })
	}
	log.Info().Str("nats", srv.ClientURL()).Str("http", rep.Addr()).Int("repos", len(ocfg.Repos)).
		Int("runners", *runners).Strs("arch", dcfg.Arch).Str("data", *data).Msg("jetci is up")
	if isLoopback(*listen) {
		log.Info().Str("nats", srv.ClientURL()).Msg("the embedded NATS server is open: no authentication, no TLS; it listens on loopback only, so only users of this machine can reach it")
	} else {
		log.Warn().Str("nats", srv.ClientURL()).Msg("INSECURE: the embedded NATS server listens beyond loopback with no authentication and no TLS; anyone who reaches it can queue jobs and read results")
	}
	if *runners > 0 && !slices.Contains(dcfg.Arch, runtime.GOARCH) {
		log.Warn().Strs("arch", dcfg.Arch).Msg("the local runners serve " + runtime.GOARCH + " only: other architectures need 'jetci runner --arch'")
	}
	err = g.Wait()
	log.Info().Msg("jetci is shutting down")
	drain(nc.Conn, log)
	return err
}

// drain flushes what the services published before the server stops.
func drain(nc *nats.Conn, log zerolog.Logger) {
	done := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(done) })
	if err := nc.Drain(); err != nil {
		nc.Close()
		return
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		log.Warn().Msg("nats drain timed out")
		nc.Close()
	}
}

// connectService connects a long-running service and makes sure jetci's streams
// exist, waiting for the server if it is not up yet.
func (m *Main) connectService(ctx context.Context, nf *natsFlags, name string, log zerolog.Logger) (*nats.Conn, jetstream.JetStream, error) {
	nc, js, err := m.connect(ctx, nf, name, true, log)
	if err != nil {
		return nil, nil, err
	}
	err = events.Retry(ctx, log, "set up jetci streams on "+nf.url, 5*time.Second, func(ctx context.Context) error {
		c, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return nc.Explain(events.SetupFor(nc.Conn).Ensure(c, js))
	})
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc.Conn, js, nil
}

// isLoopback reports whether a listen address host:port is reachable from this
// machine only.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
