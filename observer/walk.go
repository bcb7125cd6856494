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
	return newCommitsNot(func(h plumbing.Hash) (*object.Commit, error) { return object.GetCommit(s, h) }, head, []plumbing.Hash{old}, limit)
}

// newCommitsNot is newCommits against several old heads: the commits reachable
// from head and from none of olds (`git rev-list head --not olds...`), read
// through get (which may cache: a poll with many new branches reads the same
// heads again and again).
func newCommitsNot(get func(plumbing.Hash) (*object.Commit, error), head plumbing.Hash, olds []plumbing.Hash, limit int) ([]*object.Commit, error) {
	const slop = 8
	flags := map[plumbing.Hash]int{}
	commits := map[plumbing.Hash]*object.Commit{}
	popped := map[plumbing.Hash]bool{}
	q := &commitQueue{}
	onlyNew := 0 // queued commits reachable from head only
	mark := func(h plumbing.Hash, f int) error {
		prev := flags[h]
		if prev&f == f {
			return nil
		}
		flags[h] |= f
		c, ok := commits[h]
		if !ok {
			var err error
			if c, err = get(h); err != nil {
				if prev == 0 {
					delete(flags, h)
				} else {
					flags[h] = prev
				}
				return err
			}
			commits[h] = c
		} else if !popped[h] {
			if prev == fromNew {
				onlyNew-- // still queued, no longer new only; it passes its new flag on when popped
			}
			return nil
		}
		popped[h] = false
		heap.Push(q, c)
		if flags[h] == fromNew {
			onlyNew++
		}
		return nil
	}
	if err := mark(head, fromNew); err != nil {
		return nil, err
	}
	for _, old := range olds {
		if old.IsZero() {
			continue
		}
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
		if onlyNew > 0 || (len(found) > 0 && !top.Committer.When.Before(oldest)) {
			left = slop
		} else if left--; left < 0 {
			break
		}
		c := heap.Pop(q).(*object.Commit)
		popped[c.Hash] = true
		f := flags[c.Hash]
		if f == fromNew {
			onlyNew--
		}
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

// oldPainter finds, lazily and once per poll, the commits reachable from the
// recorded branch heads, for listing the commits of new branches. One walk
// serves every new branch of a poll: it goes back in committer time only as
// far as the new branches need, so 10,000 new branches against 10,000 known
// heads cost one walk of the shared history, not 10,000.
type oldPainter struct {
	get   func(plumbing.Hash) (*object.Commit, error)
	q     commitQueue
	old   map[plumbing.Hash]bool // reachable from a recorded head (painted)
	slack time.Duration          // how far a parent's time may be after its child's
}

func newOldPainter(get func(plumbing.Hash) (*object.Commit, error)) *oldPainter {
	return &oldPainter{get: get, old: map[plumbing.Hash]bool{}, slack: 24 * time.Hour}
}

// add paints h and, as the walk goes on, everything it reaches.
func (p *oldPainter) add(h plumbing.Hash) error {
	if p.old[h] {
		return nil
	}
	c, err := p.get(h)
	if errors.Is(err, plumbing.ErrObjectNotFound) {
		return nil // a missing commit ends a shallow history
	} else if err != nil {
		return err
	}
	p.old[h] = true
	heap.Push(&p.q, c)
	return nil
}

// advance paints every commit reachable from the added heads whose committer
// time is after until (with committer times that never go back from parent
// to child; a parent up to slack newer than its child is also found).
func (p *oldPainter) advance(until time.Time) error {
	until = until.Add(-p.slack)
	for p.q.Len() > 0 && !p.q[0].Committer.When.Before(until) {
		c := heap.Pop(&p.q).(*object.Commit)
		for _, ph := range c.ParentHashes {
			if err := p.add(ph); err != nil {
				return err
			}
		}
	}
	return nil
}

// newBranchCommits returns the commits reachable from head and from no head
// the painter holds, parents first; with more than limit, the newest limit and
// errTooMany. Where committer times go back more than the painter's slack, a
// commit reachable from an old head may be listed (published once more on
// this branch); a commit that is new is never left out.
func newBranchCommits(p *oldPainter, head plumbing.Hash, limit int) ([]*object.Commit, error) {
	commits := map[plumbing.Hash]*object.Commit{}
	keep := map[plumbing.Hash]bool{}
	q := &commitQueue{}
	push := func(h plumbing.Hash) error {
		if _, ok := commits[h]; ok || p.old[h] {
			return nil
		}
		c, err := p.get(h)
		if errors.Is(err, plumbing.ErrObjectNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		commits[h] = c
		heap.Push(q, c)
		return nil
	}
	if err := push(head); err != nil {
		return nil, err
	}
	tooMany := false
	for q.Len() > 0 {
		c := heap.Pop(q).(*object.Commit)
		if err := p.advance(c.Committer.When); err != nil {
			return nil, err
		}
		if p.old[c.Hash] {
			continue
		}
		if len(keep) == limit {
			tooMany = true
			break
		}
		keep[c.Hash] = true
		for _, ph := range c.ParentHashes {
			if err := push(ph); err != nil {
				return nil, err
			}
		}
	}
	out := topoOrder(head, commits, keep)
	if tooMany {
		return out, errTooMany
	}
	return out, nil
}
