package runner

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

func TestMatchGlob(t *testing.T) {
	for _, tt := range []struct {
		pat, name string
		want      bool
	}{
		{"out/*.txt", "out/a.txt", true}, {"out/*.txt", "out/sub/a.txt", false}, {"dist/**", "dist/x/y.bin", true},
		{"**/*.xml", "report.xml", true}, {"**/*.xml", "a/b/c/report.xml", true}, {"a/**/b", "a/b", true},
		{"a/**/b", "a/x/y/b", true}, {"a/**/b", "a/x/y/c", false}, {"*.log", "x.log", true}, {"*.log", "d/x.log", false},
	} {
		if got := matchGlob(tt.pat, tt.name); got != tt.want {
			t.Errorf("matchGlob(%q, %q) = %v", tt.pat, tt.name, got)
		}
	}
	if !matches("dist", "dist/a/b.bin") || matches("dis", "dist/a") {
		t.Error("a folder pattern must match the files under it, and only whole segments")
	}
	for _, bad := range []string{"../x", "a/../../x", "/etc/passwd", "", "[", "a/["} {
		if checkPattern(bad) == nil {
			t.Errorf("checkPattern(%q) = nil", bad)
		}
	}
}

func readObject(t *testing.T, s *brokertest.Server, bucket, name string) string {
	t.Helper()
	store, err := s.JS.ObjectStore(context.Background(), bucket)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := store.Get(context.Background(), name)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	defer obj.Close()
	b, _ := io.ReadAll(obj)
	return string(b)
}

func TestArtifactsAreStoredWithinLimits(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("change", map[string]string{"src.txt": "source\n"})
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("do not upload"), 0o644)
	startRunner(t, s, func(c *Config) { c.ArtifactLimit = 1000 })

	job := enqueueWith(t, s, repo, c, []string{"out/*.txt", "dist/**", "../x", "/etc/passwd", "nothing/*", "big.bin"},
		"mkdir -p out dist/x && echo aaa > out/a.txt && echo log > out/b.log && echo bin > dist/x/y.bin",
		"ln -s "+secret+" out/evil.txt && ln -s ../src.txt out/inside.txt",
		"head -c 2000 /dev/zero > big.bin", "exit 1")
	r := res.wait(t, job.JobID)
	if r.Status != events.StatusFailed {
		t.Fatalf("job %+v", r)
	}
	var got []string
	for _, a := range r.Artifacts {
		got = append(got, a.Path+":"+strconv.FormatInt(a.Size, 10))
		if a.Object != events.ArtifactObject(job.JobID, r.QueueSeq, r.Attempt, a.Path) {
			t.Errorf("object name %q", a.Object)
		}
	}
	if strings.Join(got, " ") != "dist/x/y.bin:4 out/a.txt:4 out/inside.txt:7" {
		t.Fatalf("artifacts %v; log:\n%s", got, readLog(t, s, r.Log))
	}
	if body := readObject(t, s, events.BucketArtifacts, r.Artifacts[1].Object); body != "aaa\n" {
		t.Errorf("out/a.txt = %q", body)
	}
	log := readLog(t, s, r.Log)
	for _, want := range []string{`"../x" leaves the workspace`, `"/etc/passwd" is absolute`, `pattern "nothing/*" matched no file`,
		"out/evil.txt: it points outside the workspace", "big.bin (2000 bytes) left out: over the limit of 1000 bytes", "3 file(s), 15 bytes stored"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
}

func enqueueWith(t *testing.T, s *brokertest.Server, repo *gitRepo, commit string, artifacts []string, steps ...string) *events.JobQueued {
	t.Helper()
	return publishJob(t, s, commit, &events.JobQueued{RepoURL: repo.Dir, Steps: steps, TimeoutMs: 60000, Artifacts: artifacts}, nil)
}

func TestCancelARunningJob(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("change", map[string]string{"a.txt": "a\n"})
	startRunner(t, s, nil)
	pidFile := filepath.Join(t.TempDir(), "pid")
	job := enqueue(t, s, repo, c, events.ClassFirst, "sh -c 'echo $$ > "+pidFile+"; exec sleep 30' & wait")
	var seq uint64
	var pid int
	brokertest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		res.mu.Lock()
		for _, st := range res.started {
			if st.JobID == job.JobID {
				seq = st.QueueSeq
			}
		}
		res.mu.Unlock()
		b, err := os.ReadFile(pidFile)
		if err != nil || seq == 0 {
			return os.ErrNotExist
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err
	})
	// A request for another run of the job changes nothing.
	publishCancel(t, s, &events.CancelRequest{JobID: job.JobID, QueueSeq: seq + 100, By: "someone"})
	publishCancel(t, s, &events.CancelRequest{JobID: job.JobID, QueueSeq: seq, By: "web"})
	r := res.wait(t, job.JobID)
	if r.Status != events.StatusCancelled || r.Error != "cancelled by web" || r.ExitCode != -1 {
		t.Fatalf("result %+v", r)
	}
	// The log of what ran before the cancel is kept.
	if r.Log == "" || r.LogDigest == "" || r.LogBytes == 0 {
		t.Fatalf("a cancelled job's result has no log: %+v", r)
	}
	store, err := s.JS.ObjectStore(context.Background(), events.BucketLogs)
	if err != nil {
		t.Fatal(err)
	}
	text, err := store.GetString(context.Background(), r.Log)
	// Its header names the run and delivery it knows, not an attempt
	// number the record counts otherwise (issue 18).
	if err != nil || !strings.Contains(text, "exec sleep 30") || !strings.Contains(text, "cancelled by web") ||
		!strings.Contains(text, fmt.Sprintf(" run %d delivery 1 on ", seq)) || strings.Contains(text, " attempt ") {
		t.Fatalf("stored log %q, %v", text, err)
	}
	brokertest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if syscall.Kill(pid, 0) == nil {
			return os.ErrExist // the step's process is still alive
		}
		return nil
	})
}

func publishCancel(t *testing.T, s *brokertest.Server, req *events.CancelRequest) {
	t.Helper()
	data, _ := events.Encode(req)
	if err := s.NC.Publish(events.CancelSubject(req.JobID), data); err != nil {
		t.Fatal(err)
	}
}

func TestACancelledWaitingJobNeverRuns(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("change", map[string]string{"a.txt": "a\n"})
	marker := filepath.Join(t.TempDir(), "ran")
	j := &events.JobQueued{JobRef: events.JobRef{Repo: "proj", Branch: "main", Commit: c, Job: "late", Arch: "amd64"},
		RepoURL: repo.Dir, Pool: "default", Class: events.ClassFirst, Steps: []string{"touch " + marker}}
	j.JobID = events.JobID(j.Repo, j.Branch, j.Commit, j.Job, j.Arch)
	data, _ := events.Encode(j)
	ack, err := s.JS.Publish(context.Background(), events.JobSubject("default", "amd64", events.ClassFirst, "proj", "main"), data)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := s.JS.KeyValue(context.Background(), events.BucketCancel)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := json.Marshal(&events.CancelRequest{Type: events.TypeCancel, JobID: j.JobID, QueueSeq: ack.Sequence, By: "api"})
	if _, err := kv.Put(context.Background(), j.JobID, req); err != nil {
		t.Fatal(err)
	}
	startRunner(t, s, nil)
	r := res.wait(t, j.JobID)
	if r.Status != events.StatusCancelled || !strings.Contains(r.Error, "cancelled by api before it started") {
		t.Fatalf("result %+v", r)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the cancelled job ran its step")
	}
}
