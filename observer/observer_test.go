package observer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

func TestBurstEveryCommitOldestFirst(t *testing.T) {
	s := brokertest.Run(t)
	c := collect(t, s)
	repo := newGitRepo(t)
	first := repo.commit("first", map[string]string{
		"tests/test_x.py": "x", "tests/data/d.txt": "d", "Makefile": "test:\n\ttrue\n", ".jetci.yml": "jobs: {}\n",
	})
	o := newObserver(t, s, testConfig(t.TempDir(), Repo{Name: "proj", URL: repo.dir}))
	evs := pollAndWait(t, s, o, c, "proj", 1)
	e := evs[0]
	if e.Commit != first || e.Branch != "main" || e.Repo != "proj" || e.RepoURL != repo.dir || e.Class != events.ClassFirst || e.TriggerID != "" {
		t.Fatalf("first event %+v", e)
	}
	if e.Author.Name != "Dev Eloper" || e.Author.Email != "dev@example.com" || e.Subject != "first" || len(e.Parents) != 0 || e.Time.IsZero() || e.DetectedAt.IsZero() {
		t.Fatalf("commit fields %+v", e)
	}
	if e.PipelinePath != ".jetci.yml" || e.Pipeline != "jobs: {}\n" || e.PipelineErr != "" {
		t.Fatalf("pipeline %q %q %q", e.PipelinePath, e.Pipeline, e.PipelineErr)
	}
	if strings.Join(e.Probe.Root, ",") != ".jetci.yml,Makefile,tests/" || strings.Join(e.Probe.Tests, ",") != "data/,test_x.py" || e.Probe.Makefile != "test:\n\ttrue\n" {
		t.Fatalf("probe %+v", e.Probe)
	}
	if strings.Join(e.Changed, ",") != ".jetci.yml,Makefile,tests/data/d.txt,tests/test_x.py" || e.ChangedCut {
		t.Fatalf("root commit changed paths %v, want all 4 files", e.Changed)
	}

	var want []string
	for i := range 20 {
		want = append(want, repo.commit(fmt.Sprintf("burst %d", i), nil))
	}
	evs = pollAndWait(t, s, o, c, "proj", 20)
	if shas(evs) != strings.Join(want, " ") {
		t.Fatalf("burst order:\n got %s\nwant %s", shas(evs), strings.Join(want, " "))
	}
	for i, e := range evs {
		parent := first
		if i > 0 {
			parent = want[i-1]
		}
		if e.Subject != fmt.Sprintf("burst %d", i) || strings.Join(e.Parents, ",") != parent || strings.Join(e.Changed, ",") != "n.txt" ||
			e.Author.Email != "dev@example.com" || e.PipelinePath != ".jetci.yml" || e.Pipeline != "jobs: {}\n" ||
			!slices.Contains(e.Probe.Root, "n.txt") || e.Class != events.ClassFirst {
			t.Fatalf("burst event %d: %+v", i, e)
		}
	}
	// Nothing new: nothing published.
	pollAndWait(t, s, o, c, "proj", 0)
	checkHead(t, s, "proj", "main", want[19])
}

func TestEventLimitsAndPipelineVariants(t *testing.T) {
	s := brokertest.Run(t)
	c := collect(t, s)
	repo := newGitRepo(t)
	cfg := testConfig(t.TempDir(), Repo{Name: "proj", URL: repo.dir})
	cfg.PipelineMax, cfg.ChangedMax = 10, 3
	o := newObserver(t, s, cfg)

	repo.commit("yaml", map[string]string{".jetci.yaml": "jobs: {}\n"})
	e := pollAndWait(t, s, o, c, "proj", 1)[0]
	if e.PipelinePath != ".jetci.yaml" || e.Pipeline != "jobs: {}\n" {
		t.Fatalf(".jetci.yaml: %q %q %q", e.PipelinePath, e.Pipeline, e.PipelineErr)
	}
	repo.commit("big", map[string]string{".jetci.yml": strings.Repeat("#", 11), "a": "", "b": "", "c": ""})
	e = pollAndWait(t, s, o, c, "proj", 1)[0]
	if e.PipelinePath != ".jetci.yml" || e.Pipeline != "" || !strings.Contains(e.PipelineErr, "11 bytes") || !strings.Contains(e.PipelineErr, "10") {
		t.Fatalf("too large: %q %q %q", e.PipelinePath, e.Pipeline, e.PipelineErr)
	}
	if len(e.Changed) != 3 || !e.ChangedCut {
		t.Fatalf("changed %v cut %v, want 3 and cut", e.Changed, e.ChangedCut)
	}
	// A folder named like the pipeline file is not one.
	repo.git("rm", "-q", ".jetci.yml", ".jetci.yaml")
	repo.commit("folder", map[string]string{".jetci.yml/x": "x"})
	e = pollAndWait(t, s, o, c, "proj", 1)[0]
	if e.PipelinePath != "" || e.PipelineErr != "" || strings.Join(e.Changed, ",") != ".jetci.yaml,.jetci.yml,.jetci.yml/x" {
		t.Fatalf("folder: %q %q changed %v", e.PipelinePath, e.PipelineErr, e.Changed)
	}
}

func TestRestartNeitherMissesNorRepeats(t *testing.T) {
	s := brokertest.Run(t)
	c := collect(t, s)
	repo := newGitRepo(t)
	one := repo.commit("one", nil)
	cache := t.TempDir()
	cfg := testConfig(cache, Repo{Name: "proj", URL: repo.dir})

	// Observer A runs until it published the first commit, then stops.
	stopA := run(t, newObserver(t, s, cfg))
	brokertest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error { return headIs(s, "proj", "main", one) })
	stopA()
	if got := c.take(); len(got) != 1 || got[0].Commit != one {
		t.Fatalf("observer A published %v", names(got))
	}

	want := []string{repo.commit("two", nil), repo.commit("three", nil), repo.commit("four", nil)}
	// A new observer on the same server: the heads come from KV. Then one more,
	// with a fresh cache: nothing is repeated.
	for _, dir := range []string{cache, t.TempDir()} {
		b := newObserver(t, s, testConfig(dir, Repo{Name: "proj", URL: repo.dir}))
		evs := pollAndWait(t, s, b, c, "proj", len(want))
		if shas(evs) != strings.Join(want, " ") {
			t.Fatalf("after restart got %v, want %s", names(evs), strings.Join(want, " "))
		}
		want = nil
	}

	// A recorded head that is in no cache (history rewritten elsewhere, say): the
	// observer first fetches its cache anew (a damaged cache may hide it); when
	// it is still missing, the branch counts as new and only its head is published.
	kv, err := s.JS.KeyValue(context.Background(), events.BucketHeads)
	if err != nil {
		t.Fatal(err)
	}
	val, _ := json.Marshal(headEntry{Repo: "proj", Branch: "main", Commit: strings.Repeat("ab", 20), UpdatedAt: time.Now()})
	if _, err := kv.Put(context.Background(), events.HeadKey("proj", "main"), val); err != nil {
		t.Fatal(err)
	}
	head := repo.commit("five", nil)
	b := newObserver(t, s, testConfig(cache, Repo{Name: "proj", URL: repo.dir}))
	if err := b.Poll(context.Background(), "proj"); !errors.Is(err, errStaleCache) {
		t.Fatalf("first poll: %v, want the cache refetched first", err)
	}
	if evs := pollAndWait(t, s, b, c, "proj", 1); evs[0].Commit != head {
		t.Fatalf("unknown old head: published %v, want the head only", names(evs))
	}
	checkHead(t, s, "proj", "main", head)
}

func TestForcePushMergeAndBranches(t *testing.T) {
	s := brokertest.Run(t)
	c := collect(t, s)
	repo := newGitRepo(t)
	base := repo.commit("base", nil)
	o := newObserver(t, s, testConfig(t.TempDir(), Repo{Name: "proj", URL: repo.dir}))
	pollAndWait(t, s, o, c, "proj", 1)

	// Force-push: drop the last 2 commits, add 1.
	repo.commit("a", nil)
	repo.commit("b", nil)
	pollAndWait(t, s, o, c, "proj", 2)
	repo.git("reset", "-q", "--hard", base)
	rewritten := repo.commit("rewritten", nil)
	evs := pollAndWait(t, s, o, c, "proj", 1)
	if evs[0].Commit != rewritten {
		t.Fatalf("force-push published %v, want %s", names(evs), rewritten)
	}
	checkHead(t, s, "proj", "main", rewritten)

	// A new branch publishes every commit no other branch reaches, oldest
	// first; commits on it are then published.
	repo.git("checkout", "-q", "-b", "side")
	s0 := repo.commit("side 0", nil)
	s1 := repo.commit("side 1", nil)
	evs = pollAndWait(t, s, o, c, "proj", 2)
	if evs[0].Branch != "side" || evs[0].Commit != s0 || evs[1].Commit != s1 {
		t.Fatalf("new branch: %v", names(evs))
	}
	s2, s3 := repo.commit("side 2", nil), repo.commit("side 3", nil)
	pollAndWait(t, s, o, c, "proj", 2)

	// Merge side into main: main gets the 4 side commits and the merge, parents
	// first (rev-list semantics: a Log stopping at the old head would miss them).
	repo.git("checkout", "-q", "main")
	repo.git("merge", "-q", "--no-ff", "-m", "merge side", "side")
	merge := repo.git("rev-parse", "HEAD")
	evs = pollAndWait(t, s, o, c, "proj", 5)
	checkTopological(t, evs)
	if evs[4].Commit != merge || evs[3].Commit != s3 || evs[2].Commit != s2 || evs[1].Commit != s1 {
		t.Fatalf("merge: got %v", names(evs))
	}
	for _, e := range evs {
		if e.Branch != "main" {
			t.Fatalf("event on %s: %v", e.Branch, names(evs))
		}
	}

	// Both sides moved before a merge: each side's own commits, then the merge.
	repo.git("checkout", "-q", "side")
	s4 := repo.commit("side 4", nil)
	repo.git("checkout", "-q", "main")
	m1 := repo.commit("main 1", map[string]string{"other.txt": "x"})
	repo.git("merge", "-q", "--no-ff", "-m", "merge side again", "side")
	merge2 := repo.git("rev-parse", "HEAD")
	evs = pollAndWait(t, s, o, c, "proj", 4) // side: s4; main: m1, s4, merge2
	checkTopological(t, evs)
	var onMain []string
	for _, e := range evs {
		if e.Branch == "main" {
			onMain = append(onMain, e.Commit)
		}
	}
	if len(onMain) != 3 || !slices.Contains(onMain, m1) || !slices.Contains(onMain, s4) || onMain[2] != merge2 {
		t.Fatalf("second merge: got %v", names(evs))
	}

	// Delete the branch: after one listing without it, it is still remembered
	// (a listing may catch a ref mid-update); after two, forgotten; recreated:
	// head only.
	repo.git("branch", "-q", "-D", "side")
	pollAndWait(t, s, o, c, "proj", 0)
	if err := headIs(s, "proj", "side", ""); err == nil {
		t.Fatal("branch forgotten after a single listing without it")
	}
	pollAndWait(t, s, o, c, "proj", 0)
	if err := headIs(s, "proj", "side", ""); err != nil {
		t.Fatal(err)
	}
	repo.git("branch", "-q", "side", s2)
	evs = pollAndWait(t, s, o, c, "proj", 1)
	if evs[0].Commit != s2 || evs[0].Branch != "side" {
		t.Fatalf("recreated branch: %v", names(evs))
	}
	checkHead(t, s, "proj", "side", s2)
}

// TestForcePushSameSecond rewrites a branch far back when every commit shares
// one timestamp (a script committing in a burst): the date-ordered walk must not
// report old commits as new.
func TestForcePushSameSecond(t *testing.T) {
	s := brokertest.Run(t)
	c := collect(t, s)
	repo := newGitRepo(t)
	repo.date = "2026-03-01T12:00:00Z"
	base := repo.commit("base", nil)
	for i := range 3 {
		repo.commit(fmt.Sprint("before ", i), nil)
	}
	o := newObserver(t, s, testConfig(t.TempDir(), Repo{Name: "proj", URL: repo.dir}))
	pollAndWait(t, s, o, c, "proj", 1)
	for i := range 15 {
		repo.commit(fmt.Sprint("dropped ", i), nil)
	}
	pollAndWait(t, s, o, c, "proj", 15)
	repo.git("reset", "-q", "--hard", base)
	want := repo.commit("new", map[string]string{"new.txt": "x"})
	if evs := pollAndWait(t, s, o, c, "proj", 1); evs[0].Commit != want {
		t.Fatalf("got %v, want only %s", names(evs), want)
	}
}

func TestOddBranchNames(t *testing.T) {
	s := brokertest.Run(t)
	c := collect(t, s)
	repo := newGitRepo(t)
	repo.commit("base", nil)
	candidates := []string{"feature/x.y", "a>b", "fix/ünï", "$sys", "v2.0.0-rc.1", "x.y.z", "*", "*star", "with space"}
	var branches []string
	for _, n := range candidates {
		if out, err := exec.Command("git", "check-ref-format", "--branch", n).CombinedOutput(); err != nil {
			t.Logf("git refuses branch %q: %s", n, strings.TrimSpace(string(out)))
			continue
		}
		branches = append(branches, n)
		repo.git("branch", n)
	}
	o := newObserver(t, s, testConfig(t.TempDir(), Repo{Name: "my.proj", URL: repo.dir}))
	evs := pollAndWait(t, s, o, c, "my.proj", len(branches)+1)
	got := map[string]bool{}
	for _, e := range evs {
		got[e.Branch] = true
	}
	for _, n := range branches {
		if !got[n] {
			t.Errorf("branch %q not published as named; got %v", n, got)
		}
		checkHead(t, s, "my.proj", n, evs[0].Commit)
	}
	// Moving one odd branch publishes on it only.
	repo.git("checkout", "-q", "a>b")
	sha := repo.commit("on a>b", nil)
	if evs := pollAndWait(t, s, o, c, "my.proj", 1); evs[0].Branch != "a>b" || evs[0].Commit != sha {
		t.Fatalf("got %v", names(evs))
	}
}

func TestConfigValidate(t *testing.T) {
	good := DefaultConfig()
	good.Repos = []Repo{{Name: "a", URL: "/x"}}
	if err := good.Validate(); err != nil {
		t.Fatalf("default config with a repo: %v", err)
	}
	for _, tt := range []struct {
		change func(*Config)
		want   string
	}{
		{func(c *Config) { c.Repos = append(c.Repos, Repo{Name: "a", URL: "/y"}) }, "two repos"},
		{func(c *Config) { c.Repos = nil }, "Repos"},
		{func(c *Config) { c.Poll = 0 }, "Poll 0s"},
		{func(c *Config) { c.CacheDir = "" }, "CacheDir"},
		{func(c *Config) { c.Concurrency = 0 }, "Concurrency 0"},
		{func(c *Config) { c.MaxNewCommits = -1 }, "--max-new-commits -1"},
		{func(c *Config) { c.PipelineMax = 2 << 20 }, "PipelineMax 2097152"},
		{func(c *Config) { c.ChangedMax = -1 }, "ChangedMax -1"},
	} {
		cfg := good
		cfg.Repos = slices.Clone(good.Repos)
		tt.change(&cfg)
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Validate() = %v, want an error naming %q", err, tt.want)
		}
	}
}

// checkTopological fails unless every commit comes after its parents among evs.
func checkTopological(t *testing.T, evs []*events.CommitDetected) {
	t.Helper()
	for _, branch := range []string{"main", "side"} {
		pos := map[string]int{}
		for i, e := range evs {
			if e.Branch == branch {
				pos[e.Commit] = i
			}
		}
		for _, e := range evs {
			for _, p := range e.Parents {
				if i, ok := pos[p]; ok && e.Branch == branch && i > pos[e.Commit] {
					t.Fatalf("%s comes before its parent %s: %v", e.Commit[:7], p[:7], names(evs))
				}
			}
		}
	}
}

// headIs checks the KV head of a branch; want "" means no entry.
func headIs(s *brokertest.Server, repo, branch, want string) error {
	kv, err := s.JS.KeyValue(context.Background(), events.BucketHeads)
	if err != nil {
		return err
	}
	e, err := kv.Get(context.Background(), events.HeadKey(repo, branch))
	if want == "" {
		if err == nil {
			return fmt.Errorf("head of %s/%s still recorded: %s", repo, branch, e.Value())
		}
		if err != jetstream.ErrKeyNotFound {
			return err
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("head of %s/%s: %w", repo, branch, err)
	}
	var h headEntry
	if err := json.Unmarshal(e.Value(), &h); err != nil {
		return err
	}
	if h.Repo != repo || h.Branch != branch || h.Commit != want || h.UpdatedAt.IsZero() {
		return fmt.Errorf("head of %s/%s is %+v, want %s", repo, branch, h, want)
	}
	return nil
}

func checkHead(t *testing.T, s *brokertest.Server, repo, branch, want string) {
	t.Helper()
	if err := headIs(s, repo, branch, want); err != nil {
		t.Fatal(err)
	}
}
