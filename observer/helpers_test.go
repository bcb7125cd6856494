package observer

import (
	"bytes"
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
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

// gitRepo is a repository built with the git CLI.
type gitRepo struct {
	t    testing.TB
	dir  string
	n    int
	date string // when set, every commit gets this author and committer date
}

func newGitRepo(t testing.TB) *gitRepo {
	t.Helper()
	r := &gitRepo{t: t, dir: filepath.Join(t.TempDir(), "proj.git")}
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	r.git("init", "-q", "-b", "main")
	return r
}

func (r *gitRepo) git(args ...string) string {
	r.t.Helper()
	cmd := exec.Command("git", append([]string{"-c", "user.name=Dev Eloper", "-c", "user.email=dev@example.com", "-c", "commit.gpgsign=false"}, args...)...)
	cmd.Dir = r.dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1")
	if r.date != "" {
		cmd.Env = append(cmd.Env, "GIT_AUTHOR_DATE="+r.date, "GIT_COMMITTER_DATE="+r.date)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		r.t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// commit writes files (or, with none, bumps n.txt) and commits them; it returns the sha.
func (r *gitRepo) commit(msg string, files map[string]string) string {
	r.t.Helper()
	for p, c := range files {
		full := filepath.Join(r.dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			r.t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			r.t.Fatal(err)
		}
	}
	r.n++
	if files == nil {
		if err := os.WriteFile(filepath.Join(r.dir, "n.txt"), []byte(fmt.Sprint(r.n)), 0o644); err != nil {
			r.t.Fatal(err)
		}
	}
	r.git("add", "-A")
	r.git("commit", "-q", "-m", msg+"\n\nbody line")
	return r.git("rev-parse", "HEAD")
}

// collector records every CommitDetected published, through a core subscription
// (which also sees publishes JetStream drops as duplicates: a repeat shows).
type collector struct {
	mu  sync.Mutex
	evs []*events.CommitDetected
}

func collect(t *testing.T, s *brokertest.Server) *collector {
	t.Helper()
	c := &collector{}
	sub, err := s.NC.Subscribe(events.SubjectCommits+".>", func(m *nats.Msg) {
		ev, err := events.DecodeAs[events.CommitDetected](m.Data)
		if err != nil {
			t.Errorf("bad event: %v", err)
			return
		}
		if want := events.CommitSubject(ev.Repo, ev.Branch); m.Subject != want {
			t.Errorf("event for %s@%s on %s, want %s", ev.Branch, ev.Commit, m.Subject, want)
		}
		c.mu.Lock()
		c.evs = append(c.evs, ev)
		c.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	if err := s.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *collector) take() []*events.CommitDetected {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.evs
	c.evs = nil
	return out
}

func names(evs []*events.CommitDetected) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Branch+"@"+e.Commit[:7]+" "+e.Subject)
	}
	return out
}

func shas(evs []*events.CommitDetected) string {
	var s []string
	for _, e := range evs {
		s = append(s, e.Commit)
	}
	return strings.Join(s, " ")
}

func testConfig(cache string, repos ...Repo) Config {
	cfg := DefaultConfig()
	cfg.Repos, cfg.CacheDir, cfg.Poll = repos, cache, 20*time.Millisecond
	return cfg
}

func newObserver(t *testing.T, s *brokertest.Server, cfg Config) *Observer {
	t.Helper()
	o, err := New(cfg, s.NC, s.JS, brokertest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// run starts o.Run; the returned stop cancels it and checks it returned nil.
func run(t *testing.T, o *Observer) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v, want nil after cancel", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// pollAndWait polls once and returns exactly the want events it caused.
// Publishes are synchronous, so the events are stored when Poll returns; a flush
// round trip on the collecting connection makes sure they were delivered.
func pollAndWait(t *testing.T, s *brokertest.Server, o *Observer, c *collector, name string, want int) []*events.CommitDetected {
	t.Helper()
	if err := o.Poll(context.Background(), name); err != nil {
		t.Fatalf("poll: %v", err)
	}
	var got []*events.CommitDetected
	brokertest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		got = append(got, c.take()...)
		if len(got) < want {
			return fmt.Errorf("%d events, want %d: %v", len(got), want, names(got))
		}
		return nil
	})
	// Anything more would have been published before Poll returned.
	if err := s.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	got = append(got, c.take()...)
	if len(got) != want {
		t.Fatalf("%d events, want %d: %v", len(got), want, names(got))
	}
	return got
}

// logBuffer collects JSON log lines for tests that check what was logged.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) lines(level, msg string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, l := range strings.Split(b.buf.String(), "\n") {
		if strings.Contains(l, `"level":"`+level+`"`) && strings.Contains(l, `"message":"`+msg) {
			out = append(out, l)
		}
	}
	return out
}

func (b *logBuffer) logger() zerolog.Logger { return zerolog.New(b).Level(zerolog.DebugLevel) }
