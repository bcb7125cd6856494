package observer

import (
	"container/heap"
	"errors"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/storer"
)

// errTooMany says a walk found more new commits than it may publish.
var errTooMany = errors.New("too many new commits")

const (
	fromNew = 1 << iota // reachable from the new head
	fromOld             // reachable from the old head
)

// newCommits returns the commits reachable from head and not from old — what
// `git rev-list old..head` gives — parents before children. old may be zero.
//
// Both sides are walked together, newest committer time first, painting every
// commit with the side(s) it is reachable from. A Log from head that stops at old
// would miss commits that came in through merges. The walk goes on while a commit
// reachable only from head is queued, or while a queued commit is at least as new
// as the oldest one found so far (it may still turn out to reach it: commits in a
// burst often share one timestamp), and then a few more steps against clock skew
// (git's "slop"). With committer times that never go back from parent to child
// the result is exact; with skew it is as good as git's own rev-list walk.
// When more than limit new commits are found, the newest limit are returned
// with errTooMany.
func newCommits(s storer.EncodedObjectStorer, head, old plumbing.Hash, limit int) ([]*object.Commit, error) {
	const slop = 8
	flags := map[plumbing.Hash]int{}
	commits := map[plumbing.Hash]*object.Commit{}
	popped := map[plumbing.Hash]bool{}
	q := &commitQueue{}
	mark := func(h plumbing.Hash, f int) error {
		if flags[h]&f == f {
			return nil
		}
		flags[h] |= f
		c, ok := commits[h]
		if !ok {
			var err error
			if c, err = object.GetCommit(s, h); err != nil {
				delete(flags, h)
				return err
			}
			commits[h] = c
		} else if !popped[h] {
			return nil // still queued; it will pass its new flag on when popped
		}
		popped[h] = false
		heap.Push(q, c)
		return nil
	}
	if err := mark(head, fromNew); err != nil {
		return nil, err
	}
	if !old.IsZero() {
		if err := mark(old, fromOld); err != nil && !errors.Is(err, plumbing.ErrObjectNotFound) {
			return nil, err
		}
	}
	var (
		found   []plumbing.Hash
		oldest  time.Time // committer time of the oldest commit found
		tooMany bool
	)
	for left := slop; q.Len() > 0; {
		top := (*q)[0]
		if q.anyOnly(flags, fromNew) || (len(found) > 0 && !top.Committer.When.Before(oldest)) {
			left = slop
		} else if left--; left < 0 {
			break
		}
		c := heap.Pop(q).(*object.Commit)
		popped[c.Hash] = true
		f := flags[c.Hash]
		if f == fromNew {
			if len(found) == limit {
				tooMany = true
				break
			}
			found = append(found, c.Hash)
			if len(found) == 1 || c.Committer.When.Before(oldest) {
				oldest = c.Committer.When
			}
		}
		for _, p := range c.ParentHashes {
			if err := mark(p, f); err != nil && !errors.Is(err, plumbing.ErrObjectNotFound) {
				return nil, err // a missing parent ends a shallow history; anything else is real
			}
		}
	}
	keep := map[plumbing.Hash]bool{}
	for _, h := range found {
		if flags[h] == fromNew { // painted old after it was taken: not new after all
			keep[h] = true
		}
	}
	out := topoOrder(head, commits, keep)
	if tooMany {
		return out, errTooMany
	}
	return out, nil
}

// topoOrder lists the kept commits parents first: a depth-first post-order from
// head, first parent first.
func topoOrder(head plumbing.Hash, commits map[plumbing.Hash]*object.Commit, keep map[plumbing.Hash]bool) []*object.Commit {
	type frame struct {
		h    plumbing.Hash
		next int
	}
	var out []*object.Commit
	done := map[plumbing.Hash]bool{}
	stack := []frame{{h: head}}
	done[head] = true
	for len(stack) > 0 {
		top := &stack[len(stack)-1]
		c := commits[top.h]
		if c != nil && top.next < len(c.ParentHashes) {
			p := c.ParentHashes[top.next]
			top.next++
			if keep[p] && !done[p] {
				done[p] = true
				stack = append(stack, frame{h: p})
			}
			continue
		}
		stack = stack[:len(stack)-1]
		if keep[top.h] {
			out = append(out, c)
		}
	}
	return out
}

// commitQueue is a max-heap of commits by committer time.
type commitQueue []*object.Commit

func (q commitQueue) Len() int { return len(q) }
func (q commitQueue) Less(i, j int) bool {
	return q[i].Committer.When.After(q[j].Committer.When)
}
func (q commitQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *commitQueue) Push(x any)   { *q = append(*q, x.(*object.Commit)) }
func (q *commitQueue) Pop() any {
	old := *q
	c := old[len(old)-1]
	*q = old[:len(old)-1]
	return c
}

// anyOnly reports whether some queued commit has exactly flag f.
func (q commitQueue) anyOnly(flags map[plumbing.Hash]int, f int) bool {
	for _, c := range q {
		if flags[c.Hash] == f {
			return true
		}
	}
	return false
}
