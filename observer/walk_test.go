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
