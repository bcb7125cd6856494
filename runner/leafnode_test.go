package runner

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

// A runner in another region connects to a leaf node configured by the
// shipped nats-leaf.conf; the leaf has no JetStream and reaches jetci's
// streams on the hub over its leafnode connection. A job queued on the hub is
// fetched, run and acked by that runner, its log is stored, and the
// dispatcher's alive probe from the hub reaches it through the leaf.
func TestRunnerBehindALeafNode(t *testing.T) {
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	leafAddr := l.Addr().String()
	l.Close()
	hubConf := filepath.Join(dir, "hub.conf")
	conf := fmt.Sprintf("listen: 127.0.0.1:-1\njetstream { store_dir: %q, domain: hub }\nleafnodes { listen: %q }\n", filepath.Join(dir, "hub"), leafAddr)
	if err := os.WriteFile(hubConf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	hub := brokertest.RunConfig(t, hubConf, nil)
	hnc, hjs, err := events.Connect(hub.ClientURL(), events.ConnectOptions{Name: "hub-test", Log: brokertest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hnc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := events.DefaultSetup().Ensure(ctx, hjs); err != nil {
		t.Fatal(err)
	}

	t.Setenv("JETCI_HUB_LEAF_URL", fmt.Sprintf("nats-leaf://%s", leafAddr))
	leaf := brokertest.RunConfig(t, "../nats-leaf.conf", func(o *server.Options) { o.Port = -1 }) // a free port instead of 4222
	if leaf.JetStreamEnabled() {
		t.Fatal("the leaf node runs JetStream of its own; nats-leaf.conf means it to use the hub's")
	}
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if hub.NumLeafNodes() == 0 {
			return fmt.Errorf("the leaf has not connected to the hub")
		}
		return nil
	})

	lnc, ljs, err := events.Connect(leaf.ClientURL(), events.ConnectOptions{Name: "leaf-runner", Log: brokertest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lnc.Close)
	// The hub's interest in the JetStream API reaches the leaf just after
	// the leaf connects.
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		_, err := ljs.AccountInfo(ctx)
		return err
	})
	cfg := DefaultConfig()
	cfg.ID, cfg.Arch, cfg.WorkDir, cfg.IdlePoll, cfg.Slots, cfg.Exec = "region2-1", "amd64", t.TempDir(), 50*time.Millisecond, 1, ExecHost
	r, err := New(cfg, lnc.Conn, ljs, brokertest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	t.Cleanup(func() { stop(); <-done })

	repo := newGitRepo(t)
	commit := repo.Commit("c1", map[string]string{"a.txt": "a\n"})
	hs := &brokertest.Server{URL: hub.ClientURL(), NC: hnc.Conn, JS: hjs}
	res := watchResults(t, hs)
	j := publishJob(t, hs, commit, &events.JobQueued{RepoURL: repo.Dir, Class: events.ClassUser, Steps: []string{"echo far away"}, TimeoutMs: 20000}, nil)
	f := res.wait(t, j.JobID)
	if f.Status != events.StatusPassed || f.Runner != cfg.ID {
		t.Fatalf("result %+v, want passed on %s", f, cfg.ID)
	}
	if log := readLog(t, hs, f.Log); !strings.Contains(log, "far away") {
		t.Fatalf("log without the step's output: %q", log)
	}
	// Acked on the hub: the work queue is empty.
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		st, err := hjs.Stream(ctx, events.StreamJobs)
		if err != nil {
			return err
		}
		info, err := st.Info(ctx)
		if err != nil {
			return err
		}
		if info.State.Msgs != 0 {
			return fmt.Errorf("%d jobs left in the queue", info.State.Msgs)
		}
		return nil
	})
	// The lease is on the hub, and the alive probe from the hub's side
	// reaches the runner through the leaf.
	kv, err := hjs.KeyValue(ctx, events.BucketRunners)
	if err != nil {
		t.Fatal(err)
	}
	var lease events.Lease
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		e, err := kv.Get(ctx, events.LeaseKey(r.id))
		if err != nil {
			return err
		}
		return json.Unmarshal(e.Value(), &lease)
	})
	if _, err := hnc.Request(events.AliveSubject(r.id, lease.Incarnation), nil, 5*time.Second); err != nil {
		t.Fatalf("alive probe from the hub: %v", err)
	}
}
