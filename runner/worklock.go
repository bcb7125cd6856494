package runner

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// WorkLockName is the file in a runner's work directory that the runner holds
// an exclusive lock on (flock) for as long as it lives, with its pid inside.
const WorkLockName = "lock"

// ErrWorkDirInUse is returned by New when another live runner holds the work
// directory: two runners sharing one would move each other's workspaces (and
// test the wrong commit).
var ErrWorkDirInUse = errors.New("work directory in use by another runner")

// workLock is a held lock on a work directory; the kernel drops it when the
// process dies, so a runner killed with SIGKILL leaves no stale lock.
type workLock struct{ f *os.File }

// lockWorkDir takes the work directory's lock, or says who holds it.
func lockWorkDir(dir string) (*workLock, error) {
	path := filepath.Join(dir, WorkLockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("runner: lock work directory: %w", err)
	}
	if err := flockExclusive(f); err != nil {
		f.Close()
		if !errors.Is(err, errLocked) {
			return nil, fmt.Errorf("runner: lock %s: %w", path, err)
		}
		abs, _ := filepath.Abs(dir)
		holder := "another process"
		if b, rerr := os.ReadFile(path); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
				holder = "pid " + strconv.Itoa(pid)
			}
		}
		return nil, fmt.Errorf("runner: %w: %s is held by %s; give each runner its own --work", ErrWorkDirInUse, abs, holder)
	}
	// The pid is only for the message above: the lock itself is the flock.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &workLock{f: f}, nil
}

// release drops the lock; safe on nil and more than once.
func (l *workLock) release() {
	if l == nil || l.f == nil {
		return
	}
	_ = l.f.Close() // closing the descriptor releases the flock
	l.f = nil
}
