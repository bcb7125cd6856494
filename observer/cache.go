package observer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing/storer"

	"github.com/jetci/jetci/events"
)

// maybeRepack packs the cache into one pack once fetches have left many. It runs
// only when every branch's published head is its fetched head, so the objects a
// repack drops (unreachable from the branches) are never needed again.
func (o *Observer) maybeRepack(w *watched) {
	pos, ok := w.cache.Storer.(storer.PackedObjectStorer)
	if !ok {
		return
	}
	packs, err := pos.ObjectPacks()
	if err != nil || len(packs) <= o.repackAt {
		return
	}
	start := time.Now()
	err = w.cache.RepackObjects(&git.RepackConfig{})
	w.cache = nil // reopen: the storage caches the list of packs
	if err != nil {
		w.log.Warn().Err(err).Int("packs", len(packs)).Msg("repack of the cache failed")
		return
	}
	w.log.Info().Int("packs", len(packs)).Dur("took", time.Since(start)).Msg("cache repacked")
}

func fetch(ctx context.Context, remote *git.Remote, pulls string) error {
	specs := []config.RefSpec{"+refs/heads/*:refs/remotes/origin/*"}
	switch pulls {
	case PullsGitHub:
		specs = append(specs, "+refs/pull/*/head:refs/remotes/origin/pull/*")
	case PullsGitLab:
		specs = append(specs, "+refs/merge-requests/*/head:refs/remotes/origin/merge-requests/*")
	}
	err := remote.FetchContext(ctx, &git.FetchOptions{
		RefSpecs: specs,
		Tags:     git.NoTags,
		Force:    true,
		Prune:    true, // a deleted branch must not stay resolvable for triggers
	})
	if errors.Is(err, git.NoErrAlreadyUpToDate) {
		return nil
	}
	return err
}

func (o *Observer) cacheDir(w *watched) string {
	return filepath.Join(o.cfg.CacheDir, events.Token(w.Name)+".git")
}

// open opens (or creates) the repo's bare cache and loads its published heads.
func (o *Observer) open(ctx context.Context, w *watched) error {
	if w.cache == nil {
		dir := o.cacheDir(w)
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
