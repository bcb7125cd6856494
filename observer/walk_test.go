package observer

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// TestNewCommitsMatchesRevList builds random histories with branches, merges and
// criss-crosses, and checks newCommits(old, new) against `git rev-list old..new`
// for many pairs: the same set, parents first. One history has every commit in
// the same second (ties everywhere), one has a fresh second per commit.
func TestNewCommitsMatchesRevList(t *testing.T) {
	for _, sameSecond := range []bool{true, false} {
		t.Run(fmt.Sprint("same_second=", sameSecond), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(7, 11))
			repo := newGitRepo(t)
			repo.date = "2026-01-01T00:00:00Z"
			var all []string
			branches := []string{"main"}
			next := 0
			commit := func(msg string) {
				if !sameSecond {
					next++
					repo.date = fmt.Sprintf("2026-01-01T00:%02d:%02dZ", next/60, next%60)
				}
				all = append(all, repo.commit(msg, map[string]string{fmt.Sprintf("f%d", len(all)): msg}))
			}
			commit("root")
			for i := range 60 {
				switch op := rng.IntN(10); {
				case op < 2: // a new branch from some commit
					b := fmt.Sprint("b", len(branches))
					repo.git("checkout", "-q", "-b", b, all[rng.IntN(len(all))])
					branches = append(branches, b)
				case op < 4 && len(branches) > 1: // merge another branch into this one
					other := branches[rng.IntN(len(branches))]
					if !sameSecond {
						next++
						repo.date = fmt.Sprintf("2026-01-01T00:%02d:%02dZ", next/60, next%60)
					}
					repo.git("merge", "-q", "--no-ff", "-m", fmt.Sprint("merge ", i), other)
					all = append(all, repo.git("rev-parse", "HEAD"))
				case op < 6: // switch branches
					repo.git("checkout", "-q", branches[rng.IntN(len(branches))])
				default:
					commit(fmt.Sprint("c", i))
				}
			}
			all = slices.Compact(all) // a merge of an ancestor is a no-op
			gr, err := git.PlainOpen(repo.dir)
			if err != nil {
				t.Fatal(err)
			}
			for range 60 {
				old, head := all[rng.IntN(len(all))], all[rng.IntN(len(all))]
				want := strings.Fields(repo.git("rev-list", old+".."+head))
				got, err := newCommits(gr.Storer, plumbing.NewHash(head), plumbing.NewHash(old), 10000)
				if err != nil {
					t.Fatal(err)
				}
				var gotShas []string
				seen := map[plumbing.Hash]bool{}
				for _, c := range got {
					for _, p := range c.ParentHashes {
						if isIn(got, p) && !seen[p] {
							t.Fatalf("%s..%s: %s listed before its parent %s", old[:7], head[:7], c.Hash.String()[:7], p.String()[:7])
						}
					}
					seen[c.Hash] = true
					gotShas = append(gotShas, c.Hash.String())
				}
				slices.Sort(want)
				slices.Sort(gotShas)
				if !slices.Equal(want, gotShas) {
					t.Fatalf("%s..%s: got %d commits %v\nrev-list gives %d %v", old[:7], head[:7], len(gotShas), gotShas, len(want), want)
				}
			}
			// Several old heads at once (a new branch against every known
			// branch head): `git rev-list head --not olds...`.
			get := func(h plumbing.Hash) (*object.Commit, error) { return object.GetCommit(gr.Storer, h) }
			for range 40 {
				head := all[rng.IntN(len(all))]
				args := []string{"rev-list", head, "--not"}
				var olds []plumbing.Hash
				for range 1 + rng.IntN(4) {
					o := all[rng.IntN(len(all))]
					args = append(args, o)
					olds = append(olds, plumbing.NewHash(o))
				}
				want := strings.Fields(repo.git(args...))
				slices.Sort(want)
				got, err := newCommitsNot(get, plumbing.NewHash(head), olds, 10000)
				if err != nil {
					t.Fatal(err)
				}
				// And the shared walk for new branches, with a painter that
				// already served another head.
				p := newOldPainter(get)
				for _, o := range olds {
					if err := p.add(o); err != nil {
						t.Fatal(err)
					}
				}
				if _, err := newBranchCommits(p, plumbing.NewHash(all[rng.IntN(len(all))]), 10000); err != nil {
					t.Fatal(err)
				}
				got2, err := newBranchCommits(p, plumbing.NewHash(head), 10000)
				if err != nil {
					t.Fatal(err)
				}
				for name, got := range map[string][]*object.Commit{"newCommitsNot": got, "newBranchCommits": got2} {
					var gotShas []string
					seen := map[plumbing.Hash]bool{}
					for _, c := range got {
						for _, ph := range c.ParentHashes {
							if isIn(got, ph) && !seen[ph] {
								t.Fatalf("%s %v: %s listed before its parent", name, args, c.Hash)
							}
						}
						seen[c.Hash] = true
						gotShas = append(gotShas, c.Hash.String())
					}
					slices.Sort(gotShas)
					if !slices.Equal(want, gotShas) {
						t.Fatalf("%s %v: got %d commits, rev-list gives %d", name, args, len(gotShas), len(want))
					}
				}
			}
		})
	}
}

func isIn(cs []*object.Commit, h plumbing.Hash) bool {
	for _, c := range cs {
		if c.Hash == h {
			return true
		}
	}
	return false
}

func TestNewCommitsLimitKeepsTheNewest(t *testing.T) {
	repo := newGitRepo(t)
	old := repo.commit("old", nil)
	var all []string
	for i := range 10 {
		all = append(all, repo.commit(fmt.Sprint("c", i), nil))
	}
	gr, err := git.PlainOpen(repo.dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := newCommits(gr.Storer, plumbing.NewHash(all[9]), plumbing.NewHash(old), 4)
	if !errors.Is(err, errTooMany) {
		t.Fatalf("err %v, want errTooMany", err)
	}
	var shas []string
	for _, c := range got {
		shas = append(shas, c.Hash.String())
	}
	if strings.Join(shas, " ") != strings.Join(all[6:], " ") {
		t.Fatalf("got %v, want the newest 4 oldest first %v", shas, all[6:])
	}
}
