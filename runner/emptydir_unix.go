//go:build unix

package runner

import (
	"os"
	"path/filepath"
	"syscall"
)

// emptyOwnDir empties dir in place when it is a plain directory of the
// runner's own user with mode 0700 (the job's HOME and TMPDIR when steps run
// on the host, as the runner), and reports whether it did. Anything else (a
// symlink, another owner, other permissions) is left to the caller, which
// removes the directory and makes it anew. Emptying costs a read of the directory where
// removing and making it again cost two writes to the file system's journal
// per job.
func emptyOwnDir(dir string) bool {
	fi, err := os.Lstat(dir)
	if err != nil || fi.Mode() != os.ModeDir|0o700 {
		return false
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != os.Geteuid() {
		return false
	}
	// O_NOFOLLOW: a directory swapped for a symlink since the Lstat is not
	// followed.
	fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	f := os.NewFile(uintptr(fd), dir)
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return false
	}
	for _, n := range names {
		if removeAll(filepath.Join(dir, n)) != nil {
			return false
		}
	}
	return true
}
