package runner

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/go-git/go-billy/v5/osfs"
	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/storer"
	"github.com/go-git/go-git/v5/storage"
	"github.com/go-git/go-git/v5/storage/filesystem"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
)

var (
	// errNoCommit marks a commit the repository does not have (anymore).
	errNoCommit = errors.New("no such commit")
	// errRemote marks a fetch that failed: the remote may be away, or the
	// cache damaged (see caches.verify).
	errRemote = errors.New("fetch")
)

// caches holds one bare git cache per repository. Fetches into a cache are
// serialised and exclude checkouts from it (go-git storages are not safe for
// concurrent use, so each checkout opens its own storage on the cache).
type caches struct {
	dir string
	mu  sync.Mutex
	per map[string]*sync.RWMutex
	// have remembers commits known to be in a cache, so that a job on a commit
	// seen before costs no object read (a full check runs thousands of jobs on
	// the same few commits). A cache only gains commits, unless it is removed,
	// which forgets its entries.
	have map[string]map[plumbing.Hash]bool
}

func (c *caches) known(repo string, h plumbing.Hash) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.have[repo][h]
}

func (c *caches) remember(repo string, h plumbing.Hash) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.have == nil {
		c.have = map[string]map[plumbing.Hash]bool{}
	}
	if c.have[repo] == nil {
		c.have[repo] = map[plumbing.Hash]bool{}
	}
	c.have[repo][h] = true
}

func (c *caches) forget(repo string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.have, repo)
}

func (c *caches) lock(repo string) *sync.RWMutex {
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.per[repo]
	if !ok {
		l = &sync.RWMutex{}
		c.per[repo] = l
	}
	return l
}

func (c *caches) path(repo string) string { return filepath.Join(c.dir, events.Token(repo)+".git") }

// ensure makes sure the cache of repo has commit, fetching from url if needed.
func (c *caches) ensure(ctx context.Context, repo, url, commit string) error {
	l := c.lock(repo)
	h := plumbing.NewHash(commit)
	if c.known(repo, h) {
		return nil
	}
	l.RLock()
	ok := hasCommit(c.path(repo), h)
	l.RUnlock()
	if ok {
		c.remember(repo, h)
		return nil
	}
	l.Lock()
	defer l.Unlock()
	if !hasCommit(c.path(repo), h) {
		if err := fetchCache(ctx, c.path(repo), url); err != nil {
			return err
		}
		if !hasCommit(c.path(repo), h) {
			// Not on a branch: a pull request's head, reached only by
			// refs/pull/N/head (GitHub, Gitea) or refs/merge-requests/N/head
			// (GitLab). Those are fetched only then: a big forge repo has
			// many.
			if err := fetchCache(ctx, c.path(repo), url, pullRefSpecs...); err != nil {
				return err
			}
		}
		if !hasCommit(c.path(repo), h) {
			return fmt.Errorf("%w %s in %s", errNoCommit, commit, url)
		}
	}
	c.remember(repo, h)
	return nil
}

func openStorage(dir string) *filesystem.Storage {
	return filesystem.NewStorage(osfs.New(dir), cache.NewObjectLRUDefault())
}

func hasCommit(dir string, h plumbing.Hash) bool {
	if _, err := os.Stat(dir); err != nil {
		return false
	}
	_, err := object.GetCommit(openStorage(dir), h)
	return err == nil
}

// pullRefSpecs fetch the heads of pull and merge requests.
var pullRefSpecs = []config.RefSpec{"+refs/pull/*/head:refs/remotes/origin/pull/*", "+refs/merge-requests/*/head:refs/remotes/origin/merge-requests/*"}

func fetchCache(ctx context.Context, dir, url string, specs ...config.RefSpec) error {
	if len(specs) == 0 {
		specs = []config.RefSpec{"+refs/heads/*:refs/remotes/origin/*"}
	}
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
	if rem, err := repo.Remote("origin"); err == nil && !slices.Equal(rem.Config().URLs, []string{url}) {
		_ = repo.DeleteRemote("origin")
	}
	rem, err := repo.Remote("origin")
	if errors.Is(err, git.ErrRemoteNotFound) {
		rem, err = repo.CreateRemote(&config.RemoteConfig{Name: "origin", URLs: []string{url}})
	}
	if err != nil {
		return fmt.Errorf("cache %s: %w", dir, err)
	}
	err = rem.FetchContext(ctx, &git.FetchOptions{
		RefSpecs: specs,
		Tags:     git.NoTags,
		Force:    true,
	})
	if err != nil && !errors.Is(err, git.NoErrAlreadyUpToDate) && !errors.Is(err, git.NoMatchingRefSpecError{}) {
		return fmt.Errorf("%w %s: %w", errRemote, url, err)
	}
	return nil
}

// prepare makes ws a clean checkout of commit. A workspace or cache left broken
// (a runner killed mid-write: a truncated index, a partial pack) is not fatal:
// the workspace is rebuilt, and if that is not enough the cache is fetched anew.
// A remote that cannot be reached is no reason to drop a sound cache: commits it
// holds still check out.
func (c *caches) prepare(ctx context.Context, repo, url, commit, ws string, log zerolog.Logger) error {
	err := c.ensure(ctx, repo, url, commit)
	if err == nil {
		if err = c.checkout(repo, commit, ws); err == nil {
			return nil
		}
		log.Warn().Err(err).Str("workspace", ws).Msg("checkout failed; rebuilding the workspace")
		if rerr := removeAll(ws); rerr != nil {
			return fmt.Errorf("%w (removing the workspace: %v)", err, rerr)
		}
		if err = c.checkout(repo, commit, ws); err == nil {
			return nil
		}
	} else if errors.Is(err, errNoCommit) || errors.Is(err, errRemote) {
		if ctx.Err() != nil {
			return err
		}
		verr := c.verify(repo)
		if verr == nil {
			return err // the cache is sound: the remote is away, or lacks the commit
		}
		log.Warn().Err(verr).Str("cache", c.path(repo)).Msg("the cache is damaged")
	}
	if ctx.Err() != nil {
		return err
	}
	log.Warn().Err(err).Str("cache", c.path(repo)).Msg("fetching the repository anew")
	l := c.lock(repo)
	l.Lock()
	rerr := removeAll(c.path(repo))
	c.forget(repo)
	l.Unlock()
	if rerr != nil {
		return fmt.Errorf("%w (removing the cache: %v)", err, rerr)
	}
	_ = removeAll(ws)
	if err := c.ensure(ctx, repo, url, commit); err != nil {
		return err
	}
	return c.checkout(repo, commit, ws)
}

// verify checks that every branch the cache holds points to a commit whose
// object and tree can be read: a cache damaged by a crash or a bad disk fails.
// A cache not made yet passes.
func (c *caches) verify(repo string) error {
	l := c.lock(repo)
	l.RLock()
	defer l.RUnlock()
	dir := c.path(repo)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	st := openStorage(dir)
	refs, err := st.IterReferences()
	if err != nil {
		return err
	}
	defer refs.Close()
	return refs.ForEach(func(ref *plumbing.Reference) error {
		if ref.Type() != plumbing.HashReference {
			return nil
		}
		cm, err := object.GetCommit(st, ref.Hash())
		if err == nil {
			_, err = cm.Tree()
		}
		if err != nil {
			return fmt.Errorf("%s: %w", ref.Name(), err)
		}
		return nil
	})
}

// slotStorer keeps a slot's HEAD, refs, index and config in the slot's own .git
// while its objects come from the shared cache: one copy of the history per
// machine, and a workspace per slot that moves from commit to commit.
type slotStorer struct {
	storer.EncodedObjectStorer
	storer.ReferenceStorer
	storer.ShallowStorer
	storer.IndexStorer
	config.ConfigStorer
	storage.ModuleStorer
}

// checkout moves the workspace ws to commit, objects from the cache of repo, and
// removes every file that is not part of the commit.
func (c *caches) checkout(repo, commit, ws string) error {
	l := c.lock(repo)
	l.RLock()
	defer l.RUnlock()
	if err := resetGitDir(ws); err != nil { // what the last job planted
		return fmt.Errorf("workspace %s: %w", ws, err)
	}
	_, statErr := os.Stat(filepath.Join(ws, ".git", "HEAD"))
	if err := linkObjects(filepath.Join(ws, ".git"), c.path(repo)); err != nil {
		return fmt.Errorf("workspace %s: %w", ws, err)
	}
	if statErr == nil {
		// The slot is on this commit already and the last job changed no
		// tracked file (several jobs of one commit, a re-run): removing what
		// the job added is all there is to do, without a git process (and
		// the stamp stays as it is).
		if entries, ok := unchanged(ws, commit); ok {
			if err := clean(ws, entries); err == nil {
				return nil
			}
		}
	}
	if err := c.move(repo, commit, ws, statErr == nil); err != nil {
		return err
	}
	// Stamp the index jetci's checkout left, so that the fast path can tell
	// it from one a job rewrote (git add, git rm --cached, reset --soft).
	stampIndex(ws, commit)
	return nil
}

// move checks commit out into ws with the git CLI (an existing workspace)
// or go-git, and removes every file not in the commit.
func (c *caches) move(repo, commit, ws string, exists bool) error {
	if exists && gitCLI() != "" {
		// A workspace that exists moves with the git CLI when there is one: it
		// compares the index with the files by their stat data and rewrites
		// only what changed, about ten times faster than go-git's checkout on
		// a large tree (BENCHMARKS.md). go-git stays the fallback.
		if err := cliGit(ws, "-c", "core.hooksPath=/dev/null", "-c", "advice.detachedHead=false", "checkout", "-q", "-f", "--detach", commit); err == nil {
			if cliGit(ws, "clean", "-q", "-ffdx") == nil {
				return nil
			}
			// git clean cannot remove what a job left without write
			// permission; the clean below can.
			if idx, err := openStorage(filepath.Join(ws, ".git")).Index(); err == nil {
				return clean(ws, idx.Entries)
			}
		}
	}
	local := openStorage(filepath.Join(ws, ".git"))
	st := &slotStorer{openStorage(c.path(repo)), local, local, local, local, local}
	wfs := osfs.New(ws)
	r, err := git.Open(st, wfs)
	if errors.Is(err, git.ErrRepositoryNotExists) {
		r, err = git.Init(st, wfs)
	}
	if err != nil {
		return fmt.Errorf("workspace %s: %w", ws, err)
	}
	wt, err := r.Worktree()
	if err != nil {
		return err
	}
	if err := wt.Checkout(&git.CheckoutOptions{Hash: plumbing.NewHash(commit), Force: true}); err != nil {
		return fmt.Errorf("checkout %s: %w", commit, err)
	}
	idx, err := local.Index()
	if err != nil {
		return err
	}
	return clean(ws, idx.Entries)
}

// linkObjects makes the slot's .git a repository the git CLI can read too (steps
// run `git describe`, `git log`): its objects come from the cache through
// objects/info/alternates. go-git reads them from the cache directly.
func linkObjects(dotGit, cache string) error {
	abs, err := filepath.Abs(filepath.Join(cache, "objects"))
	if err != nil {
		return err
	}
	for _, d := range []string{"objects/info", "refs/heads", "refs/tags"} {
		if err := os.MkdirAll(filepath.Join(dotGit, d), 0o755); err != nil {
			return err
		}
	}
	alt := filepath.Join(dotGit, "objects", "info", "alternates")
	if isPlainFileHolding(alt, abs+"\n") {
		return nil
	}
	// Written anew, never through: a job may have made it a hard link to a
	// file of the runner's (a symlink is gone already, resetGitDir).
	if err := os.Remove(alt); err != nil && !os.IsNotExist(err) {
		return err
	}
	return os.WriteFile(alt, []byte(abs+"\n"), 0o644)
}

var (
	gitOnce sync.Once
	gitPath string
)

// gitCLI is the git command's path, or "" when git is not installed.
func gitCLI() string {
	gitOnce.Do(func() { gitPath, _ = exec.LookPath("git") })
	return gitPath
}

// cliGit runs the git CLI in the workspace ws.
func cliGit(ws string, args ...string) error {
	env := []string{"GIT_TERMINAL_PROMPT=0", "LC_ALL=C"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GIT_") { // a GIT_DIR or GIT_INDEX_FILE of the runner's own must not leak in
			env = append(env, kv)
		}
	}
	// Under the sandbox the workspace belongs to the slot's user, not the
	// runner's, and git would refuse it ("dubious ownership"); its config
	// is jetci's own again by now (resetGitDir), so it can be trusted.
	cmd := exec.Command(gitCLI(), append([]string{"-c", "safe.directory=*", "-C", ws}, args...)...)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
