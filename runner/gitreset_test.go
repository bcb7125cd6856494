package runner

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// TestResetGitDir: whatever a job planted in the workspace's .git (a config
// of its own, a config or alternates that are symlinks to the runner's
// files, hooks) is put back as jetci makes it, and the files it points to
// are left as they were; jetci's own config is kept.
func TestResetGitDir(t *testing.T) {
	ws := t.TempDir()
	dotGit := filepath.Join(ws, ".git")
	outside := filepath.Join(t.TempDir(), "runner-file")
	write(t, outside, "the runner's own\n")
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T)
	}{
		{"config of the job's", func(t *testing.T) { write(t, filepath.Join(dotGit, "config"), "[core]\n\tfsmonitor = touch PLANTED\n") }},
		{"config a symlink", func(t *testing.T) {
			_ = os.Remove(filepath.Join(dotGit, "config"))
			symlink(t, outside, filepath.Join(dotGit, "config"))
		}},
		{"config a symlink to jetci's config", func(t *testing.T) {
			own := filepath.Join(t.TempDir(), "config")
			write(t, own, slotGitConfig)
			_ = os.Remove(filepath.Join(dotGit, "config"))
			symlink(t, own, filepath.Join(dotGit, "config"))
		}},
		{"config of jetci's size", func(t *testing.T) {
			b := []byte(slotGitConfig)
			b[len(b)-2] = 'x'
			write(t, filepath.Join(dotGit, "config"), string(b))
		}},
		{"config missing", func(t *testing.T) { _ = os.Remove(filepath.Join(dotGit, "config")) }},
		{"hooks", func(t *testing.T) {
			write(t, filepath.Join(dotGit, "hooks", "post-checkout"), "#!/bin/sh\ntouch PLANTED\n")
		}},
		{"info", func(t *testing.T) { write(t, filepath.Join(dotGit, "info", "attributes"), "* filter=x\n") }},
		{"alternates a symlink", func(t *testing.T) {
			_ = os.Remove(filepath.Join(dotGit, "objects", "info", "alternates"))
			symlink(t, outside, filepath.Join(dotGit, "objects", "info", "alternates"))
		}},
		{"alternates a hard link", func(t *testing.T) {
			_ = os.Remove(filepath.Join(dotGit, "objects", "info", "alternates"))
			if err := os.Link(outside, filepath.Join(dotGit, "objects", "info", "alternates")); err != nil {
				t.Skip(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cache := t.TempDir()
			if err := os.MkdirAll(dotGit, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := resetGitDir(ws); err != nil {
				t.Fatal(err)
			}
			if err := linkObjects(dotGit, cache); err != nil {
				t.Fatal(err)
			}
			tc.plant(t)
			if err := resetGitDir(ws); err != nil {
				t.Fatal(err)
			}
			if err := linkObjects(dotGit, cache); err != nil {
				t.Fatal(err)
			}
			for _, name := range []string{"hooks", "info"} {
				if _, err := os.Lstat(filepath.Join(dotGit, name)); !os.IsNotExist(err) {
					t.Errorf(".git/%s is still there (%v)", name, err)
				}
			}
			if fi, err := os.Lstat(filepath.Join(dotGit, "config")); err != nil || !fi.Mode().IsRegular() ||
				!isPlainFileHolding(filepath.Join(dotGit, "config"), slotGitConfig) {
				t.Errorf(".git/config is not jetci's")
			}
			abs, _ := filepath.Abs(filepath.Join(cache, "objects"))
			if !isPlainFileHolding(filepath.Join(dotGit, "objects", "info", "alternates"), abs+"\n") {
				t.Errorf(".git/objects/info/alternates is not jetci's")
			}
			if b, _ := os.ReadFile(outside); string(b) != "the runner's own\n" {
				t.Errorf("the runner's file was written through: %q", b)
			}
		})
	}
}

// TestEmptyOwnDir: a job's directory is emptied in place only when it is a
// plain directory of the runner's with mode 0700; a symlink is not followed
// (what it points to stays), and any other directory is left to be made anew.
func TestEmptyOwnDir(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("emptied in place on unix only")
	}
	root := t.TempDir()
	dir := filepath.Join(root, "tmp")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "a", "b", "c"), "x")
	write(t, filepath.Join(dir, ".hidden"), "x")
	ro := filepath.Join(dir, "ro")
	write(t, filepath.Join(ro, "f"), "x")
	if err := os.Chmod(ro, 0o500); err != nil { // a read-only folder, as Go's module cache
		t.Fatal(err)
	}
	if !emptyOwnDir(dir) {
		t.Fatal("a directory of the runner's was not emptied")
	}
	if names, err := os.ReadDir(dir); err != nil || len(names) != 0 {
		t.Fatalf("left %v (%v)", names, err)
	}
	if fi, err := os.Lstat(dir); err != nil || fi.Mode() != os.ModeDir|0o700 {
		t.Fatalf("the directory itself: %v %v", fi, err)
	}

	target := filepath.Join(root, "target")
	if err := os.Mkdir(target, 0o700); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(target, "keep"), "x")
	link := filepath.Join(root, "link")
	symlink(t, target, link)
	if emptyOwnDir(link) {
		t.Error("a symlink was emptied")
	}
	if _, err := os.Stat(filepath.Join(target, "keep")); err != nil {
		t.Errorf("what the symlink points to was touched: %v", err)
	}

	open := filepath.Join(root, "open")
	if err := os.Mkdir(open, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if emptyOwnDir(open) {
		t.Error("a directory with mode 0777 was emptied in place")
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}
