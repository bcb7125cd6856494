package runner

import (
	"fmt"
	"os"
	"path/filepath"
)

// A job can write its workspace's .git: a config with core.fsmonitor,
// core.sshCommand or an alias, hooks, info/attributes with a filter driver.
// All of these would run in the next job of the slot, of another branch
// perhaps (say main, which gets secrets), and in the runner's own git
// commands. So before each checkout the parts of .git that run or configure
// anything are put back as jetci makes them; refs, index and objects are
// jetci's to rewrite anyway (a job cannot forge an object's hash).

// slotGitConfig is the whole .git/config of a workspace.
const slotGitConfig = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n"

// resetGitDir puts ws/.git's config, hooks and info back as jetci makes them.
// A .git that is not a plain directory (a symlink, a gitdir: file) is removed:
// the checkout then makes it anew.
func resetGitDir(ws string) error {
	dotGit := filepath.Join(ws, ".git")
	fi, err := os.Lstat(dotGit)
	switch {
	case os.IsNotExist(err):
		return nil
	case err != nil:
		return err
	case !fi.IsDir():
		return removeAll(ws)
	}
	// Each is removed first, never written through: a job may have made it
	// a symlink to a file of the runner's. Only what is there is removed
	// (one read of .git, not a removal tried for each name), and a config
	// that is a plain file holding jetci's own is left as it is: reading it
	// writes nothing, where removing and writing it again cost two writes
	// to the file system's journal per job.
	d, err := os.Open(dotGit)
	if err != nil {
		return fmt.Errorf("reset .git: %w", err)
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return fmt.Errorf("reset .git: %w", err)
	}
	present := make(map[string]bool, len(names))
	for _, n := range names {
		present[n] = true
	}
	for _, name := range []string{"hooks", "info", "commondir", "gitdir", "modules", "worktrees"} {
		if !present[name] {
			continue
		}
		if err := removeAll(filepath.Join(dotGit, name)); err != nil {
			return fmt.Errorf("reset .git/%s: %w", name, err)
		}
	}
	// objects/info/alternates is rewritten by linkObjects unless it holds
	// the cache's path already: anything but a plain file goes first.
	alt := filepath.Join(dotGit, "objects", "info", "alternates")
	if fi, err := os.Lstat(alt); err == nil && !fi.Mode().IsRegular() {
		if err := removeAll(alt); err != nil {
			return fmt.Errorf("reset .git/objects/info/alternates: %w", err)
		}
	}
	config := filepath.Join(dotGit, "config")
	if present["config"] && isPlainFileHolding(config, slotGitConfig) {
		return nil
	}
	if err := removeAll(config); err != nil {
		return fmt.Errorf("reset .git/config: %w", err)
	}
	f, err := os.OpenFile(config, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("reset .git/config: %w", err)
	}
	_, err = f.WriteString(slotGitConfig)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// isPlainFileHolding reports whether path is a regular file (not a symlink)
// whose content is want.
func isPlainFileHolding(path, want string) bool {
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != int64(len(want)) {
		return false
	}
	b, err := os.ReadFile(path)
	return err == nil && string(b) == want
}
