package runner

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// TestSameCommitCheckoutRestoresEverything: a slot that stays on its commit
// skips git only when the last job changed no tracked file; every kind of
// change a job can make is still undone before the next job, including a
// rewrite of the same size in the same clock tick and one that puts the old
// mtime back.
func TestSameCommitCheckoutRestoresEverything(t *testing.T) {
	repo := newGitRepo(t)
	c1 := repo.Commit("one", map[string]string{"a.txt": "a\n", "dir/b.txt": "bee\n", "run.sh": "#!/bin/sh\n"})
	repo.Git("update-index", "--chmod=+x", "run.sh")
	repo.Git("commit", "-q", "-m", "exec")
	c2 := strings.TrimSpace(repo.Git("rev-parse", "HEAD"))
	work := t.TempDir()
	c := &caches{dir: filepath.Join(work, "cache"), per: map[string]*sync.RWMutex{}}
	ws := filepath.Join(work, "slot")
	prep := func() {
		t.Helper()
		if err := c.prepare(context.Background(), "proj", repo.Dir, c2, ws, zerolog.Nop()); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]string{"a.txt": "a\n", "dir/b.txt": "bee\n", "run.sh": "#!/bin/sh\n"}
	check := func(what string) {
		t.Helper()
		for name, content := range want {
			b, err := os.ReadFile(filepath.Join(ws, name))
			if err != nil || string(b) != content {
				t.Fatalf("%s: %s is %q (%v), want %q", what, name, b, err, content)
			}
		}
		if fi, err := os.Stat(filepath.Join(ws, "run.sh")); err != nil || fi.Mode()&0o100 == 0 {
			t.Fatalf("%s: run.sh lost its exec bit: %v", what, err)
		}
		if fi, err := os.Lstat(filepath.Join(ws, "a.txt")); err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o100 != 0 {
			t.Fatalf("%s: a.txt is not a plain file: %v", what, err)
		}
		entries, _ := os.ReadDir(ws)
		if len(entries) != 4 { // .git, a.txt, dir, run.sh
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Fatalf("%s: workspace holds %v", what, names)
		}
	}
	prep()
	check("first checkout")
	// An untouched checkout is recognised (racily clean: by content).
	if _, ok := unchanged(ws, c2); !ok {
		t.Fatal("an untouched checkout is not recognised")
	}
	old := time.Now().Add(-time.Hour)
	w := func(name, content string) {
		if err := os.WriteFile(filepath.Join(ws, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		job  func()
	}{
		{"same-size rewrite at once", func() { w("a.txt", "b\n") }},
		{"longer rewrite", func() { w("dir/b.txt", "longer\n") }},
		{"rewrite with the old mtime put back", func() {
			p := filepath.Join(ws, "a.txt")
			fi, _ := os.Stat(p)
			w("a.txt", "z\n")
			_ = os.Chtimes(p, fi.ModTime(), fi.ModTime())
		}},
		{"deleted file", func() { _ = os.Remove(filepath.Join(ws, "dir/b.txt")) }},
		{"exec bit dropped", func() { _ = os.Chmod(filepath.Join(ws, "run.sh"), 0o644) }},
		{"exec bit added", func() { _ = os.Chmod(filepath.Join(ws, "a.txt"), 0o755) }},
		{"file replaced by a symlink", func() {
			_ = os.Remove(filepath.Join(ws, "a.txt"))
			_ = os.Symlink("dir/b.txt", filepath.Join(ws, "a.txt"))
		}},
		{"file replaced by a folder", func() {
			_ = os.Remove(filepath.Join(ws, "a.txt"))
			_ = os.MkdirAll(filepath.Join(ws, "a.txt", "x"), 0o755)
		}},
		{"untracked files and folders", func() {
			w("new.txt", "x")
			_ = os.MkdirAll(filepath.Join(ws, "build", "out"), 0o755)
			w("build/out/o", "x")
		}},
		{"HEAD moved by the job", func() { _ = cliGit(ws, "checkout", "-q", "--detach", c1) }},
		{"a change staged with git add", func() { w("a.txt", "staged\n"); _ = cliGit(ws, "add", "a.txt") }},
		{"a file taken out of the index", func() { _ = cliGit(ws, "rm", "-q", "--cached", "dir/b.txt") }},
		{"old timestamps everywhere", func() {
			w("a.txt", "q\n")
			for name := range want {
				_ = os.Chtimes(filepath.Join(ws, name), old, old)
			}
		}},
	} {
		tc.job()
		prep()
		check(tc.name)
	}
	// A job that moves HEAD without touching the index (git reset --soft to
	// the parent), then a job for that parent: the files must be the
	// parent's (run.sh not executable), not what the index still holds.
	if err := cliGit(ws, "reset", "-q", "--soft", c1); err != nil {
		t.Fatal(err)
	}
	if err := c.prepare(context.Background(), "proj", repo.Dir, c1, ws, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(ws, "run.sh")); err != nil || fi.Mode()&0o100 != 0 {
		t.Fatalf("after reset --soft and a job for the parent: run.sh is %v (%v), want the parent's 0644", fi.Mode(), err)
	}
}
