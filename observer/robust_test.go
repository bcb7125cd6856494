package observer

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

func TestUnreachableRepoDoesNotStopOthers(t *testing.T) {
	s := brokertest.Run(t)
	c := collect(t, s)
	good := newGitRepo(t)
	gone := newGitRepo(t)
	gone.commit("x", nil)
	first := good.commit("x", nil)
	cfg := testConfig(t.TempDir(), Repo{Name: "good", URL: good.dir}, Repo{Name: "gone", URL: gone.dir},
		Repo{Name: "never", URL: filepath.Join(t.TempDir(), "never-existed")})
	cfg.Concurrency = 1
	o := newObserver(t, s, cfg)
	if err := os.RemoveAll(gone.dir); err != nil {
		t.Fatal(err)
	}
	run(t, o)
	seen := map[string]bool{}
	wait := func(sha string) {
		brokertest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
			for _, e := range c.take() {
				seen[e.Commit] = true
			}
			if !seen[sha] {
				return fmt.Errorf("good repo's %s not published", sha)
			}
			return nil
		})
	}
	wait(first)
	wait(good.commit("y", nil)) // and it keeps going
	if err := o.Poll(context.Background(), "gone"); err == nil {
		t.Fatal("polling a deleted repo: want an error")
	}
}

func TestFailingRepoLogsOnceAndRecovers(t *testing.T) {
	s := brokertest.Run(t)
	c := collect(t, s)
	repo := newGitRepo(t)
	repo.commit("one", nil)
	var logs logBuffer
	o, err := New(testConfig(t.TempDir(), Repo{Name: "proj", URL: repo.dir}), s.NC, s.JS, logs.logger())
	if err != nil {
		t.Fatal(err)
	}
	pollAndWait(t, s, o, c, "proj", 1)
	if err := os.RemoveAll(repo.dir); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := o.Poll(context.Background(), "proj"); err == nil {
			t.Fatal("want an error for a deleted repo")
		}
	}
	errs := logs.lines("error", "cannot poll repo")
	if len(errs) != 1 || !strings.Contains(errs[0], `"repo":"proj"`) || !strings.Contains(errs[0], `"url":"`+repo.dir) {
		t.Fatalf("error lines %q, want one with repo and url", errs)
	}
	if n := len(logs.lines("debug", "repo still failing")); n != 2 {
		t.Fatalf("%d debug lines, want 2", n)
	}
	// The repo comes back with a new history at the same place.
	repo = &gitRepo{t: t, dir: repo.dir}
	if err := os.MkdirAll(repo.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	repo.git("init", "-q", "-b", "main")
	sha := repo.commit("reborn", nil)
	if evs := pollAndWait(t, s, o, c, "proj", 1); evs[0].Commit != sha {
		t.Fatalf("after recovery: %v", names(evs))
	}
	if n := len(logs.lines("info", "repo reachable again")); n != 1 {
		t.Fatalf("%d recovery lines, want 1", n)
	}
	if n := len(logs.lines("info", "new commit")); n != 2 {
		t.Fatalf("%d commit lines, want 2", n)
	}
}

// TestManyReposConcurrently runs several repos through a small Concurrency while
// the test also polls and triggers them: every commit once, in order, per repo.
func TestManyReposConcurrently(t *testing.T) {
	s := brokertest.Run(t)
	c := collect(t, s)
	var repos []*gitRepo
	var cfgRepos []Repo
	for i := range 4 {
		r := newGitRepo(t)
		r.commit("root", nil)
		repos = append(repos, r)
		cfgRepos = append(cfgRepos, Repo{Name: fmt.Sprint("r", i), URL: r.dir})
	}
	cfg := testConfig(t.TempDir(), cfgRepos...)
	cfg.Concurrency = 2
	o := newObserver(t, s, cfg)
	run(t, o)
	// Let each repo's root be published before committing, so the expectations
	// below do not depend on which poll sees which commit first.
	brokertest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		for i, r := range repos {
			if err := headIs(s, fmt.Sprint("r", i), "main", r.git("rev-parse", "HEAD")); err != nil {
				return err
			}
		}
		return nil
	})
	c.take()

	want := map[string][]string{}
	var wg sync.WaitGroup
	for i, r := range repos {
		name := fmt.Sprint("r", i)
		for j := range 6 {
			want[name] = append(want[name], r.commit(fmt.Sprint(name, " ", j), nil))
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range 3 {
				if err := o.Poll(context.Background(), name); err != nil {
					t.Errorf("poll %s: %v", name, err)
				}
			}
		}()
		go func() {
			defer wg.Done()
			data, _ := events.Encode(&events.TriggerRequest{Repo: name, Branch: "main"})
			m, err := s.NC.Request(events.TriggerSubject(name), data, 10*time.Second)
			if err != nil {
				t.Errorf("trigger %s: %v", name, err)
				return
			}
			if r, err := events.DecodeAs[events.TriggerReply](m.Data); err != nil || r.Error != "" {
				t.Errorf("trigger %s: %+v %v", name, r, err)
			}
		}()
	}
	wg.Wait()
	got := map[string][]string{}
	triggered := map[string]int{}
	brokertest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		for _, e := range c.take() {
			if e.Class == events.ClassUser {
				triggered[e.Repo]++
				continue
			}
			got[e.Repo] = append(got[e.Repo], e.Commit)
		}
		for name, w := range want {
			if len(got[name]) < len(w) || triggered[name] < 1 {
				return fmt.Errorf("%s: %d of %d commits, %d triggers", name, len(got[name]), len(w), triggered[name])
			}
		}
		return nil
	})
	for name, w := range want {
		if strings.Join(got[name], " ") != strings.Join(w, " ") {
			t.Errorf("%s: got %v\nwant %v", name, got[name], w)
		}
		if triggered[name] != 1 {
			t.Errorf("%s: %d triggered events, want 1", name, triggered[name])
		}
	}
}

func TestCacheIsRepacked(t *testing.T) {
	s := brokertest.Run(t)
	c := collect(t, s)
	repo := newGitRepo(t)
	cache := t.TempDir()
	o := newObserver(t, s, testConfig(cache, Repo{Name: "proj", URL: repo.dir}))
	o.repackAt = 3
	packs := func() int {
		m, err := filepath.Glob(filepath.Join(cache, events.Token("proj")+".git", "objects", "pack", "*.pack"))
		if err != nil {
			t.Fatal(err)
		}
		return len(m)
	}
	var want []string
	maxPacks := 0
	for i := range 8 {
		sha := repo.commit(fmt.Sprint("c", i), nil)
		want = append(want, sha)
		evs := pollAndWait(t, s, o, c, "proj", 1)
		if evs[0].Commit != sha {
			t.Fatalf("round %d: %v", i, names(evs))
		}
		maxPacks = max(maxPacks, packs())
	}
	if maxPacks > 4 || packs() > 4 {
		t.Fatalf("cache grew to %d packs (now %d), want a repack past 3", maxPacks, packs())
	}
	// The repacked cache still knows the history: a burst after it is complete.
	for i := range 3 {
		want = append(want, repo.commit(fmt.Sprint("after ", i), nil))
	}
	if evs := pollAndWait(t, s, o, c, "proj", 3); shas(evs) != strings.Join(want[8:], " ") {
		t.Fatalf("after repack: %v", names(evs))
	}
}

// TestEmptyRepo: a repository with no commits yet is polled without error and
// without events; its first commit is published once it exists.
func TestEmptyRepo(t *testing.T) {
	s := brokertest.Run(t)
	c := collect(t, s)
	repo := newGitRepo(t)
	o := newObserver(t, s, testConfig(t.TempDir(), Repo{Name: "empty", URL: repo.dir}))
	pollAndWait(t, s, o, c, "empty", 0)
	first := repo.commit("first", nil)
	evs := pollAndWait(t, s, o, c, "empty", 1)
	if evs[0].Commit != first {
		t.Fatalf("published %s, want %s", evs[0].Commit, first)
	}
}

// TestDamagedCacheIsRebuilt: an observer killed mid-fetch can leave a damaged
// pack; the observer rebuilds its cache from the remote instead of skipping
// commits or failing for ever.
func TestDamagedCacheIsRebuilt(t *testing.T) {
	s := brokertest.Run(t)
	c := collect(t, s)
	repo := newGitRepo(t)
	repo.commit("one", nil)
	cache := t.TempDir()
	o := newObserver(t, s, testConfig(cache, Repo{Name: "proj", URL: repo.dir}))
	pollAndWait(t, s, o, c, "proj", 1)
	packs, _ := filepath.Glob(filepath.Join(cache, "*.git", "objects", "pack", "*.pack"))
	if len(packs) == 0 {
		t.Fatal("no pack in the cache")
	}
	for _, p := range packs {
		os.WriteFile(p, []byte("PACK garbage"), 0o644)
	}
	two := repo.commit("two", nil)
	three := repo.commit("three", nil)
	o = newObserver(t, s, testConfig(cache, Repo{Name: "proj", URL: repo.dir})) // restarted on the damaged cache
	evs, errs := pollUntilRebuilt(t, o, c, 2)
	if len(evs) != 2 || evs[0].Commit != two || evs[1].Commit != three {
		t.Fatalf("after the rebuild got %v, want two and three", names(evs))
	}
	t.Logf("%d failing polls before the rebuild", errs)
}

// An observer killed while writing a ref of its cache leaves an empty ref file
// (seen in the chaos test: every later fetch failed on it, "ref file is empty",
// and no commit was published again). The next poll finds the damage and
// fetches the cache anew; no commit is lost.
func TestEmptyRefFileInTheCacheIsRebuilt(t *testing.T) {
	s := brokertest.Run(t)
	c := collect(t, s)
	repo := newGitRepo(t)
	repo.commit("one", nil)
	cache := t.TempDir()
	o := newObserver(t, s, testConfig(cache, Repo{Name: "proj", URL: repo.dir}))
	pollAndWait(t, s, o, c, "proj", 1)
	refs, _ := filepath.Glob(filepath.Join(cache, "*.git", "refs", "remotes", "origin", "main"))
	if len(refs) != 1 {
		t.Fatalf("cache refs %v, want one for main", refs)
	}
	if err := os.WriteFile(refs[0], nil, 0o644); err != nil {
		t.Fatal(err)
	}
	two := repo.commit("two", nil)
	o = newObserver(t, s, testConfig(cache, Repo{Name: "proj", URL: repo.dir})) // restarted on the damaged cache
	evs, errs := pollUntilRebuilt(t, o, c, 1)
	if len(evs) != 1 || evs[0].Commit != two {
		t.Fatalf("after the rebuild got %v, want two", names(evs))
	}
	if errs > 1 {
		t.Errorf("%d failing polls before the rebuild, want at most one", errs)
	}
}

// git writes refs/heads/<branch>.lock while it updates a branch; an observer
// reading a local repository's refs at that moment must not take it for a
// branch named "<branch>.lock" (it did: the poll failed on it).
func TestGitLockFileIsNotABranch(t *testing.T) {
	s := brokertest.Run(t)
	c := collect(t, s)
	repo := newGitRepo(t)
	one := repo.commit("one", nil)
	lock := filepath.Join(repo.dir, ".git", "refs", "heads", "main.lock")
	if err := os.WriteFile(lock, []byte(one+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	o := newObserver(t, s, testConfig(t.TempDir(), Repo{Name: "proj", URL: repo.dir}))
	evs := pollAndWait(t, s, o, c, "proj", 1)
	if evs[0].Branch != "main" {
		t.Fatalf("event for branch %q, want main", evs[0].Branch)
	}
	if err := o.Poll(context.Background(), "proj"); err != nil {
		t.Fatalf("second poll: %v", err)
	}
}

// pollUntilRebuilt polls a restarted observer until a poll succeeds, then
// waits for at least want events; it returns them and how many polls failed.
func pollUntilRebuilt(t *testing.T, o *Observer, c *collector, want int) ([]*events.CommitDetected, int) {
	t.Helper()
	var errs int
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if err := o.Poll(context.Background(), "proj"); err != nil {
			errs++
			return err
		}
		return nil
	})
	var evs []*events.CommitDetected
	brokertest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		evs = append(evs, c.take()...)
		if len(evs) < want {
			return fmt.Errorf("%d events", len(evs))
		}
		return nil
	})
	return evs, errs
}
