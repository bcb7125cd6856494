package runner

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/dispatcher"
	"github.com/jetci/jetci/events"
)

// cutProxy forwards TCP to a server until cut: then it drops every
// connection and refuses new ones until restored.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); p.setCut(true) })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.cut {
				p.mu.Unlock()
				c.Close()
				continue
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(s, c); s.Close() }()
			go func() { _, _ = io.Copy(c, s); c.Close() }()
		}
	}()
	return p
}

func (p *cutProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for _, c := range p.conns {
			c.Close()
		}
		p.conns = nil
	}
}

// TestCutOffRunnerKeepsItsJob (issue 15.3): a runner cut off from the broker
// for 15 s while its job runs loses its lease, and the reaper hands the job
// back; no other runner started it meanwhile, so when the runner is back it
// takes the job back: the job runs once, its result is published and the
// job acked, and it is not delivered again.
func TestCutOffRunnerKeepsItsJob(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out a 15 s cut")
	}
	s := brokertest.Run(t)
	proxy := newCutProxy(t, strings.TrimPrefix(s.URL, "nats://"))
	repo := newGitRepo(t)
	c := repo.Commit("change", map[string]string{"a": "a"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reaper := dispatcher.NewReaper(s.NC, s.JS, nil, brokertest.Logger(t))
	go func() { _ = reaper.Run(ctx) }()

	nc, js, err := events.Connect("nats://"+proxy.ln.Addr().String(), events.ConnectOptions{Name: "runner", Wait: true, Log: brokertest.Logger(t),
		Extra: []nats.Option{nats.ReconnectWait(100 * time.Millisecond), nats.MaxReconnects(-1)}})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	cfg := DefaultConfig()
	cfg.ID, cfg.Arch, cfg.WorkDir, cfg.IdlePoll, cfg.Slots = "cut", "amd64", t.TempDir(), 50*time.Millisecond, 2
	cfg.Exec = ExecHost // the step signals through files outside its workspace
	r, err := New(cfg, nc.Conn, js, brokertest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	flag := t.TempDir()
	runs := filepath.Join(flag, "runs")
	enqueueMod(t, s, repo, c, func(j *events.JobQueued) { j.TimeoutMs = 120_000 },
		fmt.Sprintf("echo run >> %s; while [ ! -f %s/go ]; do sleep 0.05; done; echo finished", runs, flag))
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		_, err := os.Stat(runs)
		return err
	})
	proxy.setCut(true)
	// The lease lapses and the reaper hands the job back.
	reaped, _ := s.JS.KeyValue(ctx, events.BucketReaped)
	brokertest.CheckFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		keys, err := reaped.Keys(ctx)
		if err != nil || len(keys) == 0 {
			return fmt.Errorf("not handed back yet (%v)", err)
		}
		return nil
	})
	// 15 s cut off in all.
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	proxy.setCut(false)
	brokertest.CheckFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		if !nc.IsConnected() {
			return fmt.Errorf("not reconnected")
		}
		return nil
	})
	// Let the runner find its lease lapsed (a renewal a second) before the
	// job ends, and give its free slot time to pull a redelivery, if any.
	time.Sleep(3 * time.Second)
	os.WriteFile(filepath.Join(flag, "go"), nil, 0o644)
	results, _ := s.JS.Stream(ctx, events.StreamResults)
	jobs, _ := s.JS.Stream(ctx, events.StreamJobs)
	brokertest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		m, err := results.GetLastMsgForSubject(ctx, events.ResultSubject("proj", "main", events.KindFinished))
		if err != nil {
			return err
		}
		if f, _ := events.DecodeAs[events.JobFinished](m.Data); f == nil || f.Status != events.StatusPassed || f.Attempt != 1 {
			return fmt.Errorf("result %s", m.Data)
		}
		info, err := jobs.Info(ctx)
		if err != nil {
			return err
		}
		if info.State.Msgs != 0 {
			return fmt.Errorf("%d jobs still in the queue", info.State.Msgs)
		}
		return nil
	})
	if b, _ := os.ReadFile(runs); strings.Count(string(b), "run") != 1 {
		t.Fatalf("the job ran %d times", strings.Count(string(b), "run"))
	}
}
