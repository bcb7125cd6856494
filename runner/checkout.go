package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

// errNoCommit marks a commit the repository does not have (anymore).
var errNoCommit = errors.New("no such commit")

// caches holds one bare git cache per repository. Fetches into a cache are
// serialised and exclude checkouts from it (go-git storages are not safe for
// concurrent use, so each checkout opens its own storage on the cache).
type caches struct {
	dir string
	mu  sync.Mutex
	per map[string]*sync.RWMutex
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
	l.RLock()
	ok := hasCommit(c.path(repo), h)
	l.RUnlock()
	if ok {
		return nil
	}
	l.Lock()
	defer l.Unlock()
	if hasCommit(c.path(repo), h) {
		return nil
	}
	if err := fetchCache(ctx, c.path(repo), url); err != nil {
		return err
	}
	if !hasCommit(c.path(repo), h) {
		return fmt.Errorf("%w %s in %s", errNoCommit, commit, url)
	}
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

func fetchCache(ctx context.Context, dir, url string) error {
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
	if rem, err := repo.Remote("origin"); err == nil && rem.Config().URLs[0] != url {
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
		RefSpecs: []config.RefSpec{"+refs/heads/*:refs/remotes/origin/*"},
		Tags:     git.NoTags,
		Force:    true,
	})
	if err != nil && !errors.Is(err, git.NoErrAlreadyUpToDate) {
		return fmt.Errorf("fetch %s: %w", url, err)
	}
	return nil
}

// prepare makes ws a clean checkout of commit. A workspace or cache left broken
// (a runner killed mid-write: a truncated index, a partial pack) is not fatal:
// the workspace is rebuilt, and if that is not enough the cache is fetched anew.
func (c *caches) prepare(ctx context.Context, repo, url, commit, ws string, log zerolog.Logger) error {
	err := c.ensure(ctx, repo, url, commit)
	if err == nil {
		if err = c.checkout(repo, commit, ws); err == nil {
			return nil
		}
		log.Warn().Err(err).Str("workspace", ws).Msg("checkout failed; rebuilding the workspace")
		if rerr := os.RemoveAll(ws); rerr != nil {
			return err
		}
		if err = c.checkout(repo, commit, ws); err == nil {
			return nil
		}
	}
	if errors.Is(err, errNoCommit) || ctx.Err() != nil {
		return err
	}
	log.Warn().Err(err).Str("cache", c.path(repo)).Msg("checkout still failing; fetching the repository anew")
	l := c.lock(repo)
	l.Lock()
	rerr := os.RemoveAll(c.path(repo))
	l.Unlock()
	if rerr != nil {
		return err
	}
	_ = os.RemoveAll(ws)
	if err := c.ensure(ctx, repo, url, commit); err != nil {
		return err
	}
	return c.checkout(repo, commit, ws)
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
	if err := os.MkdirAll(filepath.Join(ws, ".git"), 0o755); err != nil {
		return err
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
