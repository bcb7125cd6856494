package runner

import (
	"context"
	"encoding/json"
	"fmt"
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
)

// TestWorkspaceIsReusedAndRestored: the slot's workspace is moved, not cloned
// again (its .git survives), tracked files a job changed are restored, folders
// left without write permission are removed, and the git CLI works in it.
func TestWorkspaceIsReusedAndRestored(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c1 := repo.Commit("one", map[string]string{"src/keep.txt": "orig\n"})
	repo.Git("tag", "v1.0.0")
	work := t.TempDir()
	startRunner(t, s, func(c *Config) { c.WorkDir = work })
	j1 := enqueue(t, s, repo, c1, events.ClassFirst,
		"echo changed > src/keep.txt",
		"mkdir -p modcache/pkg && touch modcache/pkg/f && chmod -R a-w modcache",
		"touch .git/jetci-marker")
	if r := res.wait(t, j1.JobID); r.Status != events.StatusPassed {
		t.Fatalf("job 1: %+v\n%s", r, readLog(t, s, r.Log))
	}
	c2 := repo.Commit("two", map[string]string{"other.txt": "x"})
	j2 := enqueue(t, s, repo, c2, events.ClassFirst,
		"grep -qx orig src/keep.txt",
		"test ! -e modcache",
		"test -f .git/jetci-marker",
		fmt.Sprintf(`test "$(git rev-parse HEAD)" = %s`, c2),
		`git log --format=%s | tr '\n' , | grep -qx two,one,`,
		`test -z "$(git status --porcelain)"`)
	if r := res.wait(t, j2.JobID); r.Status != events.StatusPassed {
		t.Fatalf("job 2: %+v\n%s", r, readLog(t, s, r.Log))
	}
}

// TestCachedCommitRunsWhileRemoteIsAway: a fetch that fails because the remote is
// gone is an error for that job, but the cache survives and commits it already
// holds still run.
func TestCachedCommitRunsWhileRemoteIsAway(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c1 := repo.Commit("one", map[string]string{"a": "1"})
	startRunner(t, s, nil)
	if r := res.wait(t, enqueue(t, s, repo, c1, events.ClassFirst, "true").JobID); r.Status != events.StatusPassed {
		t.Fatalf("job 1: %+v", r)
	}
	c2 := repo.Commit("two", map[string]string{"a": "2"})
	moved := repo.Dir + ".away"
	if err := os.Rename(repo.Dir, moved); err != nil {
		t.Fatal(err)
	}
	r := res.wait(t, enqueue(t, s, repo, c2, events.ClassFirst, "true").JobID)
	if r.Status != events.StatusError || !strings.HasPrefix(r.Error, "checkout failed: ") || r.ExitCode != -1 {
		t.Fatalf("job with the remote away: %+v", r)
	}
	if r := res.wait(t, enqueue(t, s, repo, c1, events.ClassFirst, "grep -qx 1 a").JobID); r.Status != events.StatusPassed {
		t.Fatalf("cached commit with the remote away: %+v", r)
	}
	if err := os.Rename(moved, repo.Dir); err != nil {
		t.Fatal(err)
	}
	if r := res.wait(t, enqueue(t, s, repo, c2, events.ClassFirst, "grep -qx 2 a").JobID); r.Status != events.StatusPassed {
		t.Fatalf("job 2 with the remote back: %+v", r)
	}
}

// TestLiveLogAndLease: output reaches the live log subject while the job still
// runs, and the runner's lease names the job; on a clean stop the lease is gone.
func TestLiveLogAndLease(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("one", map[string]string{"a": "1"})
	var mu sync.Mutex
	var live strings.Builder
	sub, err := s.NC.Subscribe(events.SubjectLogs+".>", func(m *nats.Msg) {
		ch, err := events.DecodeAs[events.LogChunk](m.Data)
		if err != nil {
			return
		}
		mu.Lock()
		live.WriteString(ch.Data)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	s.NC.Flush()
	r, stop := startRunner(t, s, func(c *Config) { c.ID = "box.1" })
	flag := filepath.Join(t.TempDir(), "go")
	j := enqueue(t, s, repo, c, events.ClassFirst, fmt.Sprintf("echo live-line; while [ ! -f %s ]; do sleep 0.02; done", flag))
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if !strings.Contains(live.String(), "live-line\n") {
			return fmt.Errorf("live log so far: %q", live.String())
		}
		return nil
	})
	kv, err := s.JS.KeyValue(context.Background(), events.BucketRunners)
	if err != nil {
		t.Fatal(err)
	}
	key := events.LeaseKey(r.id)
	if r.id != "box-1" {
		t.Fatalf("runner key id %q, want the id made safe as a KV key", r.id)
	}
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		e, err := kv.Get(context.Background(), key)
		if err != nil {
			return err
		}
		var l events.Lease
		if err := json.Unmarshal(e.Value(), &l); err != nil {
			return err
		}
		if l.ID != "box.1" || l.Busy != 1 || len(l.Jobs) != 1 || l.Jobs[0].JobID != j.JobID || l.Jobs[0].Attempt != 1 || l.Arch != "amd64" {
			return fmt.Errorf("lease %+v", l)
		}
		return nil
	})
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if f := res.wait(t, j.JobID); f.Status != events.StatusPassed {
		t.Fatalf("job: %+v", f)
	}
	stop()
	if _, err := kv.Get(context.Background(), key); err == nil {
		t.Fatal("lease still there after a clean stop")
	}
}

// TestEscapedChildCannotHangTheJob: a grandchild that leaves the process group
// (setsid) and keeps the output open does not keep the job from finishing.
func TestEscapedChildCannotHangTheJob(t *testing.T) {
	if _, err := os.Stat("/usr/bin/setsid"); err != nil {
		t.Skip("no setsid")
	}
	old := drainWait
	drainWait = 100 * time.Millisecond
	t.Cleanup(func() { drainWait = old })
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("one", map[string]string{"a": "1"})
	startRunner(t, s, nil)
	pidFile := filepath.Join(t.TempDir(), "pid")
	j := enqueue(t, s, repo, c, events.ClassFirst, fmt.Sprintf("setsid sh -c 'echo $$ > %s; exec sleep 60' & echo started", pidFile))
	t.Cleanup(func() {
		b, _ := os.ReadFile(pidFile)
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	if r := res.wait(t, j.JobID); r.Status != events.StatusPassed {
		t.Fatalf("job: %+v", r)
	}
}

// TestDeletedConsumerIsCreatedAgain: an operator (or a broker set up anew) drops a
// job consumer while the runner runs; the runner creates it again and goes on.
func TestDeletedConsumerIsCreatedAgain(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("one", map[string]string{"a": "1"})
	startRunner(t, s, nil)
	if r := res.wait(t, enqueue(t, s, repo, c, events.ClassUser, "true").JobID); r.Status != events.StatusPassed {
		t.Fatalf("job 1: %+v", r)
	}
	name := events.JobConsumerName("default", "amd64", events.ClassUser)
	if err := s.JS.DeleteConsumer(context.Background(), events.StreamJobs, name); err != nil {
		t.Fatal(err)
	}
	if r := res.wait(t, enqueue(t, s, repo, c, events.ClassUser, "true").JobID); r.Status != events.StatusPassed {
		t.Fatalf("job after the consumer was deleted: %+v", r)
	}
}

// TestConcurrentFetchesAndCheckouts: slots check out and fetch one repository at
// the same time (new commits keep arriving); every job sees its own commit.
func TestConcurrentFetchesAndCheckouts(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	startRunner(t, s, func(c *Config) { c.Slots = 3 })
	var jobs []*events.JobQueued
	for i := range 12 {
		c := repo.Commit("c", map[string]string{"a": strconv.Itoa(i) + "\n", fmt.Sprintf("d%d/f", i): "x"})
		jobs = append(jobs, enqueue(t, s, repo, c, events.ClassFirst,
			fmt.Sprintf("grep -qx %d a", i), fmt.Sprintf("test $(ls -d d* | wc -l) -eq %d", i+1), "touch junk"))
	}
	for _, j := range jobs {
		if r := res.wait(t, j.JobID); r.Status != events.StatusPassed {
			t.Fatalf("job %s: %+v\n%s", j.Job, r, readLog(t, s, r.Log))
		}
	}
}
