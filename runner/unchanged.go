package runner

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/format/index"
)

// racyWindow: a file whose timestamps are this close to the index's own (or
// later) may have been changed in the same clock tick as it was checked out
// (file timestamps are coarse, a few ms), so its content is compared instead.
// This is git's own "racy git" rule, with a margin for coarse clocks.
const racyWindow = time.Second

// unchanged reports whether the workspace ws is already a checkout of commit
// whose tracked files are exactly as checked out, and returns the index
// entries. Then the slot needs no git process before the next job: only the
// files a job added are removed (clean). A tracked file counts as unchanged
// when its size, mode, mtime, ctime and inode are those the index recorded;
// ctime cannot be set by a job, so a rewrite that restores mtime is still
// seen. Anything unusual (a symbolic HEAD, conflicts, sparse or submodule
// entries, a file that cannot be read) answers false, and the caller checks
// the commit out the usual way.
func unchanged(ws, commit string) ([]*index.Entry, bool) {
	dotGit := filepath.Join(ws, ".git")
	head, err := os.ReadFile(filepath.Join(dotGit, "HEAD"))
	if err != nil || string(bytes.TrimSpace(head)) != commit {
		return nil, false
	}
	ist, err := os.Stat(filepath.Join(dotGit, "index"))
	if err != nil {
		return nil, false
	}
	// The index must be the one jetci's last checkout wrote: a job that ran
	// `git add` would make its own changes look checked out.
	if stamp, err := os.ReadFile(filepath.Join(dotGit, indexStamp)); err != nil || string(stamp) != commit+" "+indexStampOf(ist) {
		return nil, false
	}
	idx, err := openStorage(dotGit).Index()
	if err != nil {
		return nil, false
	}
	racyFrom := ist.ModTime().Add(-racyWindow)
	for _, e := range idx.Entries {
		// go-git's index.Merged is 1, but a merged entry's stage in the file
		// is 0: anything else is a conflict.
		if e.Stage != 0 || e.SkipWorktree || e.IntentToAdd || !entryUnchanged(ws, e, racyFrom) {
			return nil, false
		}
	}
	return idx.Entries, true
}

func entryUnchanged(ws string, e *index.Entry, racyFrom time.Time) bool {
	p := filepath.Join(ws, filepath.FromSlash(e.Name))
	fi, err := os.Lstat(p)
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	switch e.Mode {
	case filemode.Regular, filemode.Deprecated:
		if !fi.Mode().IsRegular() || fi.Mode()&0o100 != 0 {
			return false
		}
	case filemode.Executable:
		if !fi.Mode().IsRegular() || fi.Mode()&0o100 == 0 {
			return false
		}
	case filemode.Symlink:
		if fi.Mode()&fs.ModeSymlink == 0 {
			return false
		}
	default: // submodules and anything else: let git decide
		return false
	}
	if uint32(fi.Size()) != e.Size || (e.Inode != 0 && uint32(st.Ino) != e.Inode) {
		return false
	}
	mtime, ctime := statTimes(st)
	if !sameTime(mtime, e.ModifiedAt) || !sameTime(ctime, e.CreatedAt) {
		return false
	}
	if mtime.Before(racyFrom) && ctime.Before(racyFrom) {
		return true
	}
	// Racily clean: compare the content with the blob the index names.
	var content []byte
	if e.Mode == filemode.Symlink {
		target, err := os.Readlink(p)
		if err != nil {
			return false
		}
		content = []byte(target)
	} else if content, err = os.ReadFile(p); err != nil {
		return false
	}
	return plumbing.ComputeHash(plumbing.BlobObject, content) == e.Hash
}

// indexStamp is the file in a slot's .git that records the stat data of the
// index as jetci's checkout left it.
const indexStamp = "jetci-index-stamp"

func indexStampOf(fi os.FileInfo) string {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	mtime, ctime := statTimes(st)
	return fmt.Sprintf("%d %d %d.%09d %d.%09d", st.Ino, fi.Size(), mtime.Unix(), mtime.Nanosecond(), ctime.Unix(), ctime.Nanosecond())
}

// stampIndex records the commit checked out and the index's stat data after
// a checkout; without a stamp the next job takes the usual way. The commit is
// in the stamp because a job can move HEAD without touching the index (git
// reset --soft): HEAD alone does not say what the files are.
func stampIndex(ws, commit string) {
	dotGit := filepath.Join(ws, ".git")
	fi, err := os.Stat(filepath.Join(dotGit, "index"))
	if err != nil {
		_ = os.Remove(filepath.Join(dotGit, indexStamp))
		return
	}
	_ = os.WriteFile(filepath.Join(dotGit, indexStamp), []byte(commit+" "+indexStampOf(fi)), 0o644)
}

// sameTime compares a file's timestamp with the index's, at the index's
// precision: an index written without nanoseconds holds whole seconds.
func sameTime(file, recorded time.Time) bool {
	if recorded.Nanosecond() == 0 {
		return file.Unix() == recorded.Unix()
	}
	return file.Equal(recorded)
}
