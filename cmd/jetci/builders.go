package main

import (
	"errors"
	"flag"
	"time"

	"github.com/jetci/jetci/dispatcher"
	"github.com/jetci/jetci/observer"
	"github.com/jetci/jetci/reporter"
	"github.com/jetci/jetci/runner"
)

// One builder per service: the flags a service's own command and jetci up
// share, and the config they make of them. Both commands register and build
// through these, so a flag or a check added to a service reaches both. What
// differs between the two (defaults, where state goes) is a parameter.

// errNoRepo is an observer without --repo.
var errNoRepo = errors.New("--repo is required: the path or URL of a git repository to watch")

// observerFlags are the observer's --repo, --pull-requests, --poll and
// --max-new-commits.
type observerFlags struct {
	repos, pulls listFlag
	poll         *time.Duration
	maxNew       *int
}

func addObserverFlags(fs *flag.FlagSet, pollHelp string) *observerFlags {
	o := &observerFlags{}
	fs.Var(&o.repos, "repo", "repository to watch: PATH_OR_URL or name=PATH_OR_URL (repeat for more)")
	fs.Var(&o.pulls, "pull-requests", pullRequestsHelp)
	o.poll = fs.Duration("poll", time.Second, pollHelp)
	o.maxNew = maxNewCommitsFlag(fs)
	return o
}

// config is the observer's config, with its git caches in cacheDir; no
// --repo is errNoRepo.
func (o *observerFlags) config(cacheDir string) (observer.Config, error) {
	cfg := observer.DefaultConfig()
	if len(o.repos) == 0 {
		return cfg, errNoRepo
	}
	for _, r := range o.repos {
		repo, err := observer.ParseRepo(r)
		if err != nil {
			return cfg, err
		}
		cfg.Repos = append(cfg.Repos, repo)
	}
	for _, p := range o.pulls {
		if err := observer.SetPulls(&cfg, p); err != nil {
			return cfg, err
		}
	}
	cfg.Poll, cfg.CacheDir, cfg.MaxNewCommits = *o.poll, cacheDir, *o.maxNew
	return cfg, cfg.Validate()
}

// dispatcherFlags are the dispatcher's --arch and scheduling flags.
type dispatcherFlags struct {
	arch listFlag
	gate func(*dispatcher.Config) error
}

func addDispatcherFlags(fs *flag.FlagSet, archHelp string) *dispatcherFlags {
	d := &dispatcherFlags{}
	fs.Var(&d.arch, "arch", archHelp)
	d.gate = gateFlags(fs)
	return d
}

// config is the dispatcher's config; adjust, when not nil, sets what the
// command adds (its pool, the coalescing of pull requests) after the
// scheduling flags, before it is validated.
func (d *dispatcherFlags) config(adjust func(*dispatcher.Config)) (dispatcher.Config, error) {
	cfg := dispatcher.DefaultConfig()
	if a := splitList(d.arch); len(a) > 0 {
		cfg.Arch = a
	}
	if err := d.gate(&cfg); err != nil {
		return cfg, err
	}
	if adjust != nil {
		adjust(&cfg)
	}
	return cfg, cfg.Validate()
}

// reporterFlags are the reporter's web, security, notification and read
// model flags.
type reporterFlags struct {
	http       *string
	adminToken func() (string, error)
	hookSecret func() (string, error)
	notify     func() (reporter.NotifyConfig, error)
	db         dbFlags
}

// addReporterFlags registers them; dbDefault says where the read model is
// without --db.
func addReporterFlags(fs *flag.FlagSet, httpHelp, dbDefault string) *reporterFlags {
	return &reporterFlags{
		http:       fs.String("http", reporter.DefaultConfig().HTTP, httpHelp),
		adminToken: adminTokenFlags(fs),
		notify:     notifyFlags(fs),
		hookSecret: hookSecretFlag(fs),
		db:         readModelFlags(fs, dbDefault),
	}
}

// config is the reporter's config, its SQLite read model under data when
// --db is not given and data is set. The caller sets Metrics and Health.
func (r *reporterFlags) config(data string) (reporter.Config, error) {
	if err := r.db.check(); err != nil {
		return reporter.Config{}, err
	}
	token, err := r.adminToken()
	if err != nil {
		return reporter.Config{}, err
	}
	ncfg, err := r.notify()
	if err != nil {
		return reporter.Config{}, err
	}
	hook, err := r.hookSecret()
	if err != nil {
		return reporter.Config{}, err
	}
	return reporter.Config{HTTP: *r.http, AdminToken: token, Notify: ncfg, HookSecret: hook,
		DB: r.db.dsn(data), HistoryRetention: *r.db.retention}, nil
}

// runnerFlags are a runner's --slots, --grace, --artifact-limit and job
// flags (sandbox, secrets, limits).
type runnerFlags struct {
	slots         *int
	grace         *time.Duration
	artifactLimit sizeFlag
	jobs          func(*runner.Config) error
}

func addRunnerFlags(fs *flag.FlagSet, slots int, slotsHelp string, grace time.Duration, graceHelp string) *runnerFlags {
	r := &runnerFlags{artifactLimit: sizeFlag(runner.DefaultConfig().ArtifactLimit)}
	r.slots = fs.Int("slots", slots, slotsHelp)
	r.grace = fs.Duration("grace", grace, graceHelp)
	fs.Var(&r.artifactLimit, "artifact-limit", "bytes of artifacts one job may store (e.g. 100MiB; 0: none)")
	r.jobs = jobFlags(fs)
	return r
}

// config is base with these flags applied, validated.
func (r *runnerFlags) config(base runner.Config) (runner.Config, error) {
	cfg := base
	if err := r.jobs(&cfg); err != nil {
		return cfg, err
	}
	cfg.Slots, cfg.Grace, cfg.ArtifactLimit = *r.slots, *r.grace, int64(r.artifactLimit)
	return cfg, cfg.Validate()
}
