package observer

import (
	"context"
	"strings"
	"testing"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

func TestPullBranch(t *testing.T) {
	for ref, want := range map[string]string{
		"refs/pull/12/head":         "pull/12",
		"refs/pull/12/merge":        "",
		"refs/pull/012/head":        "",
		"refs/pull//head":           "",
		"refs/pull/1x/head":         "",
		"refs/pull/12/head/x":       "",
		"refs/heads/pull/12":        "",
		"refs/pull/1234567890/head": "",
	} {
		if got := PullBranch(PullsGitHub, ref); got != want {
			t.Errorf("%s: %q, want %q", ref, got, want)
		}
	}
	if got := PullBranch(PullsGitLab, "refs/merge-requests/7/head"); got != "merge-requests/7" {
		t.Errorf("gitlab: %q", got)
	}
	if got := PullBranch(PullsGitLab, "refs/pull/7/head"); got != "" {
		t.Errorf("gitlab layout took a GitHub ref: %q", got)
	}
	// Their subject tokens are valid.
	for _, b := range []string{"pull/12", "merge-requests/7"} {
		tok := events.Token(b)
		if back, err := events.ParseToken(tok); err != nil || back != b || strings.ContainsAny(tok, "./*> ") {
			t.Errorf("%s: token %q: %v", b, tok, err)
		}
	}
	cfg := DefaultConfig()
	cfg.Repos = []Repo{{Name: "proj", URL: "/x"}}
	if err := SetPulls(&cfg, "proj=gitlab"); err != nil || cfg.Repos[0].Pulls != PullsGitLab {
		t.Errorf("SetPulls: %v %+v", err, cfg.Repos)
	}
	if err := SetPulls(&cfg, "other"); err == nil {
		t.Error("SetPulls of an unknown repo")
	}
	if err := SetPulls(&cfg, "proj=bitbucket"); err == nil {
		t.Error("SetPulls of an unknown layout")
	}
}

// TestPullRequestRefsAreWatched: with Pulls on, refs/pull/N/head is tested as
// branch pull/N: opened, pushed to, and forgotten once its ref is gone; a
// repo without it does not see them.
func TestPullRequestRefsAreWatched(t *testing.T) {
	for _, layout := range []string{PullsGitHub, PullsGitLab} {
		t.Run(layout, func(t *testing.T) {
			s := brokertest.Run(t)
			c := collect(t, s)
			repo := newGitRepo(t)
			repo.commit("root", nil)
			ref, branch := "refs/pull/12/head", "pull/12"
			if layout == PullsGitLab {
				ref, branch = "refs/merge-requests/12/head", "merge-requests/12"
			}
			o := newObserver(t, s, testConfig(t.TempDir(), Repo{Name: "proj", URL: repo.dir, Pulls: layout}, Repo{Name: "plain", URL: repo.dir}))
			pollAndWait(t, s, o, c, "proj", 1)
			pollAndWait(t, s, o, c, "plain", 1)

			// Opened: a commit only the PR's ref reaches.
			repo.git("checkout", "-q", "-b", "feature")
			f1 := repo.commit("feature 1", nil)
			repo.git("checkout", "-q", "main")
			repo.git("update-ref", ref, f1)
			repo.git("branch", "-q", "-D", "feature")
			evs := pollAndWait(t, s, o, c, "proj", 1)
			if evs[0].Branch != branch || evs[0].Commit != f1 {
				t.Fatalf("opened: %v", names(evs))
			}
			pollAndWait(t, s, o, c, "plain", 0)

			// Pushed to twice between polls: both commits, in order.
			repo.git("checkout", "-q", f1)
			f2 := repo.commit("feature 2", nil)
			f3 := repo.commit("feature 3", nil)
			repo.git("checkout", "-q", "main")
			repo.git("update-ref", ref, f3)
			evs = pollAndWait(t, s, o, c, "proj", 2)
			if shas(evs) != f2+" "+f3 || evs[1].Branch != branch {
				t.Fatalf("pushed: %v", names(evs))
			}

			// Closed (its ref deleted): forgotten after two listings.
			repo.git("update-ref", "-d", ref)
			pollAndWait(t, s, o, c, "proj", 0)
			pollAndWait(t, s, o, c, "proj", 0)
			heads, err := o.loadHeads(context.Background(), "proj")
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := heads[branch]; ok || len(heads) != 1 {
				t.Errorf("heads after close: %v", heads)
			}
			for b := range heads {
				if strings.Contains(b, "12") {
					t.Errorf("still watched: %s", b)
				}
			}
		})
	}
}
