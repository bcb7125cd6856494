// Package observer watches git repositories and publishes one CommitDetected event
// per new commit on every branch to JETCI_COMMITS.
//
// Each poll lists the remote's refs first, which is cheap, and fetches into a bare
// cache (go-git) only when a branch moved. The new commits of a branch are all
// those reachable from its new head and not from the last published one, oldest
// first: a burst of 20 commits gives 20 events, a merge brings in the commits it
// merged, a force-push publishes only commits not seen before, a new branch
// publishes every commit that no other recorded branch head reaches (its head
// only on a repository's first poll, when nothing is recorded yet; at most
// MaxNewCommits, logged), and a deleted branch is forgotten. The last published head
// of each branch lives in the jetci-heads KV bucket and is written only after
// JetStream acknowledged every event of the branch, so a restart neither misses
// nor repeats a commit (a crash in between re-publishes, and the Msg-Id dedups).
//
// go-git repositories are not safe for concurrent use, so each repository's
// polls and triggers run one at a time under its lock; different repositories
// are polled concurrently, Concurrency at most. A repository that cannot be
// reached (an unreachable URL, a local path that does not exist yet) is logged
// once and retried every poll without holding the others back.
//
// A failed publish or KV write is retried on the next poll and never touches
// the git cache; only errors reading the cache's objects after a fetch mean a
// damaged cache, which is then fetched anew. A commit event always fits the
// server's max payload: long subjects and author fields are cut, then the
// changed paths, probe, dead globs, pipeline file and extra parents, and the
// event's "truncated" field names what was cut.
// `jetci trigger` requests (core request/reply, queue group "observers") fetch,
// resolve a branch head or a commit, and publish it with Class user and a fresh
// trigger id; they never move a recorded head.
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
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/internal/parts"
)

// Observer is the commit-watching service.
type Observer struct {
	cfg   Config
	nc    *nats.Conn
	js    jetstream.JetStream
	log   zerolog.Logger
	repos map[string]*watched
	sem   chan struct{}

	headsMu sync.Mutex
	heads   jetstream.KeyValue // opened by openHeads

	trigMu   sync.Mutex
	stopped  bool           // Run has ended: triggers are refused
	inflight sync.WaitGroup // triggers being served

	repackAt int // repack a cache once it holds more packs than this
}

// repackAt is how many packs a cache may hold before it is repacked: every fetch
// adds a pack, go-git has no gc, and each lookup searches every pack.
const repackAt = 50

// watched is the state of one repository; mu serialises its polls and triggers
// (go-git repositories are not safe for concurrent use).
type watched struct {
	Repo
	mu      sync.Mutex
	cache   *git.Repository
	heads   map[string]string // branch -> last published head
	loaded  bool
	failing bool
	missing map[string]int    // branch -> consecutive listings without it
	broken  int               // consecutive polls that failed reading the cache
	refetch map[string]string // branch -> old head already looked for in a fresh cache
	src     *git.Repository   // a repository on this machine, read directly to list its branches
	poke    chan struct{}     // a push was announced: poll now
	log     zerolog.Logger
}

// New returns an observer; Run starts it.
func New(cfg Config, nc *nats.Conn, js jetstream.JetStream, log zerolog.Logger) (*Observer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o := &Observer{cfg: cfg, nc: nc, js: js, log: log, repos: map[string]*watched{}, sem: make(chan struct{}, cfg.Concurrency), repackAt: repackAt}
	for _, r := range cfg.Repos {
		o.repos[r.Name] = &watched{Repo: r, heads: map[string]string{}, poke: make(chan struct{}, 1), log: log.With().Str("repo", r.Name).Logger()}
	}
	return o, nil
}

// Run polls every repository every Poll and serves triggers until ctx ends. It
// returns nil when ctx ends, after the triggers being served are answered.
func (o *Observer) Run(ctx context.Context) error {
	if err := o.openHeads(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer o.stopTriggers()
	for name := range o.repos {
		sub, err := o.nc.QueueSubscribe(events.TriggerSubject(name), "observers", func(m *nats.Msg) {
			if o.startTrigger() {
				defer o.inflight.Done()
				o.serveTrigger(ctx, m)
			}
		})
		if err != nil {
			return fmt.Errorf("observer: subscribe to triggers of %s: %w", name, err)
		}
		defer sub.Unsubscribe()
		w := o.repos[name]
		psub, err := o.nc.QueueSubscribe(events.PokeSubject(name), "observers", func(m *nats.Msg) {
			select {
			case w.poke <- struct{}{}:
			default: // a poll is due already
			}
			_ = m.Respond(nil)
		})
		if err != nil {
			return fmt.Errorf("observer: subscribe to pokes of %s: %w", name, err)
		}
		defer psub.Unsubscribe()
	}
	var wg sync.WaitGroup
	// Says so in the log and /healthz when the server's JetStream stops
	// answering (a standalone nats-server on a full disk).
	wg.Go(func() {
		_ = parts.WatchJetStream(ctx, o.js, events.StreamCommits, events.HealthSubject("observer", nuid.Next()), o.cfg.Metrics, nil, o.log)
	})
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

// startTrigger counts a trigger in, unless Run has ended.
func (o *Observer) startTrigger() bool {
	o.trigMu.Lock()
	defer o.trigMu.Unlock()
	if o.stopped {
		return false
	}
	o.inflight.Add(1)
	return true
}

// stopTriggers refuses new triggers and waits for those being served.
func (o *Observer) stopTriggers() {
	o.trigMu.Lock()
	o.stopped = true
	o.trigMu.Unlock()
	o.inflight.Wait()
}

func (o *Observer) loop(ctx context.Context, name string) {
	t := time.NewTicker(o.cfg.Poll)
	defer t.Stop()
	poke := o.repos[name].poke
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
		case <-poke:
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
	start := time.Now()
	err := o.poll(ctx, w)
	o.cfg.Metrics.Poll(w.Name, time.Since(start), err)
	if err != nil && !isBusOnly(err) {
		w.cache = nil // reopened next time: a cache deleted or broken underneath is rebuilt
	}
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
	listed, err := listBranches(ctx, w, remote, w.Pulls)
	if err != nil {
		return fmt.Errorf("list refs of %s: %w", w.URL, err)
	}
	var moved []string
	for b, h := range listed {
		if w.heads[b] != h {
			moved = append(moved, b)
		}
	}
	for b := range w.heads {
		if _, ok := listed[b]; ok {
			delete(w.missing, b)
			continue
		}
		// A branch is forgotten only when two listings in a row lack it: a
		// listing caught mid-update must not make jetci skip its commits.
		if w.missing == nil {
			w.missing = map[string]int{}
		}
		if w.missing[b]++; w.missing[b] >= 2 {
			delete(w.missing, b)
			if err := o.headsKV().Delete(ctx, events.HeadKey(w.Name, b)); err != nil {
				return fmt.Errorf("forget branch %s: %w", b, err)
			}
			delete(w.heads, b)
			w.log.Info().Str("branch", b).Msg("branch deleted; forgotten")
		}
	}
	if len(moved) == 0 {
		return nil
	}
	if err := fetch(ctx, remote, w.Pulls); err != nil {
		// The remote answered the listing just now, so a fetch that fails
		// may fail on the cache itself: an observer killed while writing a
		// ref leaves an empty ref file, and every later fetch trips on it.
		// Such a cache is fetched anew at once; the heads are in KV.
		if derr := checkRefs(w.cache); derr != nil && ctx.Err() == nil {
			dir := o.cacheDir(w)
			w.log.Warn().Err(derr).Str("cache", dir).Msg("cache looks damaged; fetching it anew")
			w.cache, w.broken = nil, 0
			if rerr := os.RemoveAll(dir); rerr != nil {
				w.log.Error().Err(rerr).Msg("removing the damaged cache")
			}
			return &cacheError{fmt.Errorf("fetch %s: %w (cache damaged: %v)", w.URL, err, derr)}
		}
		return fmt.Errorf("fetch %s: %w", w.URL, err)
	}
	// One broken branch does not hold the others back; it is retried next poll.
	// Branches already recorded go first, then new ones, oldest head first, so
	// that a new branch made from another new one is compared with it.
	commits := map[plumbing.Hash]*object.Commit{}
	get := func(h plumbing.Hash) (*object.Commit, error) {
		if c, ok := commits[h]; ok {
			return c, nil
		}
		c, err := object.GetCommit(w.cache.Storer, h)
		if err == nil {
			commits[h] = c
		}
		return c, err
	}
	when := func(b string) time.Time {
		if c, err := get(plumbing.NewHash(listed[b])); err == nil {
			return c.Committer.When
		}
		return time.Time{}
	}
	sort.Strings(moved)
	sort.SliceStable(moved, func(i, j int) bool {
		_, ki := w.heads[moved[i]]
		_, kj := w.heads[moved[j]]
		if ki != kj {
			return ki
		}
		return !ki && when(moved[i]).Before(when(moved[j]))
	})
	ps := &pollState{baseline: len(w.heads) == 0, get: get}
	var errs []error
	for _, b := range moved {
		if err := o.publishBranch(ctx, w, b, ps); err != nil {
			errs = append(errs, fmt.Errorf("branch %s: %w", b, err))
			if ctx.Err() != nil {
				break
			}
		}
	}
	if len(errs) > 0 {
		// Errors reading objects after a successful fetch mean a damaged cache
		// (an observer killed mid-fetch or mid-repack): rebuild it from the
		// remote after the second such poll. The heads are in KV, not here.
		// Only git errors count: a publish that timed out or a full broker
		// says nothing about the cache, and the poll is simply retried.
		stale, damaged := false, false
		for _, err := range errs {
			stale = stale || errors.Is(err, errStaleCache)
			damaged = damaged || isCacheError(err)
		}
		if !damaged {
			return errors.Join(errs...)
		}
		if w.broken++; (stale || w.broken >= 2) && ctx.Err() == nil {
			dir := o.cacheDir(w)
			w.log.Warn().Err(errors.Join(errs...)).Str("cache", dir).Msg("cache looks damaged; fetching it anew")
			w.cache, w.broken = nil, 0
			if err := os.RemoveAll(dir); err != nil {
				w.log.Error().Err(err).Msg("removing the damaged cache")
			}
		}
		return errors.Join(errs...)
	}
	w.broken = 0
	o.maybeRepack(w)
	return nil
}

// errStaleCache asks for the cache to be fetched anew.
var errStaleCache = errors.New("the last published head is not in the cache")

// publishBranch publishes the new commits of one branch, then records its head.
// For a branch jetci has not recorded (a new branch, or one whose recording an
// observer crashed before), the new commits are those no other recorded branch
// head reaches, all of them (up to MaxNewCommits) and not just the head;
// baseline (the repository's first poll, nothing recorded) publishes only the
// head of each branch, as does a branch with no other recorded branch to
// compare with.
func (o *Observer) publishBranch(ctx context.Context, w *watched, branch string, ps *pollState) error {
	log := w.log.With().Str("branch", branch).Logger()
	ref, err := w.cache.Reference(plumbing.NewRemoteReferenceName("origin", branch), true)
	if err != nil {
		return &cacheError{fmt.Errorf("branch %s after fetch: %w", branch, err)}
	}
	head := ref.Hash()
	old := plumbing.ZeroHash
	prev, known := w.heads[branch]
	if known {
		old = plumbing.NewHash(prev)
		if _, err := w.cache.CommitObject(old); errors.Is(err, plumbing.ErrObjectNotFound) {
			// A published head should be in the cache. If it is not, the cache
			// may be damaged or new: look again in a freshly fetched one before
			// concluding that the history was rewritten past it.
			if w.refetch == nil {
				w.refetch = map[string]string{}
			}
			if w.refetch[branch] != prev {
				w.refetch[branch] = prev
				return errStaleCache
			}
			log.Warn().Str("old_head", prev).Msg("last published head is gone from the repository; publishing the new head only")
			old = plumbing.ZeroHash
		} else if err != nil {
			return &cacheError{fmt.Errorf("read last published head %s: %w", prev, err)}
		}
	}
	var list []string
	skippedBefore := "" // the oldest published commit, when older ones were skipped
	if !old.IsZero() || (!known && !ps.baseline && len(w.heads) > 0) {
		var commits []*object.Commit
		var err error
		if !old.IsZero() {
			commits, err = newCommits(w.cache.Storer, head, old, o.cfg.MaxNewCommits)
		} else if p, perr := ps.oldHeads(w); perr != nil {
			err = perr
		} else {
			commits, err = newBranchCommits(p, head, o.cfg.MaxNewCommits)
		}
		tooMany := errors.Is(err, errTooMany)
		if tooMany {
			oldest := ""
			if len(commits) > 0 {
				oldest = commits[0].Hash.String()
				skippedBefore = oldest
			}
			log.Warn().Int("max_new_commits", o.cfg.MaxNewCommits).Bool("new_branch", !known).Str("oldest_published", oldest).
				Msg("more new commits than --max-new-commits in one poll: publishing the newest only; the older ones are skipped, not tested " +
					"(the oldest published commit's event says older_commits_skipped; raise --max-new-commits to test them)")
			o.cfg.Metrics.CommitLimitHit(w.Name)
		} else if err != nil {
			return &cacheError{fmt.Errorf("new commits on %s: %w", branch, err)}
		}
		for _, c := range commits {
			list = append(list, c.Hash.String())
		}
		if !known && len(list) > 0 {
			log.Info().Int("commits", len(list)).Msg("new branch: publishing every commit no other branch reaches")
		}
	}
	if len(list) == 0 && old.IsZero() {
		list = []string{head.String()}
	}
	// A commit whose first parent is neither the last published head nor
	// published just before it was not checked on this branch: its changed
	// paths do not say what to check (see events.CommitDetected.NewBranch).
	checked := map[string]bool{old.String(): !old.IsZero()}
	for _, sha := range list {
		ev, err := o.event(w, branch, plumbing.NewHash(sha))
		if err != nil {
			return &cacheError{fmt.Errorf("commit %s: %w", sha, err)}
		}
		ev.Class = events.ClassFirst
		ev.NewBranch = len(ev.Parents) > 0 && !checked[ev.Parents[0]]
		ev.OlderSkipped = sha == skippedBefore
		checked[sha] = true
		if err := o.publish(ctx, ev, ""); err != nil {
			return err
		}
		log.Info().Str("commit", sha[:10]).Str("subject", ev.Subject).Msg("new commit")
		o.cfg.Metrics.CommitDetected(w.Name)
	}
	val, _ := json.Marshal(headEntry{Repo: w.Name, Branch: branch, Commit: head.String(), UpdatedAt: time.Now().UTC()})
	if _, err := o.headsKV().Put(ctx, events.HeadKey(w.Name, branch), val); err != nil {
		return &busError{fmt.Errorf("record head of %s: %w", branch, err)}
	}
	w.heads[branch] = head.String()
	if ps.painter != nil {
		return ps.painter.add(head) // the next new branch is compared with this one too
	}
	return nil
}

// pollState is what the branches of one poll share.
type pollState struct {
	baseline bool // nothing recorded before this poll: new branches publish their heads only
	get      func(plumbing.Hash) (*object.Commit, error)
	painter  *oldPainter // made for the first new branch
}

// oldHeads returns the painter holding every recorded head of the repository.
func (ps *pollState) oldHeads(w *watched) (*oldPainter, error) {
	if ps.painter == nil {
		p := newOldPainter(ps.get)
		for _, h := range w.heads {
			if err := p.add(plumbing.NewHash(h)); err != nil {
				return nil, err
			}
		}
		ps.painter = p
	}
	return ps.painter, nil
}

// publish sends a commit event, cut down to fit the server's max payload
// (a 1 MB commit message or 100,000 changed paths must not stall the branch).
// Its errors are busErrors: the cache is not to blame.
func (o *Observer) publish(ctx context.Context, ev *events.CommitDetected, triggerID string) error {
	id := events.CommitMsgID(ev.Repo, ev.Branch, ev.Commit, triggerID)
	data, err := fitEvent(ev, int(o.nc.MaxPayload())-len(id)-payloadSlack)
	if err != nil {
		return &busError{fmt.Errorf("commit %s: %w", ev.Commit, err)}
	}
	if len(ev.Truncated) > 0 {
		o.log.Warn().Str("repo", ev.Repo).Str("branch", ev.Branch).Str("commit", ev.Commit).Strs("truncated", ev.Truncated).
			Int("bytes", len(data)).Int64("max_payload", o.nc.MaxPayload()).Msg("commit event cut down to fit")
	}
	_, err = o.js.Publish(ctx, events.CommitSubject(ev.Repo, ev.Branch), data, jetstream.WithMsgID(id))
	if events.IsStorageFull(err) {
		return &busError{fmt.Errorf("publish commit %s: the NATS server is out of storage (a full disk, or its max_file_store reached): %w", ev.Commit, err)}
	} else if err != nil {
		return &busError{fmt.Errorf("publish commit %s: %w", ev.Commit, err)}
	}
	return nil
}

// busError is a failure to talk to NATS (publish, KV). The poll is retried as
// it is; the git cache is not to blame and is left alone.
type busError struct{ err error }

func (e *busError) Error() string { return e.err.Error() }
func (e *busError) Unwrap() error { return e.err }

// cacheError is a failure reading the git cache after a successful fetch: a
// missing or corrupt object. Repeated, it means a damaged cache, rebuilt from
// the remote.
type cacheError struct{ err error }

func (e *cacheError) Error() string { return e.err.Error() }
func (e *cacheError) Unwrap() error { return e.err }

// isBusOnly reports whether every error joined in err is a busError.
func isBusOnly(err error) bool {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			if !isBusOnly(e) {
				return false
			}
		}
		return true
	}
	var be *busError
	return errors.As(err, &be)
}

// checkRefs reads every reference of the cache and the object each one names,
// and returns the first that cannot be read.
func checkRefs(repo *git.Repository) error {
	iter, err := repo.References()
	if err != nil {
		return err
	}
	return iter.ForEach(func(r *plumbing.Reference) error {
		if r.Type() != plumbing.HashReference {
			return nil
		}
		if _, err := repo.Storer.EncodedObject(plumbing.AnyObject, r.Hash()); err != nil {
			return fmt.Errorf("ref %s (%s): %w", r.Name(), r.Hash(), err)
		}
		return nil
	})
}

func isCacheError(err error) bool {
	var ce *cacheError
	return errors.As(err, &ce) || errors.Is(err, errStaleCache)
}

// isLockFile tells a git lock file read as a reference (refs/heads/main.lock,
// there while git updates main) from a ref: no component of a ref name may end
// in ".lock" (git check-ref-format), so none of these is a branch.
func isLockFile(name plumbing.ReferenceName) bool {
	for _, c := range strings.Split(name.String(), "/") {
		if strings.HasSuffix(c, ".lock") {
			return true
		}
	}
	return false
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSpace(s)
}

// listBranches returns the branch heads of a watched repository. A repository
// on this machine is read directly (its refs only, kept open between polls);
// a remote one is listed over its transport, which for go-git means asking
// for every ref.
func listBranches(ctx context.Context, w *watched, remote *git.Remote, pulls string) (map[string]string, error) {
	var refs []*plumbing.Reference
	if filepath.IsAbs(w.URL) {
		if _, err := os.Stat(w.URL); err != nil {
			w.src = nil
			return nil, fmt.Errorf("repository not found: %w", err)
		}
		if w.src == nil {
			src, err := git.PlainOpenWithOptions(w.URL, &git.PlainOpenOptions{EnableDotGitCommonDir: true})
			if err != nil {
				return nil, err
			}
			w.src = src
		}
		iter, err := w.src.References()
		if err != nil {
			w.src = nil // reopened next time (the repository may have been replaced)
			return nil, err
		}
		err = iter.ForEach(func(r *plumbing.Reference) error {
			refs = append(refs, r)
			return nil
		})
		if err != nil {
			w.src = nil
			return nil, err
		}
	} else {
		var err error
		refs, err = remote.ListContext(ctx, &git.ListOptions{})
		if errors.Is(err, transport.ErrEmptyRemoteRepository) {
			refs, err = nil, nil
		}
		if err != nil {
			return nil, err
		}
	}
	listed := map[string]string{}
	for _, r := range refs {
		if isLockFile(r.Name()) {
			continue // git's own lock while it updates the ref (refs/heads/main.lock), not a branch
		}
		if r.Name().IsBranch() && r.Type() == plumbing.HashReference {
			listed[r.Name().Short()] = r.Hash().String()
		} else if b := PullBranch(pulls, r.Name().String()); pulls != "" && b != "" && r.Type() == plumbing.HashReference {
			// A pull request's head, tested as branch pull/N (or
			// merge-requests/N); it is fetched to refs/remotes/origin/<that>.
			if _, clash := listed[b]; !clash {
				listed[b] = r.Hash().String()
			}
		}
	}
	return listed, nil
}
