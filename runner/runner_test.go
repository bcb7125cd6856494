package runner

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/internal/gittest"
)

type gitRepo = gittest.Repo

func newGitRepo(t testing.TB) *gitRepo { return gittest.New(t, "proj") }

// results collects job events from the results subjects.
type results struct {
	mu       sync.Mutex
	started  []*events.JobStarted
	finished map[string]*events.JobFinished // job id -> latest
}

func watchResults(t testing.TB, s *brokertest.Server) *results {
	res := &results{finished: map[string]*events.JobFinished{}}
	sub, err := s.NC.Subscribe("jetci.result.>", func(m *nats.Msg) {
		ev, err := events.Decode(m.Data)
		if err != nil {
			return
		}
		res.mu.Lock()
		defer res.mu.Unlock()
		switch e := ev.(type) {
		case *events.JobStarted:
			res.started = append(res.started, e)
		case *events.JobFinished:
			res.finished[e.JobID] = e
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	s.NC.Flush()
	t.Cleanup(func() { sub.Unsubscribe() })
	return res
}

func (r *results) wait(t *testing.T, jobID string) *events.JobFinished {
	t.Helper()
	var got *events.JobFinished
	brokertest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		r.mu.Lock()
		defer r.mu.Unlock()
		if got = r.finished[jobID]; got == nil {
			return fmt.Errorf("no result for job %s", jobID)
		}
		return nil
	})
	return got
}

var jobN int

func enqueue(t *testing.T, s *brokertest.Server, repo *gitRepo, commit string, class events.Class, steps ...string) *events.JobQueued {
	t.Helper()
	return publishJob(t, s, commit, &events.JobQueued{RepoURL: repo.Dir, Class: class, Steps: steps, TimeoutMs: 20000}, nil)
}

// publishJob names j (job jN of proj main on amd64, at commit), lets mod
// change it, and puts it in the work queue at its class, as the dispatcher
// would. Every enqueue helper of these tests goes through it.
func publishJob(t *testing.T, s *brokertest.Server, commit string, j *events.JobQueued, mod func(*events.JobQueued)) *events.JobQueued {
	t.Helper()
	jobN++
	j.JobRef = events.JobRef{Repo: "proj", Branch: "main", Commit: commit, Job: "j" + strconv.Itoa(jobN), Arch: "amd64"}
	j.Pool = "default"
	if j.Class == "" {
		j.Class = events.ClassFirst
	}
	if mod != nil {
		mod(j)
	}
	j.JobID = events.JobID(j.Repo, j.Branch, j.Commit, j.Job, j.Arch)
	data, err := events.Encode(j)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.JS.Publish(context.Background(), events.JobSubject(j.Pool, j.Arch, j.Class, j.Repo, j.Branch), data); err != nil {
		t.Fatal(err)
	}
	return j
}

func startRunner(t *testing.T, s *brokertest.Server, mod func(*Config)) (*Runner, context.CancelFunc) {
	t.Helper()
	cfg := DefaultConfig()
	// One slot unless a test asks for more: the default follows the CPUs,
	// and tests about one workspace need the same slot every time.
	cfg.Arch, cfg.WorkDir, cfg.IdlePoll, cfg.Slots = "amd64", t.TempDir(), 50*time.Millisecond, 1
	// The runner's mechanics are tested on the host backend: those tests
	// watch marker files outside the workspace, which a sandbox forbids.
	// The backends' own tests (sandbox_test.go) set Exec.
	cfg.Exec = ExecHost
	if mod != nil {
		mod(&cfg)
	}
	r, err := New(cfg, s.NC, s.JS, brokertest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return r, stop
}

func readLog(t *testing.T, s *brokertest.Server, name string) string {
	t.Helper()
	store, err := s.JS.ObjectStore(context.Background(), events.BucketLogs)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := store.Get(context.Background(), name)
	if err != nil {
		t.Fatalf("log %s: %v", name, err)
	}
	defer obj.Close()
	b, _ := io.ReadAll(obj)
	return string(b)
}

func TestJobOutcomes(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("change", map[string]string{"hello.txt": "hi\n"})
	startRunner(t, s, nil)

	pass := enqueue(t, s, repo, c, events.ClassFirst, "cat hello.txt", `echo "$JETCI_REPO|$JETCI_BRANCH|$JETCI_COMMIT|$JETCI_ARCH|$JETCI_JOB|$JETCI_JOB_ID|$JETCI_ATTEMPT|$CI"`)
	fail := enqueue(t, s, repo, c, events.ClassFirst, "echo one", "exit 3", "echo never-runs")
	missing := enqueue(t, s, repo, strings.Repeat("ab", 20), events.ClassFirst, "true")

	r := res.wait(t, pass.JobID)
	if r.Status != events.StatusPassed || r.ExitCode != 0 || r.Attempt != 1 || r.Runner == "" || r.Log == "" || r.QueueSeq == 0 {
		t.Fatalf("passing job: %+v", r)
	}
	log := readLog(t, s, r.Log)
	want := fmt.Sprintf("proj|main|%s|amd64|%s|%s|1|true", c, pass.Job, pass.JobID)
	if !strings.Contains(log, "hi\n") || !strings.Contains(log, want) || !strings.Contains(log, "$ cat hello.txt") {
		t.Fatalf("log:\n%s\nwant the file, the env line %q and step headers", log, want)
	}
	r = res.wait(t, fail.JobID)
	if r.Status != events.StatusFailed || r.ExitCode != 3 {
		t.Fatalf("failing job: %+v", r)
	}
	if log := readLog(t, s, r.Log); strings.Contains(log, "never-runs") || !strings.Contains(log, "one") {
		t.Fatalf("failing job log:\n%s", log)
	}
	r = res.wait(t, missing.JobID)
	if r.Status != events.StatusError || !strings.Contains(r.Error, "no such commit") {
		t.Fatalf("missing commit: %+v", r)
	}
	// Everything was acked: nothing left in the queue.
	brokertest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		info, err := s.JS.Stream(context.Background(), events.StreamJobs)
		if err != nil {
			return err
		}
		if n := info.CachedInfo().State.Msgs; n != 0 {
			return fmt.Errorf("%d jobs left in the queue", n)
		}
		return nil
	})
}

func TestTimeoutKillsTheProcessGroup(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("change", map[string]string{"a": "a"})
	startRunner(t, s, nil)
	pidFile := filepath.Join(t.TempDir(), "pid")
	j := &events.JobQueued{
		JobRef:  events.JobRef{Repo: "proj", Branch: "main", Commit: c, Job: "hang", Arch: "amd64"},
		RepoURL: repo.Dir, Pool: "default", Class: events.ClassFirst, TimeoutMs: 500,
		Steps: []string{fmt.Sprintf("sleep 1000 & echo $! > %s; sh -c 'sleep 1000'", pidFile)},
	}
	j.JobID = events.JobID(j.Repo, j.Branch, j.Commit, j.Job, j.Arch)
	data, _ := events.Encode(j)
	s.JS.Publish(context.Background(), events.JobSubject("default", "amd64", events.ClassFirst, "proj", "main"), data)
	r := res.wait(t, j.JobID)
	if r.Status != events.StatusError || !strings.Contains(r.Error, "timeout after 500ms") || r.ExitCode != -1 {
		t.Fatalf("result %+v, want error timeout", r)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	brokertest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if alive(pid) {
			return fmt.Errorf("background child %d still alive", pid)
		}
		return nil
	})
	// A step that forks a background process and exits: passes, child killed, no hang.
	j2 := enqueue(t, s, repo, c, events.ClassFirst, "sleep 1000 & echo started")
	if r := res.wait(t, j2.JobID); r.Status != events.StatusPassed {
		t.Fatalf("forking step: %+v", r)
	}
}

func TestOutputFloodIsCapped(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("change", map[string]string{"a": "a"})
	startRunner(t, s, func(c *Config) { c.LogLimit = 64 << 10 })
	j := enqueue(t, s, repo, c, events.ClassFirst, "head -c 50000000 /dev/zero | tr '\\0' 'x'; printf '\\377\\001 bad utf8\\n'; echo done")
	r := res.wait(t, j.JobID)
	if r.Status != events.StatusPassed || !r.LogTruncated || r.LogBytes > 70<<10 {
		t.Fatalf("flood: %+v", r)
	}
	log := readLog(t, s, r.Log)
	if !strings.Contains(log, "[jetci: output truncated after 65536 bytes") || len(log) > 70<<10 {
		t.Fatalf("log of %d bytes ends %q", len(log), log[max(0, len(log)-200):])
	}
}

func TestWorkspaceMovesAndIsCleaned(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c1 := repo.Commit("change", map[string]string{"keep.txt": "1", "gone.txt": "x", ".gitignore": "build/\n"})
	c2 := repo.Commit("change", map[string]string{"keep.txt": "2", "gone.txt": ""})
	startRunner(t, s, nil)
	j1 := enqueue(t, s, repo, c1, events.ClassFirst, "test -f gone.txt", "mkdir -p build && touch build/out untracked.txt")
	if r := res.wait(t, j1.JobID); r.Status != events.StatusPassed {
		t.Fatalf("job 1: %+v", r)
	}
	j2 := enqueue(t, s, repo, c2, events.ClassFirst, "test ! -e gone.txt", "test ! -e untracked.txt", "test ! -e build", "grep -q 2 keep.txt")
	if r := res.wait(t, j2.JobID); r.Status != events.StatusPassed {
		t.Fatalf("job 2 saw leftovers: %+v\n%s", r, readLog(t, s, r.Log))
	}
}

func TestSlotsRunInParallel(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("change", map[string]string{"a": "a"})
	startRunner(t, s, func(c *Config) { c.Slots = 2 })
	dir := t.TempDir()
	// Each job waits until the other one has started: only parallel slots finish both.
	a := enqueue(t, s, repo, c, events.ClassFirst, fmt.Sprintf("touch %s/a; for i in $(seq 200); do test -f %s/b && exit 0; sleep 0.05; done; exit 1", dir, dir))
	b := enqueue(t, s, repo, c, events.ClassFirst, fmt.Sprintf("touch %s/b; for i in $(seq 200); do test -f %s/a && exit 0; sleep 0.05; done; exit 1", dir, dir))
	for _, j := range []*events.JobQueued{a, b} {
		if r := res.wait(t, j.JobID); r.Status != events.StatusPassed {
			t.Fatalf("job %s: %+v", j.Job, r)
		}
	}
}

func TestHigherClassRunsFirstAndBadMessagesAreDropped(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("change", map[string]string{"a": "a"})
	if _, err := events.EnsureJobConsumers(context.Background(), s.JS, "default", "amd64"); err != nil {
		t.Fatal(err)
	}
	s.JS.Publish(context.Background(), events.JobSubject("default", "amd64", events.ClassPeriodic, "proj", "main"), []byte("garbage"))
	var periodic []*events.JobQueued
	for range 5 {
		periodic = append(periodic, enqueue(t, s, repo, c, events.ClassPeriodic, "true"))
	}
	user := enqueue(t, s, repo, c, events.ClassUser, "true")
	startRunner(t, s, nil)
	for _, j := range periodic {
		res.wait(t, j.JobID)
	}
	res.mu.Lock()
	first := res.started[0].JobID
	res.mu.Unlock()
	if first != user.JobID {
		t.Fatalf("first job started was %s, want the user-triggered %s", first, user.JobID)
	}
	// The bad message was terminated, not left to be redelivered: the queue is empty.
	brokertest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		info, err := s.JS.Stream(context.Background(), events.StreamJobs)
		if err != nil {
			return err
		}
		if n := info.CachedInfo().State.Msgs; n != 0 {
			return fmt.Errorf("%d messages left in the queue", n)
		}
		return nil
	})
}

func TestStoppedRunnerHandsTheJobBack(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("change", map[string]string{"a": "a"})
	marker := filepath.Join(t.TempDir(), "ran")
	_, stopA := startRunner(t, s, func(c *Config) { c.Grace = 0 })
	j := enqueue(t, s, repo, c, events.ClassFirst, fmt.Sprintf("if [ -f %s ]; then exit 0; fi; touch %s; sleep 1000", marker, marker))
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if _, err := os.Stat(marker); err != nil {
			return err
		}
		return nil
	})
	stopA()
	startRunner(t, s, nil)
	r := res.wait(t, j.JobID)
	if r.Status != events.StatusPassed || r.Attempt != 2 {
		t.Fatalf("handed-back job: %+v, want passed on attempt 2", r)
	}
}

func TestGracefulStopLetsTheJobFinish(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("change", map[string]string{"a": "a"})
	dir := t.TempDir()
	_, stop := startRunner(t, s, func(c *Config) { c.Grace = 20 * time.Second })
	// The job waits until the runner has been told to stop, then finishes.
	j := enqueue(t, s, repo, c, events.ClassFirst, fmt.Sprintf("touch %s/started; while [ ! -f %s/stop ]; do sleep 0.05; done", dir, dir))
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		_, err := os.Stat(filepath.Join(dir, "started"))
		return err
	})
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	// While stopping, the runner takes no new job.
	other := enqueue(t, s, repo, c, events.ClassUser, "true")
	os.WriteFile(filepath.Join(dir, "stop"), nil, 0o644)
	<-stopped
	if r := res.wait(t, j.JobID); r.Status != events.StatusPassed || r.Attempt != 1 {
		t.Fatalf("job during graceful stop: %+v, want passed on attempt 1", r)
	}
	res.mu.Lock()
	_, ran := res.finished[other.JobID]
	res.mu.Unlock()
	if ran {
		t.Fatal("a stopping runner took a new job")
	}
}

func TestOutboxSurvivesARestart(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	work := t.TempDir()
	// A result left in the outbox by a runner that died before it could publish.
	ref := events.JobRef{Repo: "proj", Branch: "main", Commit: "c1", Job: "t", Arch: "amd64"}
	ref.JobID = events.JobID(ref.Repo, ref.Branch, ref.Commit, ref.Job, ref.Arch)
	r := &Runner{cfg: Config{WorkDir: work}}
	os.MkdirAll(filepath.Join(work, "outbox"), 0o755)
	fin := &events.JobFinished{JobRef: ref, QueueSeq: 7, Attempt: 1, Status: events.StatusPassed, FinishedAt: time.Now()}
	data := fmt.Sprintf(`{"result":%s}`, mustJSON(t, fin))
	os.WriteFile(r.outboxPath(fin), []byte(data), 0o644)
	startRunner(t, s, func(c *Config) { c.WorkDir = work })
	if got := res.wait(t, ref.JobID); got.Status != events.StatusPassed || got.QueueSeq != 7 {
		t.Fatalf("outbox result: %+v", got)
	}
	brokertest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if _, err := os.Stat(r.outboxPath(fin)); err == nil {
			return fmt.Errorf("outbox entry still there")
		}
		return nil
	})
}

func mustJSON(t *testing.T, v any) string {
	b, err := events.Encode(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestBrokenWorkspaceAndCacheAreRebuilt: a runner killed mid-write can leave a
// truncated index or a damaged cache; the next job rebuilds them instead of failing.
func TestBrokenWorkspaceAndCacheAreRebuilt(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c1 := repo.Commit("change", map[string]string{"a": "1"})
	work := t.TempDir()
	startRunner(t, s, func(c *Config) { c.WorkDir = work })
	if r := res.wait(t, enqueue(t, s, repo, c1, events.ClassFirst, "true").JobID); r.Status != events.StatusPassed {
		t.Fatalf("first job: %+v", r)
	}
	ws := filepath.Join(work, "slots", "1", events.Token("proj"))
	os.WriteFile(filepath.Join(ws, ".git", "index"), []byte("DIRC\x00"), 0o644) // truncated index
	c2 := repo.Commit("change", map[string]string{"a": "2"})
	if r := res.wait(t, enqueue(t, s, repo, c2, events.ClassFirst, "grep -q 2 a").JobID); r.Status != events.StatusPassed {
		t.Fatalf("after a broken index: %+v", r)
	}
	// Damage every pack of the cache.
	packs, _ := filepath.Glob(filepath.Join(work, "cache", events.Token("proj")+".git", "objects", "pack", "*.pack"))
	for _, p := range packs {
		os.WriteFile(p, []byte("PACK"), 0o644)
	}
	os.RemoveAll(ws)
	c3 := repo.Commit("change", map[string]string{"a": "3"})
	if r := res.wait(t, enqueue(t, s, repo, c3, events.ClassFirst, "grep -q 3 a").JobID); r.Status != events.StatusPassed {
		t.Fatalf("after a damaged cache: %+v", r)
	}
}

// alive reports whether a process exists and is not a zombie waiting for init.
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true // no /proc: trust kill
	}
	// "pid (comm) S ...": the state follows the last ')'.
	st := string(b)
	if i := strings.LastIndexByte(st, ')'); i >= 0 && i+2 < len(st) {
		return st[i+2] != 'Z'
	}
	return true
}

// TestRunnersShareByCapacity: runners pull, one job per free slot, so runners
// with 1 and 3 slots share a burst about 1:3.
func TestRunnersShareByCapacity(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("change", map[string]string{"a.txt": "a\n"})
	startRunner(t, s, func(c *Config) { c.ID, c.Slots = "one", 1 })
	startRunner(t, s, func(c *Config) { c.ID, c.Slots = "three", 3 })
	var jobs []*events.JobQueued
	for range 40 {
		jobs = append(jobs, enqueue(t, s, repo, c, events.ClassFirst, "sleep 0.2"))
	}
	count := map[string]int{}
	for _, j := range jobs {
		count[res.wait(t, j.JobID).Runner]++
	}
	ratio := float64(count["three"]) / float64(max(count["one"], 1))
	t.Logf("one: %d jobs, three: %d jobs, ratio %.2f", count["one"], count["three"], ratio)
	if count["one"]+count["three"] != 40 || ratio < 2 || ratio > 4.5 {
		t.Fatalf("shares %v (ratio %.2f), want about 1:3", count, ratio)
	}
}

// TestUserJobJumpsThePeriodicQueue: with the only slot busy, ten periodic jobs
// wait; a user-triggered job queued after them runs next.
func TestUserJobJumpsThePeriodicQueue(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("change", map[string]string{"a.txt": "a\n"})
	startRunner(t, s, func(c *Config) { c.Slots = 1 })
	busy := enqueue(t, s, repo, c, events.ClassFirst, "sleep 1")
	brokertest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		res.mu.Lock()
		defer res.mu.Unlock()
		if len(res.started) == 0 || res.started[0].JobID != busy.JobID {
			return fmt.Errorf("the first job has not started")
		}
		return nil
	})
	for range 10 {
		enqueue(t, s, repo, c, events.ClassPeriodic, "true")
	}
	user := enqueue(t, s, repo, c, events.ClassUser, "true")
	res.wait(t, user.JobID)
	res.mu.Lock()
	defer res.mu.Unlock()
	if len(res.started) < 2 || res.started[1].JobID != user.JobID {
		var order []string
		for _, st := range res.started {
			order = append(order, st.Job)
		}
		t.Fatalf("started in order %v; want the user job (%s) right after the busy one", order, user.Job)
	}
}
