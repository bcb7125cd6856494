package observer

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

type gitRepo struct {
	t   *testing.T
	dir string
	n   int
}

func newGitRepo(t *testing.T) *gitRepo {
	r := &gitRepo{t: t, dir: filepath.Join(t.TempDir(), "proj.git")}
	os.MkdirAll(r.dir, 0o755)
	r.git("init", "-q", "-b", "main")
	return r
}

func (r *gitRepo) git(args ...string) string {
	r.t.Helper()
	cmd := exec.Command("git", append([]string{"-c", "user.name=Dev Eloper", "-c", "user.email=dev@example.com", "-c", "commit.gpgsign=false"}, args...)...)
	cmd.Dir = r.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		r.t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

func (r *gitRepo) commit(msg string, files map[string]string) string {
	r.t.Helper()
	for p, c := range files {
		full := filepath.Join(r.dir, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			r.t.Fatal(err)
		}
	}
	r.n++
	if files == nil {
		os.WriteFile(filepath.Join(r.dir, "n.txt"), []byte(fmt.Sprint(r.n)), 0o644)
	}
	r.git("add", "-A")
	r.git("commit", "-q", "-m", msg+"\n\nbody line")
	return r.git("rev-parse", "HEAD")
}

// collector records every CommitDetected published.
type collector struct {
	mu  sync.Mutex
	evs []*events.CommitDetected
}

func collect(t *testing.T, s *brokertest.Server) *collector {
	c := &collector{}
	sub, err := s.NC.Subscribe("jetci.commit.>", func(m *nats.Msg) {
		ev, err := events.DecodeAs[events.CommitDetected](m.Data)
		if err != nil {
			t.Errorf("bad event: %v", err)
			return
		}
		c.mu.Lock()
		c.evs = append(c.evs, ev)
		c.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	s.NC.Flush()
	return c
}

func (c *collector) take() []*events.CommitDetected {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.evs
	c.evs = nil
	return out
}

func (c *collector) commits(evs []*events.CommitDetected) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Branch+"@"+e.Commit[:7])
	}
	return out
}

func newObserver(t *testing.T, s *brokertest.Server, cache string, repos ...Repo) *Observer {
	cfg := DefaultConfig()
	cfg.Repos, cfg.CacheDir, cfg.Poll = repos, cache, 50*time.Millisecond
	o, err := New(cfg, s.NC, s.JS, brokertest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// pollAndWait polls once; publishes are synchronous, so the events are stored
// when Poll returns and need only reach the core subscription.
func pollAndWait(t *testing.T, o *Observer, c *collector, name string, want int) []*events.CommitDetected {
	t.Helper()
	if err := o.Poll(context.Background(), name); err != nil {
		t.Fatalf("poll: %v", err)
	}
	var got []*events.CommitDetected
	brokertest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		got = append(got, c.take()...)
		if len(got) < want {
			return fmt.Errorf("%d events, want %d", len(got), want)
		}
		return nil
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(got) != want {
		t.Fatalf("%d events, want %d: %v", len(got), want, c.commits(got))
	}
	return got
}

func shas(evs []*events.CommitDetected) string {
	var s []string
	for _, e := range evs {
		s = append(s, e.Commit)
	}
	return strings.Join(s, " ")
}

func TestBurstEveryCommitOldestFirst(t *testing.T) {
	s := brokertest.Run(t)
	c := collect(t, s)
	repo := newGitRepo(t)
	first := repo.commit("first", map[string]string{"tests/test_x.py": "x", "Makefile": "test:\n\ttrue\n", ".jetci.yml": "jobs: {}\n"})
	o := newObserver(t, s, t.TempDir(), Repo{Name: "proj", URL: repo.dir})
	evs := pollAndWait(t, o, c, "proj", 1)
	e := evs[0]
	if e.Commit != first || e.Branch != "main" || e.Repo != "proj" || e.RepoURL != repo.dir || e.Class != events.ClassFirst {
		t.Fatalf("first event %+v", e)
	}
	if e.Author.Name != "Dev Eloper" || e.Author.Email != "dev@example.com" || e.Subject != "first" || len(e.Parents) != 0 || e.Time.IsZero() {
		t.Fatalf("commit fields %+v", e)
	}
	if e.PipelinePath != ".jetci.yml" || e.Pipeline != "jobs: {}\n" {
		t.Fatalf("pipeline %q %q", e.PipelinePath, e.Pipeline)
	}
	if strings.Join(e.Probe.Root, ",") != ".jetci.yml,Makefile,tests/" || strings.Join(e.Probe.Tests, ",") != "test_x.py" || !strings.HasPrefix(e.Probe.Makefile, "test:") {
		t.Fatalf("probe %+v", e.Probe)
	}
	if len(e.Changed) != 3 {
		t.Fatalf("root commit changed paths %v, want all 3 files", e.Changed)
	}
	var want []string
	for i := range 20 {
		want = append(want, repo.commit(fmt.Sprintf("burst %d", i), nil))
	}
	evs = pollAndWait(t, o, c, "proj", 20)
	if shas(evs) != strings.Join(want, " ") {
		t.Fatalf("burst order:\n got %s\nwant %s", shas(evs), strings.Join(want, " "))
	}
	if evs[5].Parents[0] != want[4] || strings.Join(evs[5].Changed, ",") != "n.txt" || evs[5].PipelinePath != ".jetci.yml" {
		t.Fatalf("event 5: parents %v changed %v", evs[5].Parents, evs[5].Changed)
	}
	// Nothing new: nothing published.
	pollAndWait(t, o, c, "proj", 0)
}

func TestRestartNeitherMissesNorRepeats(t *testing.T) {
	s := brokertest.Run(t)
	c := collect(t, s)
	repo := newGitRepo(t)
	repo.commit("one", nil)
	cache := t.TempDir()
	a := newObserver(t, s, cache, Repo{Name: "proj", URL: repo.dir})
	pollAndWait(t, a, c, "proj", 1)
	want := []string{repo.commit("two", nil), repo.commit("three", nil), repo.commit("four", nil)}
	// A new observer (a restart), with a fresh cache too: the heads come from KV.
	for _, dir := range []string{cache, t.TempDir()} {
		b := newObserver(t, s, dir, Repo{Name: "proj", URL: repo.dir})
		evs := pollAndWait(t, b, c, "proj", len(want))
		if len(want) > 0 && shas(evs) != strings.Join(want, " ") {
			t.Fatalf("after restart got %s, want %s", shas(evs), strings.Join(want, " "))
		}
		want = nil
	}
}

func TestForcePushMergeAndBranches(t *testing.T) {
	s := brokertest.Run(t)
	c := collect(t, s)
	repo := newGitRepo(t)
	base := repo.commit("base", nil)
	o := newObserver(t, s, t.TempDir(), Repo{Name: "proj", URL: repo.dir})
	pollAndWait(t, o, c, "proj", 1)

	// Force-push: drop the last 2 commits, add 1.
	repo.commit("a", nil)
	repo.commit("b", nil)
	pollAndWait(t, o, c, "proj", 2)
	repo.git("reset", "-q", "--hard", base)
	rewritten := repo.commit("rewritten", nil)
	evs := pollAndWait(t, o, c, "proj", 1)
	if evs[0].Commit != rewritten {
		t.Fatalf("force-push published %s, want %s", evs[0].Commit, rewritten)
	}

	// A new branch publishes its head only; commits on it are then published.
	repo.git("checkout", "-q", "-b", "side")
	s1 := repo.commit("side 1", nil)
	evs = pollAndWait(t, o, c, "proj", 1)
	if evs[0].Branch != "side" || evs[0].Commit != s1 {
		t.Fatalf("new branch: %v", c.commits(evs))
	}
	s2, s3 := repo.commit("side 2", nil), repo.commit("side 3", nil)
	pollAndWait(t, o, c, "proj", 2)

	// Merge side into main: main gets the 3 side commits and the merge, parents first.
	repo.git("checkout", "-q", "main")
	m1 := repo.commit("main moves on", map[string]string{"other.txt": "x"})
	repo.git("-c", "user.name=Dev Eloper", "merge", "-q", "--no-ff", "-m", "merge side", "side")
	merge := repo.git("rev-parse", "HEAD")
	evs = pollAndWait(t, o, c, "proj", 5)
	pos := map[string]int{}
	for i, e := range evs {
		if e.Branch != "main" {
			t.Fatalf("event on %s", e.Branch)
		}
		pos[e.Commit] = i
	}
	for _, sha := range []string{s1, s2, s3, m1, merge} {
		if _, ok := pos[sha]; !ok {
			t.Fatalf("merge: %s not published; got %v", sha[:7], c.commits(evs))
		}
	}
	if !(pos[s1] < pos[s2] && pos[s2] < pos[s3] && pos[s3] < pos[merge] && pos[m1] < pos[merge]) {
		t.Fatalf("merge order wrong: %v", c.commits(evs))
	}

	// Delete the branch: forgotten; recreated: head only.
	repo.git("branch", "-q", "-D", "side")
	pollAndWait(t, o, c, "proj", 0)
	if _, err := o.heads.Get(context.Background(), events.HeadKey("proj", "side")); err == nil {
		t.Fatal("deleted branch still in KV")
	}
	repo.git("branch", "-q", "side", s2)
	evs = pollAndWait(t, o, c, "proj", 1)
	if evs[0].Commit != s2 || evs[0].Branch != "side" {
		t.Fatalf("recreated branch: %v", c.commits(evs))
	}
}

func TestOddBranchNames(t *testing.T) {
	s := brokertest.Run(t)
	c := collect(t, s)
	repo := newGitRepo(t)
	repo.commit("base", nil)
	names := []string{"feature/x.y", "a>b", "fix/ünï", "$sys", "v2.0.0-rc.1", "*star"}
	if out, err := exec.Command("git", "check-ref-format", "--branch", "*star").CombinedOutput(); err != nil {
		t.Logf("git refuses *star (%s): leaving it out", out)
		names = names[:len(names)-1]
	}
	for _, n := range names {
		repo.git("branch", n)
	}
	o := newObserver(t, s, t.TempDir(), Repo{Name: "proj", URL: repo.dir})
	evs := pollAndWait(t, o, c, "proj", len(names)+1)
	got := map[string]bool{}
	for _, e := range evs {
		got[e.Branch] = true
	}
	for _, n := range names {
		if !got[n] {
			t.Errorf("branch %q not published as named; got %v", n, got)
		}
	}
}

func TestUnreachableRepoDoesNotStopOthers(t *testing.T) {
	s := brokertest.Run(t)
	c := collect(t, s)
	good := newGitRepo(t)
	gone := newGitRepo(t)
	gone.commit("x", nil)
	sha := good.commit("x", nil)
	o := newObserver(t, s, t.TempDir(), Repo{Name: "good", URL: good.dir}, Repo{Name: "gone", URL: gone.dir})
	os.RemoveAll(gone.dir)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	defer func() { cancel(); <-done }()
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		for _, e := range c.take() {
			if e.Commit == sha {
				return nil
			}
		}
		return fmt.Errorf("good repo not published")
	})
	if err := o.Poll(context.Background(), "gone"); err == nil {
		t.Fatal("polling a deleted repo: want an error")
	}
}

func TestTrigger(t *testing.T) {
	s := brokertest.Run(t)
	c := collect(t, s)
	repo := newGitRepo(t)
	first := repo.commit("one", nil)
	head := repo.commit("two", nil)
	o := newObserver(t, s, t.TempDir(), Repo{Name: "proj", URL: repo.dir})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	defer func() { cancel(); <-done }()
	ask := func(req *events.TriggerRequest) *events.TriggerReply {
		data, _ := events.Encode(req)
		var m *nats.Msg
		brokertest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() (err error) {
			m, err = s.NC.Request(events.TriggerSubject("proj"), data, 10*time.Second)
			return err
		})
		r, err := events.DecodeAs[events.TriggerReply](m.Data)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r := ask(&events.TriggerRequest{Repo: "proj", Branch: "main"})
	if r.Error != "" || r.Commit != head || r.TriggerID == "" {
		t.Fatalf("trigger reply %+v", r)
	}
	r = ask(&events.TriggerRequest{Repo: "proj", Branch: "main", Commit: first[:8]})
	if r.Error != "" || r.Commit != first {
		t.Fatalf("trigger by prefix %+v", r)
	}
	brokertest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		for _, e := range c.take() {
			if e.Class == events.ClassUser && e.Commit == first && e.TriggerID != "" {
				return nil
			}
		}
		return fmt.Errorf("no user-class event")
	})
	for _, bad := range []*events.TriggerRequest{{Repo: "proj", Branch: "nope"}, {Repo: "proj", Branch: "main", Commit: "ffffffff"}} {
		if r := ask(bad); r.Error == "" {
			t.Errorf("trigger %+v: want an error", bad)
		}
	}
}

func TestParseRepo(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "proj.git"), 0o755)
	os.MkdirAll(filepath.Join(dir, "plain"), 0o755)
	for _, tt := range []struct{ in, name, url, err string }{
		{filepath.Join(dir, "proj.git"), "proj", filepath.Join(dir, "proj.git"), ""},
		{filepath.Join(dir, "plain") + "/", "plain", filepath.Join(dir, "plain"), ""},
		{"mine=" + filepath.Join(dir, "plain"), "mine", filepath.Join(dir, "plain"), ""},
		{"https://git.example.com/team/repo.git", "repo", "https://git.example.com/team/repo.git", ""},
		{"git@git.example.com:team/thing.git", "thing", "git@git.example.com:team/thing.git", ""},
		{"ssh://git@host:22/x/y", "y", "ssh://git@host:22/x/y", ""},
		{"n=https://h/o/r", "n", "https://h/o/r", ""},
		{"", "", "", "empty"},
		{filepath.Join(dir, "missing"), "", "", "does not exist"},
		{"x=", "", "", "no path"},
	} {
		r, err := ParseRepo(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseRepo(%q) = %+v, %v; want error %q", tt.in, r, err, tt.err)
			}
			continue
		}
		if err != nil || r.Name != tt.name || r.URL != tt.url {
			t.Errorf("ParseRepo(%q) = %+v, %v; want %s %s", tt.in, r, err, tt.name, tt.url)
		}
	}
	cfg := DefaultConfig()
	cfg.Repos = []Repo{{"a", "/x"}, {"a", "/y"}}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "two repos") {
		t.Errorf("duplicate names: %v", err)
	}
}
