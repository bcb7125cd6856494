package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

// TestPoolFollowsTheLoad: with no runner, a burst of jobs makes jetci pool
// start runner processes (up to --max); when the queue is empty they are
// drained down to --min, and every job ran once.
func TestPoolFollowsTheLoad(t *testing.T) {
	bin := jetciBinary(t)
	repo := newGitRepo(t)
	var pipeline strings.Builder
	pipeline.WriteString("jobs:\n")
	for i := range 9 {
		fmt.Fprintf(&pipeline, "  j%d:\n    steps: [\"sleep 1\"]\n", i)
	}
	url, _ := startUpWith(t, t.TempDir(), []string{"--runners", "0"}, repo.Dir)
	nc, js, err := events.Connect(url, events.ConnectOptions{Name: "test", Wait: true, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	leases := func() int {
		kv, err := js.KeyValue(context.Background(), events.BucketRunners)
		if err != nil {
			return -1
		}
		keys, err := kv.Keys(context.Background())
		if err != nil {
			return 0 // no keys
		}
		return len(keys)
	}

	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- (&Main{Stdout: logs, Stderr: logs}).Run(ctx, []string{"pool", "--nats", url, "--min", "0", "--max", "3",
			"--idle", "1s", "--interval", "100ms", "--work", t.TempDir(), "--runner-bin", bin, "--log-format", "json"})
	}()
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("jetci pool exited %d", code)
		}
		if t.Failed() {
			t.Logf("pool log:\n%s", logs.String())
		}
	}()

	c := repo.Commit("burst", map[string]string{".jetci.yml": pipeline.String()})
	most := 0
	brokertest.CheckFor(t, 90*time.Second, 50*time.Millisecond, func() error {
		most = max(most, leases())
		recs, err := resultsJSON(t, url, "--commit", c)
		if err != nil {
			return err
		}
		if len(recs) != 9 {
			return fmt.Errorf("%d of 9 jobs done; %d runners", len(recs), leases())
		}
		return nil
	})
	if most < 2 || most > 3 {
		t.Errorf("at most %d runners at once; want the pool to grow to 2-3 (max 3)", most)
	}
	recs, _ := resultsJSON(t, url, "--commit", c)
	for _, r := range recs {
		if r.Status != "passed" || r.Attempt != 1 {
			t.Errorf("job %s: %s attempt %d", r.Job, r.Status, r.Attempt)
		}
	}
	// Idle: back to --min (0).
	brokertest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		if n := leases(); n != 0 {
			return fmt.Errorf("%d runners still up", n)
		}
		return nil
	})
}
