// Package observer watches git repositories and publishes one CommitDetected event
// per new commit on every branch to JETCI_COMMITS.
//
// Each poll lists the remote's refs first, which is cheap, and fetches into a bare
// cache (go-git) only when a branch moved. The new commits of a branch are all
// those reachable from its new head and not from the last published one, oldest
// first: a burst of 20 commits gives 20 events, a merge brings in the commits it
// merged, a force-push publishes only commits not seen before, a new branch
// publishes its head, and a deleted branch is forgotten. The last published head
// of each branch lives in the jetci-heads KV bucket and is written only after
// JetStream acknowledged every event of the branch, so a restart neither misses
// nor repeats a commit (a crash in between re-publishes, and the Msg-Id dedups).
package observer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
)

// Config configures an observer.
type Config struct {
	Repos         []Repo
	Poll          time.Duration // how often each repo is polled
	CacheDir      string        // bare caches, one per repo
	Concurrency   int           // repos polled at once
	MaxNewCommits int           // per branch and poll; beyond it only the newest are published
	PipelineMax   int           // bytes of pipeline file carried in an event
	ChangedMax    int           // changed paths carried in an event
}

// DefaultConfig polls every second.
func DefaultConfig() Config {
	return Config{Poll: time.Second, CacheDir: ".jetci/observer", Concurrency: 8, MaxNewCommits: 1000, PipelineMax: 256 << 10, ChangedMax: 5000}
}

// Validate reports the first bad field.
func (c Config) Validate() error {
	if len(c.Repos) == 0 {
		return errors.New("observer: Repos is empty: watch at least one repository")
	}
	seen := map[string]string{}
	for _, r := range c.Repos {
		if r.Name == "" || r.URL == "" {
			return fmt.Errorf("observer: Repos: %+v needs a name and a URL", r)
		}
		if prev, ok := seen[r.Name]; ok {
			return fmt.Errorf("observer: two repos are named %q (%s and %s): name them with --repo name=PATH_OR_URL", r.Name, prev, r.URL)
		}
		seen[r.Name] = r.URL
	}
	switch {
	case c.Poll <= 0:
		return fmt.Errorf("observer: Poll %s: want more than 0", c.Poll)
	case c.CacheDir == "":
		return errors.New("observer: CacheDir is empty")
	case c.Concurrency < 1:
		return fmt.Errorf("observer: Concurrency %d: want at least 1", c.Concurrency)
	case c.MaxNewCommits < 1:
		return fmt.Errorf("observer: MaxNewCommits %d: want at least 1", c.MaxNewCommits)
	case c.PipelineMax < 1 || c.PipelineMax > 512<<10:
		return fmt.Errorf("observer: PipelineMax %d: want 1 to %d bytes", c.PipelineMax, 512<<10)
	case c.ChangedMax < 0:
		return fmt.Errorf("observer: ChangedMax %d: want 0 or more", c.ChangedMax)
	}
	return nil
}

// Observer is the commit-watching service.
type Observer struct {
	cfg   Config
	nc    *nats.Conn
	js    jetstream.JetStream
	log   zerolog.Logger
	heads jetstream.KeyValue
	repos map[string]*watched
	sem   chan struct{}
}

// watched is the state of one repository; mu serialises its polls and triggers
// (go-git repositories are not safe for concurrent use).
type watched struct {
	Repo
	mu      sync.Mutex
	cache   *git.Repository
	heads   map[string]string // branch -> last published head
	loaded  bool
	failing bool
	log     zerolog.Logger
}

// New returns an observer; Run starts it.
func New(cfg Config, nc *nats.Conn, js jetstream.JetStream, log zerolog.Logger) (*Observer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o := &Observer{cfg: cfg, nc: nc, js: js, log: log, repos: map[string]*watched{}, sem: make(chan struct{}, cfg.Concurrency)}
	for _, r := range cfg.Repos {
		o.repos[r.Name] = &watched{Repo: r, heads: map[string]string{}, log: log.With().Str("repo", r.Name).Logger()}
	}
	return o, nil
}

// Run polls every repository every Poll and serves triggers until ctx ends.
func (o *Observer) Run(ctx context.Context) error {
	if err := o.openHeads(ctx); err != nil {
		return err
	}
	for name := range o.repos {
		sub, err := o.nc.QueueSubscribe(events.TriggerSubject(name), "observers", func(m *nats.Msg) { o.serveTrigger(ctx, m) })
		if err != nil {
			return fmt.Errorf("observer: subscribe to triggers: %w", err)
		}
		defer sub.Unsubscribe()
	}
	var wg sync.WaitGroup
	for name := range o.repos {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o.loop(ctx, name)
		}()
	}
	o.log.Info().Int("repos", len(o.repos)).Dur("poll", o.cfg.Poll).Msg("observer watching")
	wg.Wait()
	return nil
}

func (o *Observer) openHeads(ctx context.Context) error {
	if o.heads != nil {
		return nil
	}
	return events.Retry(ctx, o.log, "open heads bucket", 5*time.Second, func(ctx context.Context) error {
		kv, err := o.js.KeyValue(ctx, events.BucketHeads)
		o.heads = kv
		return err
	})
}

func (o *Observer) loop(ctx context.Context, name string) {
	t := time.NewTicker(o.cfg.Poll)
	defer t.Stop()
	for {
		select {
		case o.sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		_ = o.Poll(ctx, name) // Poll logs its own errors
		<-o.sem
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// Poll checks one repository now and publishes its new commits.
func (o *Observer) Poll(ctx context.Context, name string) error {
	w, ok := o.repos[name]
	if !ok {
		return fmt.Errorf("observer: no repo named %q", name)
	}
	if err := o.openHeads(ctx); err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	err := o.poll(ctx, w)
	switch {
	case err != nil && ctx.Err() != nil:
		return nil
	case err != nil && !w.failing:
		w.failing = true
		w.log.Error().Err(err).Str("url", w.URL).Msg("cannot poll repo; will keep trying")
	case err != nil:
		w.log.Debug().Err(err).Msg("repo still failing")
	case w.failing:
		w.failing = false
		w.log.Info().Str("url", w.URL).Msg("repo reachable again")
	}
	return err
}

func (o *Observer) poll(ctx context.Context, w *watched) error {
	if err := o.open(ctx, w); err != nil {
		return err
	}
	remote, err := w.cache.Remote("origin")
	if err != nil {
		return err
	}
	refs, err := remote.ListContext(ctx, &git.ListOptions{})
	if errors.Is(err, transport.ErrEmptyRemoteRepository) {
		refs, err = nil, nil
	}
	if err != nil {
		return fmt.Errorf("list refs of %s: %w", w.URL, err)
	}
	listed := map[string]string{}
	for _, r := range refs {
		if r.Name().IsBranch() && r.Type() == plumbing.HashReference {
			listed[r.Name().Short()] = r.Hash().String()
		}
	}
	var moved []string
	for b, h := range listed {
		if w.heads[b] != h {
			moved = append(moved, b)
		}
	}
	for b := range w.heads {
		if _, ok := listed[b]; !ok {
			if err := o.heads.Delete(ctx, events.HeadKey(w.Name, b)); err != nil {
				return fmt.Errorf("forget branch %s: %w", b, err)
			}
			delete(w.heads, b)
			w.log.Info().Str("branch", b).Msg("branch deleted; forgotten")
		}
	}
	if len(moved) == 0 {
		return nil
	}
	if err := fetch(ctx, remote); err != nil {
		return fmt.Errorf("fetch %s: %w", w.URL, err)
	}
	sort.Strings(moved)
	for _, b := range moved {
		if err := o.publishBranch(ctx, w, b); err != nil {
			return err
		}
	}
	return nil
}

func fetch(ctx context.Context, remote *git.Remote) error {
	err := remote.FetchContext(ctx, &git.FetchOptions{
		RefSpecs: []config.RefSpec{"+refs/heads/*:refs/remotes/origin/*"},
		Tags:     git.NoTags,
		Force:    true,
	})
	if errors.Is(err, git.NoErrAlreadyUpToDate) {
		return nil
	}
	return err
}

// open opens (or creates) the repo's bare cache and loads its published heads.
func (o *Observer) open(ctx context.Context, w *watched) error {
	if w.cache == nil {
		dir := filepath.Join(o.cfg.CacheDir, events.Token(w.Name)+".git")
		repo, err := git.PlainOpen(dir)
		if errors.Is(err, git.ErrRepositoryNotExists) {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			repo, err = git.PlainInit(dir, true)
		}
		if err != nil {
			return fmt.Errorf("cache %s: %w", dir, err)
		}
		if rem, err := repo.Remote("origin"); err == nil && rem.Config().URLs[0] != w.URL {
			_ = repo.DeleteRemote("origin")
		}
		if _, err := repo.Remote("origin"); errors.Is(err, git.ErrRemoteNotFound) {
			if _, err := repo.CreateRemote(&config.RemoteConfig{Name: "origin", URLs: []string{w.URL}}); err != nil {
				return fmt.Errorf("cache %s: %w", dir, err)
			}
		}
		w.cache = repo
	}
	if !w.loaded {
		heads, err := o.loadHeads(ctx, w.Name)
		if err != nil {
			return err
		}
		w.heads, w.loaded = heads, true
	}
	return nil
}

// headEntry is the value of a jetci-heads entry.
type headEntry struct {
	Repo      string    `json:"repo"`
	Branch    string    `json:"branch"`
	Commit    string    `json:"commit"`
	UpdatedAt time.Time `json:"updated_at"`
}

func (o *Observer) loadHeads(ctx context.Context, repo string) (map[string]string, error) {
	w, err := o.heads.Watch(ctx, events.Token(repo)+".*", jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("load heads: %w", err)
	}
	defer w.Stop()
	heads := map[string]string{}
	for e := range w.Updates() {
		if e == nil {
			return heads, nil
		}
		var h headEntry
		if err := json.Unmarshal(e.Value(), &h); err == nil && h.Repo == repo && h.Branch != "" {
			heads[h.Branch] = h.Commit
		}
	}
	return nil, errors.New("load heads: watcher closed")
}

// publishBranch publishes the new commits of one branch, then records its head.
func (o *Observer) publishBranch(ctx context.Context, w *watched, branch string) error {
	log := w.log.With().Str("branch", branch).Logger()
	ref, err := w.cache.Reference(plumbing.NewRemoteReferenceName("origin", branch), true)
	if err != nil {
		return fmt.Errorf("branch %s after fetch: %w", branch, err)
	}
	head := ref.Hash()
	old := plumbing.ZeroHash
	if prev, ok := w.heads[branch]; ok {
		old = plumbing.NewHash(prev)
		if _, err := w.cache.CommitObject(old); err != nil {
			log.Warn().Str("old_head", prev).Msg("last published head is not in the cache; publishing the new head only")
			old = plumbing.ZeroHash
		}
	}
	var list []string
	if old.IsZero() {
		list = []string{head.String()}
	} else {
		commits, err := newCommits(w.cache.Storer, head, old, o.cfg.MaxNewCommits)
		if errors.Is(err, errTooMany) {
			log.Warn().Int("max", o.cfg.MaxNewCommits).Msg("more new commits than MaxNewCommits; publishing the newest only")
		} else if err != nil {
			return fmt.Errorf("new commits on %s: %w", branch, err)
		}
		for _, c := range commits {
			list = append(list, c.Hash.String())
		}
	}
	for _, sha := range list {
		ev, err := o.event(w, branch, plumbing.NewHash(sha))
		if err != nil {
			return fmt.Errorf("commit %s: %w", sha, err)
		}
		ev.Class = events.ClassFirst
		if err := o.publish(ctx, ev, ""); err != nil {
			return err
		}
		log.Info().Str("commit", sha[:10]).Str("subject", ev.Subject).Msg("new commit")
	}
	val, _ := json.Marshal(headEntry{Repo: w.Name, Branch: branch, Commit: head.String(), UpdatedAt: time.Now().UTC()})
	if _, err := o.heads.Put(ctx, events.HeadKey(w.Name, branch), val); err != nil {
		return fmt.Errorf("record head of %s: %w", branch, err)
	}
	w.heads[branch] = head.String()
	return nil
}

func (o *Observer) publish(ctx context.Context, ev *events.CommitDetected, triggerID string) error {
	data, err := events.Encode(ev)
	if err != nil {
		return err
	}
	_, err = o.js.Publish(ctx, events.CommitSubject(ev.Repo, ev.Branch), data,
		jetstream.WithMsgID(events.CommitMsgID(ev.Repo, ev.Branch, ev.Commit, triggerID)))
	if err != nil {
		return fmt.Errorf("publish commit %s: %w", ev.Commit, err)
	}
	return nil
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSpace(s)
}
