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
	// a symlink to a file of the runner's.
	for _, name := range []string{"hooks", "info", "config", "commondir", "gitdir", "modules", "worktrees", "objects/info/alternates"} {
		if err := removeAll(filepath.Join(dotGit, name)); err != nil {
			return fmt.Errorf("reset .git/%s: %w", name, err)
		}
	}
	f, err := os.OpenFile(filepath.Join(dotGit, "config"), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("reset .git/config: %w", err)
	}
	_, err = f.WriteString(slotGitConfig)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
