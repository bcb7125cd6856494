package runner

import (
	"io/fs"
	"os"
	"path"
	"path/filepath"

	"github.com/go-git/go-git/v5/plumbing/format/index"
)

// clean removes everything in ws that is not in the index (untracked and ignored
// files left by an earlier job), keeping ws/.git.
func clean(ws string, entries []*index.Entry) error {
	files := make(map[string]bool, len(entries))
	dirs := map[string]bool{}
	for _, e := range entries {
		files[e.Name] = true
		for d := path.Dir(e.Name); d != "." && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	return filepath.WalkDir(ws, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(ws, p)
		if rel == "." {
			return nil
		}
		rel = filepath.ToSlash(rel)
		if rel == ".git" {
			return filepath.SkipDir
		}
		switch {
		case d.IsDir() && files[rel]: // a submodule's folder
			return filepath.SkipDir
		case d.IsDir() && dirs[rel], !d.IsDir() && files[rel]:
			return nil
		}
		if err := removeAll(p); err != nil {
			return err
		}
		if d.IsDir() {
			return filepath.SkipDir
		}
		return nil
	})
}

// removeAll is os.RemoveAll that also removes folders a step left without write
// or search permission (Go's module cache is read-only, for one).
func removeAll(p string) error {
	err := os.RemoveAll(p)
	if err == nil {
		return nil
	}
	_ = filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(q, 0o700) // before WalkDir reads it
		}
		return nil
	})
	return os.RemoveAll(p)
}
