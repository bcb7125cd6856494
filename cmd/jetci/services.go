package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker"
	"github.com/jetci/jetci/dispatcher"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/metrics"
	"github.com/jetci/jetci/observer"
	"github.com/jetci/jetci/reporter"
	"github.com/jetci/jetci/runner"
)

const serverUsage = `
Usage: jetci server [--config nats.conf] [--listen ADDR] [--store DIR] [--tls-cert F --tls-key F [--tls-ca F]] [--nats-user admin]

Runs the NATS JetStream server alone (embedded in jetci), for deployments where
the observer, dispatcher, reporter and runners run as separate processes. The
config file has the syntax of the real nats-server, which accepts the same file:
'nats-server -c nats.conf'. The shipped nats.conf has one user per role (see
docs/security.md); its passwords come from the JETCI_<ROLE>_PASSWORD
variables.

jetci's streams and buckets are created at start, over an in-process
connection: when the config requires credentials, give the admin's
(--nats-user admin and $JETCI_NATS_PASSWORD, or --nats-creds), or run
'jetci setup' later.

With --tls-cert and --tls-key it serves TLS (clients then need --tls-ca); with
--tls-ca as well, clients must also present a certificate signed by that CA.

For a 3-node JetStream cluster, run one 'jetci server --config nodeN.conf' per
node (see nats-cluster.conf). On a cluster, streams and buckets get 3 replicas;
give clients every node: --nats nats://a:4222,nats://b:4222,nats://c:4222
`

func (m *Main) server(ctx context.Context, args []string) error {
	fs := m.flagSet("server", serverUsage)
	config := fs.String("config", "", "nats-server configuration file (e.g. nats.conf)")
	listen := fs.String("listen", "", "client address host:port (default: the config's, else 127.0.0.1:4222)")
	store := fs.String("store", "", "JetStream storage directory (default: the config's, else ./.jetci/nats)")
	monitor := fs.String("monitor", "", "NATS monitoring address host:port, /varz and /jsz (default: the config's http, else none)")
	tlsCert := fs.String("tls-cert", "", "serve TLS with this certificate (PEM); clients must then use TLS")
	tlsKey := fs.String("tls-key", "", "the certificate's private key (PEM)")
	tlsCA := fs.String("tls-ca", "", "CA (PEM) whose client certificates are required (verify clients)")
	admin := &natsFlags{role: events.RoleAdmin}
	admin.register(fs, "create jetci's streams")
	maddr := metricsFlag(fs)
	retention := retentionFlags(fs)
	lf := registerLogFlags(fs)
	log, err := m.parseLogged(fs, args, lf)
	if err != nil {
		return err
	}
	withRetention := func(s events.Setup) events.Setup { s, _ = retention(s); return s }
	if _, err := retention(events.DefaultSetup()); err != nil {
		return err
	}
	if err := admin.resolve(); err != nil {
		return err
	}
	cfg := broker.Config{ConfigFile: *config, Listen: *listen, StoreDir: *store, HTTP: *monitor, TLSCert: *tlsCert, TLSKey: *tlsKey, TLSCA: *tlsCA}
	if *config == "" {
		def := broker.DefaultConfig()
		if cfg.Listen == "" {
			cfg.Listen = def.Listen
		}
		if cfg.StoreDir == "" {
			cfg.StoreDir = def.StoreDir
		}
	}
	srv, err := broker.Start(cfg, log)
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	sized := withRetention
	withRetention = func(s events.Setup) events.Setup {
		// Sized to the disk when created: a small disk can still start.
		s = sized(s)
		s.CreateLiveLogBytes = events.LiveLogBytesFor(srv.StoreFree())
		return s
	}
	log.Info().Str("url", srv.ClientURL()).Bool("tls", srv.TLS()).Bool("auth", srv.AuthRequired()).Msg("nats server ready")
	if !srv.Loopback() && !srv.AuthRequired() {
		log.Warn().Msg("nats server open to the network without authentication: anyone who reaches it can publish jobs and read results (see docs/security.md)")
	}
	var js jetstream.JetStream
	switch {
	case srv.AuthRequired() && !admin.auth.Secured():
		log.Warn().Msg("jetci streams not set up here: the config requires credentials; give the admin's (--nats-user admin) or run 'jetci setup'")
	default:
		js = m.setupInProcess(ctx, srv, admin, withRetention, log)
		if js == nil && ctx.Err() != nil {
			return nil
		}
	}
	if *maddr != "" {
		if _, err := startMetrics(ctx, *maddr, js, log); err != nil {
			return err
		}
	}
	<-ctx.Done()
	log.Info().Msg("nats server stopping")
	return nil
}

// setupInProcess creates jetci's streams over an in-process connection as the
// admin; it logs a failure (the server keeps serving) and returns nil then.
func (m *Main) setupInProcess(ctx context.Context, srv *broker.Server, admin *natsFlags, withRetention func(events.Setup) events.Setup, log zerolog.Logger) jetstream.JetStream {
	// nats://, not the client URL: that is tls:// when the server serves TLS,
	// and an in-process connection needs none.
	nc, js, err := events.Connect("nats://in-process", events.ConnectOptions{Name: "jetci-server", Log: log,
		Role: admin.role, Auth: admin.auth, Extra: []nats.Option{srv.InProcess()}})
	if err != nil {
		log.Error().Err(err).Msg("jetci streams not set up: cannot connect as the admin; run 'jetci setup'")
		return nil
	}
	go func() { <-ctx.Done(); nc.Close() }()
	// In a cluster JetStream is usable once the nodes have elected a leader.
	err = events.Retry(ctx, log, "set up jetci streams", 2*time.Second, func(ctx context.Context) error {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		setup := withRetention(events.SetupFor(nc.Conn))
		setup.Update, setup.Note = true, func(msg string) { log.Info().Msg(msg) }
		return nc.Explain(setup.Ensure(sctx, js))
	})
	if err != nil {
		return nil
	}
	log.Info().Msg("jetci streams ready")
	return js
}

const setupUsage = `
Usage: jetci setup --nats URL --nats-user admin [--log-retention D] [--artifact-retention D]
                   [--runner-identity NAME=FILE ...] [--revoke-runner NAME ...]

Creates jetci's streams and buckets on a NATS server or cluster (three replicas
on a cluster), as the admin user, and exits. Existing ones are brought to
jetci's configuration (limits, subjects, replicas; it prints each change):
what the server cannot change on an existing stream (storage, retention
policy) is printed and left. --live-logs-max, --log-retention and
--artifact-retention change existing ones only when given. The
services' own users may not create streams: run this once before them (jetci
server does the same at start when it is given the admin's credentials).

Runner identities: results count only when signed by a runner identity the admin
registered. --runner-identity NAME=FILE issues one (FILE is created, mode 0600,
when missing) or registers the seed FILE holds; run the runner with --identity
FILE and --id NAME (or --identity-name NAME and an id starting with NAME-).
--revoke-runner NAME forgets one.
`

func (m *Main) setup(ctx context.Context, args []string) error {
	fs := m.flagSet("setup", setupUsage)
	nf := connFlags(fs, events.RoleAdmin)
	retention := retentionFlags(fs)
	timeout := fs.Duration("timeout", time.Minute, "how long to wait for the server (and a cluster's leader)")
	var idents, revoke listFlag
	fs.Var(&idents, "runner-identity", "NAME=FILE: issue (FILE missing: make it, mode 0600) or re-register the runner identity NAME "+
		"whose seed is in FILE; give FILE to the runner (--identity). Repeat for more")
	fs.Var(&revoke, "revoke-runner", "NAME: forget the runner identity NAME; its results are refused from now on. Repeat for more")
	lf := registerLogFlags(fs)
	log, err := m.parseLogged(fs, args, lf)
	if err != nil {
		return err
	}
	if _, err := retention(events.DefaultSetup()); err != nil {
		return err
	}
	// --timeout covers the server too: one started just before (or a
	// cluster's nodes still finding each other) is waited for.
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	nc, js, err := m.connect(ctx, nf, "jetci-setup", true, log)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("no NATS server answered at %s within --timeout %s: %w", nf.url, *timeout, err)
		}
		return err
	}
	defer nc.Close()
	setup, _ := retention(events.SetupFor(nc.Conn))
	setup.Update, setup.Note = true, func(msg string) { fmt.Fprintln(m.Stdout, msg) }
	var denied error // a permission error ends the retries: it will not pass by itself
	err = events.Retry(ctx, log, "set up jetci streams", 2*time.Second, func(rctx context.Context) error {
		sctx, scancel := context.WithTimeout(rctx, 10*time.Second)
		defer scancel()
		err := setup.Ensure(sctx, js)
		if err == nil {
			// A bucket made before the keys existed gets its service key.
			var kv jetstream.KeyValue
			if kv, err = js.KeyValue(sctx, events.BucketKeys); err == nil {
				err = events.EnsureServiceKey(sctx, kv)
			}
		}
		err = nc.Explain(err)
		if errors.Is(err, nats.ErrPermissionViolation) {
			denied = err
			cancel()
		}
		return err
	})
	if denied != nil {
		return denied
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(m.Stdout, "jetci streams and buckets ready on %s (%d replicas)\n", nc.ConnectedUrlRedacted(), setup.Replicas)
	for _, spec := range idents {
		name, file, ok := strings.Cut(spec, "=")
		if !ok || file == "" {
			return fmt.Errorf("--runner-identity %q: want NAME=FILE", spec)
		}
		kp, made, err := loadOrMakeIdentity(file)
		if err != nil {
			return fmt.Errorf("--runner-identity %s: %w", name, err)
		}
		if err := events.RegisterRunner(ctx, js, name, kp); err != nil {
			return fmt.Errorf("--runner-identity %s: %w", name, nc.Explain(err))
		}
		pub, _ := kp.PublicKey()
		verb := "registered"
		if made {
			verb = "issued (seed in " + file + ") and registered"
		}
		fmt.Fprintf(m.Stdout, "runner identity %s %s: %s\n", name, verb, pub)
	}
	for _, name := range revoke {
		kv, err := js.KeyValue(ctx, events.BucketKeys)
		if err == nil {
			err = kv.Delete(ctx, events.RunnerKeyName(name))
		}
		if err != nil {
			return fmt.Errorf("--revoke-runner %s: %w", name, err)
		}
		fmt.Fprintf(m.Stdout, "runner identity %s revoked\n", name)
	}
	return nil
}

// loadOrMakeIdentity reads a runner identity's seed from file, or makes one
// and writes it there (0600) when the file does not exist.
func loadOrMakeIdentity(file string) (nkeys.KeyPair, bool, error) {
	data, err := os.ReadFile(file)
	if err == nil {
		kp, err := nkeys.FromSeed(bytes.TrimSpace(data))
		if err != nil {
			return nil, false, fmt.Errorf("%s: not an nkey seed: %w", file, err)
		}
		return kp, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	kp, err := nkeys.CreateUser()
	if err != nil {
		return nil, false, err
	}
	seed, err := kp.Seed()
	if err != nil {
		return nil, false, err
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, false, err
	}
	if _, err := f.Write(append(seed, '\n')); err != nil {
		f.Close()
		return nil, false, err
	}
	return kp, true, f.Close()
}

const observerUsage = `
Usage: jetci observer --nats URL --repo PATH_OR_URL [--repo ...] [flags]

Watches git repositories and publishes one event per new commit on every branch
to JetStream. The last published head of each branch is kept in JetStream, so a
restarted observer neither misses nor repeats a commit. It also serves
'jetci trigger' for its repositories.
`

func (m *Main) observer(ctx context.Context, args []string) error {
	fs := m.flagSet("observer", observerUsage)
	nf := connFlags(fs, events.RoleObserver)
	of := addObserverFlags(fs, "how often each repository is polled")
	cache := fs.String("cache", "./.jetci/observer", "directory for the observer's git caches (relative to the working directory)")
	maddr := metricsFlag(fs)
	lf := registerLogFlags(fs)
	log, err := m.parseLogged(fs, args, lf)
	if err != nil {
		return err
	}
	cfg, err := of.config(*cache)
	if err != nil {
		return err
	}
	return m.serve(ctx, nf, "jetci-observer", *maddr, false, log, func(nc *nats.Conn, js jetstream.JetStream, mets *metrics.Metrics) error {
		cfg.Metrics = mets
		o, err := observer.New(cfg, nc, js, log)
		if err != nil {
			return err
		}
		return o.Run(ctx)
	})
}

const dispatcherUsage = `
Usage: jetci dispatcher --nats URL [--arch LIST]

Turns each new commit into jobs: one per job in the commit's .jetci.yml (or the
detected test command) and per CPU architecture in its matrix, queued for the
runners of that architecture and pool. It also watches the runners' leases and
hands the jobs of a runner that died back to the queue within seconds.

Scheduling (see docs/scheduling.md): jobs that wait too long move up a priority
class (--age-after); --periodic queues a full check of every branch head on a
cron schedule; --gate puts branches under the broken-build flow (a failed first
check holds later commits until a second check passes; jetci recheck reopens a
failed branch); --coalesce lets a new commit cancel older commits' waiting jobs
(--coalesce-running: and kill their running ones, e.g. for pull requests);
--bisect finds the commit that broke a job when the commits before it were not
each tested, and mails its author.
`

func (m *Main) dispatcher(ctx context.Context, args []string) error {
	fs := m.flagSet("dispatcher", dispatcherUsage)
	nf := connFlags(fs, events.RoleDispatcher)
	df := addDispatcherFlags(fs, "default arch matrix, comma-separated (default: this machine's)")
	pool := fs.String("pool", "default", "default runner pool for jobs that name none")
	maddr := metricsFlag(fs)
	lf := registerLogFlags(fs)
	log, err := m.parseLogged(fs, args, lf)
	if err != nil {
		return err
	}
	cfg, err := df.config(func(c *dispatcher.Config) { c.Pool = *pool })
	if err != nil {
		return err
	}
	return m.serve(ctx, nf, "jetci-dispatcher", *maddr, true, log, func(nc *nats.Conn, js jetstream.JetStream, mets *metrics.Metrics) error {
		cfg.Metrics = mets
		d, err := dispatcher.New(cfg, js, log)
		if err != nil {
			return err
		}
		return d.Run(ctx) // the reaper is one of its parts
	})
}

const runnerUsage = `
Usage: jetci runner --nats URL [--arch ARCH] [--pool POOL] [--slots N] [--work DIR] [--artifact-limit SIZE]
                    [--id NAME --identity FILE]

Pulls jobs for one CPU architecture and pool, checks each commit out from a local
git cache, runs its steps, and publishes the log and the result. Start as many
as you like, on any machine that reaches the NATS server; if one dies mid-job,
the job is handed to another within seconds (its lease expires). On SIGTERM a
runner takes no more jobs, lets running ones finish within --grace, hands back
the rest, and exits 0. It signs its results with its identity (--identity, issued
by 'jetci setup --runner-identity'); a server with users refuses a runner without
one.

Steps run in a sandbox by default (--exec sandbox, Linux: bubblewrap namespaces,
the host read-only, only the workspace, TMPDIR, HOME and the branch's cache dir
writable, limits enforced by cgroups, every process gone when the step ends); a
job's image: runs in a container (podman or docker); --exec host runs steps as
this user (trusted set-ups only). Without a usable sandbox the runner refuses to
start unless --host-fallback. --arch other than this machine's runs through QEMU
user emulation (qemu-user-static's binfmt_misc handlers).

Steps start from a clean environment: none of this process's variables reach
them but PATH, LANG, LC_*, TZ, USER, LOGNAME and the --pass-env names. A job
gets the --secret values its pipeline file names (secrets: [NAME]), masked as
*** in its log. --limit-* bound every job; a job's own limits: in its pipeline
file apply where they are tighter.
`

func (m *Main) runner(ctx context.Context, args []string) error {
	def := runner.DefaultConfig()
	fs := m.flagSet("runner", runnerUsage)
	nf := connFlags(fs, events.RoleRunner)
	arch := fs.String("arch", def.Arch, "CPU architecture this runner serves")
	pool := fs.String("pool", def.Pool, "runner pool this runner serves")
	work := fs.String("work", def.WorkDir, "directory for git caches, workspaces, logs and the result outbox, owned by this runner alone (locked); relative to the working directory. Default: "+def.WorkDir+", or "+def.WorkDir+"-2, -3… when another runner holds it")
	id := fs.String("id", def.ID, "runner id shown in results (default: host-pid-random)")
	identity := fs.String("identity", os.Getenv("JETCI_RUNNER_IDENTITY"),
		"file with this runner's identity seed, issued by 'jetci setup --runner-identity NAME=FILE' ($JETCI_RUNNER_IDENTITY); "+
			"results are accepted only signed by a registered identity (without one the runner registers its own, which only an open server allows)")
	identityName := fs.String("identity-name", "", "NAME the identity was issued as (default: --id); --id must be NAME or start with NAME-")
	maddr := metricsFlag(fs)
	rf := addRunnerFlags(fs, def.Slots, "jobs run in parallel: this runner's capacity (default: the number of CPUs, for a runner that has the machine to itself; jetci up and jetci pool default to 1 per runner, as they run several runners on one machine)",
		def.Grace, "on SIGTERM, how long running jobs may finish before they are killed and handed back")
	lf := registerLogFlags(fs)
	log, err := m.parseLogged(fs, args, lf)
	if err != nil {
		return err
	}
	base := def
	base.Arch, base.Pool, base.WorkDir, base.ID = *arch, *pool, *work, *id
	cfg, err := rf.config(base)
	if err != nil {
		return err
	}
	cfg.IdentityName = *identityName
	if *identity != "" {
		data, err := os.ReadFile(*identity)
		if err != nil {
			return fmt.Errorf("--identity: %w", err)
		}
		if cfg.Identity, err = nkeys.FromSeed(bytes.TrimSpace(data)); err != nil {
			return fmt.Errorf("--identity %s: not an nkey seed: %w", *identity, err)
		}
	}
	log = log.With().Str("runner", cfg.ID).Logger()
	workSet := false
	fs.Visit(func(f *flag.Flag) { workSet = workSet || f.Name == "work" })
	return m.serve(ctx, nf, "jetci-runner", *maddr, false, log, func(nc *nats.Conn, js jetstream.JetStream, mets *metrics.Metrics) error {
		cfg.Metrics = mets
		r, err := newRunnerOwnWork(cfg, !workSet, nc, js, log)
		if err != nil {
			return err
		}
		return r.Run(ctx)
	})
}

// newRunnerOwnWork starts a runner on its own work directory. A --work given
// explicitly that another runner holds is an error; the default, when held,
// gives way to the first free of DIR-2, DIR-3…, so that runners started from
// one directory never share workspaces and each keeps its caches across
// restarts.
func newRunnerOwnWork(cfg runner.Config, pick bool, nc *nats.Conn, js jetstream.JetStream, log zerolog.Logger) (*runner.Runner, error) {
	base := cfg.WorkDir
	for i := 1; ; i++ {
		if i > 1 {
			cfg.WorkDir = base + "-" + strconv.Itoa(i)
		}
		r, err := runner.New(cfg, nc, js, log)
		if err == nil || !pick || !errors.Is(err, runner.ErrWorkDirInUse) || i >= 64 {
			if err == nil && i > 1 {
				log.Info().Str("work", cfg.WorkDir).Str("busy", base).Msg("the default work directory is held by another runner: using the next free one")
			}
			return r, err
		}
	}
}

const reporterUsage = `
Usage: jetci reporter --nats URL [--http ADDR] [--admin-token-file FILE] [--db postgres://…|FILE]

Folds every job event into one record per job, in its read model (--db: a SQLite
file, or a PostgreSQL database several reporters may share; it resumes after the
last event it applied, and is rebuilt from the streams when missing), and serves
the web UI (overview, branch history, jobs with live logs and artifacts, runners,
queue), the JSON API under /api/v1/ and the results service of jetci results.
With an admin token, the UI and API can also trigger, re-check and cancel jobs;
without one they are read-only. Several reporters may run at once. See docs/web-and-api.md,
History: the read model.

With --smtp or --webhook (or --notify-config) it also mails the author (and the
--mail-to recipients) when a branch breaks or is fixed, and POSTs signed webhooks;
each exactly once, through an outbox in JetStream. See docs/notifications.md.
`

func (m *Main) reporter(ctx context.Context, args []string) error {
	fs := m.flagSet("reporter", reporterUsage)
	nf := connFlags(fs, events.RoleReporter)
	rf := addReporterFlags(fs, "address of the web UI, the API and /metrics (empty: none)", "a SQLite file in a temporary directory, folded anew at each start")
	maddr := metricsFlag(fs)
	lf := registerLogFlags(fs)
	log, err := m.parseLogged(fs, args, lf)
	if err != nil {
		return err
	}
	cfg, err := rf.config("")
	if err != nil {
		return err
	}
	return m.serve(ctx, nf, "jetci-reporter", *maddr, true, log, func(_ *nats.Conn, js jetstream.JetStream, mets *metrics.Metrics) error {
		cfg.Metrics = mets
		r, err := reporter.New(ctx, cfg, js, log)
		if err != nil {
			return err
		}
		return r.Run(ctx)
	})
}
