package runner

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"
)

// hideGitCLI makes the runner find no git command until the test ends, as on
// a machine without git.
func hideGitCLI(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	gitOnce, gitPath = sync.Once{}, ""
	t.Cleanup(func() { gitOnce, gitPath = sync.Once{}, "" }) // found again after the PATH is back
	if p := gitCLI(); p != "" {
		t.Fatalf("git still found at %s", p)
	}
}

// TestCheckoutWithoutGitCLI: on a machine without git, workspaces are
// checked out with go-git alone: the first checkout, and the move of an
// existing workspace to another commit (which uses the git CLI when there is
// one) with what the last job changed and left undone.
//
// The cache is filled while git is still there: go-git fetches from a local
// path by running git-upload-pack, so a repository given as a path needs git
// installed whatever the checkout uses (a URL over HTTP or SSH does not).
func TestCheckoutWithoutGitCLI(t *testing.T) {
	repo := newGitRepo(t)
	c1 := repo.Commit("one", map[string]string{"a.txt": "a\n", "dir/b.txt": "bee\n", "run.sh": "#!/bin/sh\n"})
	repo.Git("update-index", "--chmod=+x", "run.sh")
	repo.Git("commit", "-q", "-m", "exec")
	c1 = strings.TrimSpace(repo.Git("rev-parse", "HEAD"))
	repo.Git("rm", "-q", "dir/b.txt")
	c2 := repo.Commit("two", map[string]string{"a.txt": "changed\n", "c.txt": "new\n"})
	work := t.TempDir()
	c := &caches{dir: filepath.Join(work, "cache"), per: map[string]*sync.RWMutex{}}
	if err := c.prepare(context.Background(), "proj", repo.Dir, c2, filepath.Join(work, "filler"), zerolog.Nop()); err != nil {
		t.Fatal(err) // fills the cache with both commits
	}
	hideGitCLI(t)
	ws := filepath.Join(work, "slot")
	files := func() map[string]string {
		t.Helper()
		out := map[string]string{}
		err := filepath.WalkDir(ws, func(p string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(ws, p)
			if d.IsDir() {
				if rel == ".git" {
					return filepath.SkipDir
				}
				return nil
			}
			b, err := os.ReadFile(p)
			out[rel] = string(b)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	same := func(what string, got, want map[string]string) {
		t.Helper()
		var g, w []string
		for k, v := range got {
			g = append(g, k+"="+v)
		}
		for k, v := range want {
			w = append(w, k+"="+v)
		}
		sort.Strings(g)
		sort.Strings(w)
		if strings.Join(g, "|") != strings.Join(w, "|") {
			t.Fatalf("%s: workspace holds %q, want %q", what, g, w)
		}
	}

	if err := c.prepare(context.Background(), "proj", repo.Dir, c1, ws, zerolog.Nop()); err != nil {
		t.Fatalf("first checkout without git: %v", err)
	}
	same("first checkout", files(), map[string]string{"a.txt": "a\n", "dir/b.txt": "bee\n", "run.sh": "#!/bin/sh\n"})
	if fi, err := os.Stat(filepath.Join(ws, "run.sh")); err != nil || fi.Mode()&0o100 == 0 {
		t.Fatalf("run.sh lost its exec bit: %v", err)
	}
	// The job changes a tracked file and leaves files of its own.
	if err := os.WriteFile(filepath.Join(ws, "a.txt"), []byte("job was here\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(ws, "build", "out"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ws, "build", "out", "x.o"), []byte("obj"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.prepare(context.Background(), "proj", repo.Dir, c2, ws, zerolog.Nop()); err != nil {
		t.Fatalf("move to the next commit without git: %v", err)
	}
	same("moved to the next commit", files(), map[string]string{"a.txt": "changed\n", "c.txt": "new\n", "run.sh": "#!/bin/sh\n"})
	// And back, over a workspace the job left alone.
	if err := c.prepare(context.Background(), "proj", repo.Dir, c1, ws, zerolog.Nop()); err != nil {
		t.Fatalf("move back without git: %v", err)
	}
	same("moved back", files(), map[string]string{"a.txt": "a\n", "dir/b.txt": "bee\n", "run.sh": "#!/bin/sh\n"})
}
