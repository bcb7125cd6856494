package runner

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

// TestBrokerOutageDuringAJob: the server goes away while a job runs. The runner
// does not exit, finishes the job, keeps the result on disk, and publishes it
// (and acks the job) when the server is back.
func TestBrokerOutageDuringAJob(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	s := brokertest.RunAt(t, dir, addr)
	repo := newGitRepo(t)
	c := repo.Commit("change", map[string]string{"a": "a"})

	nc, js, err := events.Connect(s.URL, events.ConnectOptions{Name: "runner", Wait: true, Log: brokertest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	cfg := DefaultConfig()
	cfg.Arch, cfg.WorkDir, cfg.IdlePoll = "amd64", t.TempDir(), 50*time.Millisecond
	cfg.Exec = ExecHost // the step signals through files outside its workspace
	r, err := New(cfg, nc.Conn, js, brokertest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	flag := t.TempDir()
	j := enqueue(t, s, repo, c, events.ClassFirst, fmt.Sprintf("touch %s/started; while [ ! -f %s/go ]; do sleep 0.05; done; echo finished", flag, flag))
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		_, err := os.Stat(filepath.Join(flag, "started"))
		return err
	})
	s.Stop()
	os.WriteFile(filepath.Join(flag, "go"), nil, 0o644)
	// The job ends while the broker is away: its result waits in the outbox.
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		files, _ := filepath.Glob(filepath.Join(cfg.WorkDir, "outbox", j.JobID+"-*.json"))
		if len(files) != 1 {
			return fmt.Errorf("%d outbox entries", len(files))
		}
		return nil
	})
	// JETCI_OUTAGE lengthens the outage, for BENCHMARKS.md (e.g. 10s).
	if d, err := time.ParseDuration(os.Getenv("JETCI_OUTAGE")); err == nil {
		time.Sleep(d)
	}
	select {
	case err := <-done:
		t.Fatalf("runner exited while the broker was away: %v", err)
	default:
	}
	s2 := brokertest.RunAt(t, dir, addr)
	back := time.Now()
	var logName string
	stream, err := s2.JS.Stream(context.Background(), events.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	brokertest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		m, err := stream.GetLastMsgForSubject(context.Background(), events.ResultSubject("proj", "main", events.KindFinished))
		if err != nil {
			return err
		}
		f, err := events.DecodeAs[events.JobFinished](m.Data)
		if err != nil {
			return err
		}
		if f.JobID != j.JobID || f.Status != events.StatusPassed {
			return fmt.Errorf("result %+v", f)
		}
		logName = f.Log
		return nil
	})
	t.Logf("result recorded %v after the broker came back", time.Since(back).Round(time.Millisecond))
	// The log could not be stored while the broker was away: it waited in the
	// spool, the result named it, and it is stored now, whole.
	if logName == "" {
		t.Fatal("the result names no log")
	}
	logs, err := s2.JS.ObjectStore(context.Background(), events.BucketLogs)
	if err != nil {
		t.Fatal(err)
	}
	brokertest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		b, err := logs.GetBytes(context.Background(), logName)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), "finished") {
			return fmt.Errorf("stored log %q lacks the job's output", b)
		}
		if files, _ := os.ReadDir(filepath.Join(cfg.WorkDir, "spool")); len(files) != 0 {
			return fmt.Errorf("%d files left in the spool", len(files))
		}
		return nil
	})
	// The job was acked: the work queue is empty, and the outbox too.
	brokertest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		st, err := s2.JS.Stream(context.Background(), events.StreamJobs)
		if err != nil {
			return err
		}
		if n := st.CachedInfo().State.Msgs; n != 0 {
			return fmt.Errorf("%d jobs still queued", n)
		}
		if files, _ := filepath.Glob(filepath.Join(cfg.WorkDir, "outbox", "*.json")); len(files) != 0 {
			return fmt.Errorf("outbox not empty: %v", files)
		}
		return nil
	})
}
