package dispatcher

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/internal/parts"
	"github.com/jetci/jetci/metrics"
)

// TestDispatcherOwnsItsParts: Run starts the reaper, aging, the periodic
// check, the broken-build flow and the culprit search, and owns them. With
// the culprit search's bucket deleted, that part fails: the dispatcher goes on
// dispatching, /healthz answers 503 naming the part, and it is restarted until
// the bucket is back. When Run returns, none of its goroutines is left.
func TestDispatcherOwnsItsParts(t *testing.T) {
	old := parts.Backoff
	parts.Backoff.Min, parts.Backoff.Max = 20*time.Millisecond, 100*time.Millisecond
	t.Cleanup(func() { parts.Backoff = old })
	s := brokertest.Run(t)
	ctx := context.Background()
	if err := s.JS.DeleteKeyValue(ctx, events.BucketBisect); err != nil {
		t.Fatal(err)
	}
	m := metrics.New(nil)
	cfg := DefaultConfig()
	cfg.Arch, cfg.Metrics = []string{"amd64"}, m
	cfg.Bisect = []GateRule{{Repo: "proj"}}
	cfg.Gate = []GateRule{{Repo: "proj"}}
	cfg.AgeAfter, cfg.Periodic, cfg.PeriodicTick = time.Minute, "0 3 * * *", 50*time.Millisecond
	d, err := New(cfg, s.JS, brokertest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- d.Run(rctx) }()

	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if down := m.PartsHealth(); len(down) != 1 || !strings.Contains(down[0], "dispatcher/culprit search") {
			return fmt.Errorf("parts down: %q", down)
		}
		return nil
	})
	// Still dispatching: the commit consumer exists and the reaper runs.
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		_, err := s.JS.Consumer(ctx, events.StreamCommits, events.ConsumerDispatcher)
		return err
	})
	if err := events.DefaultSetup().Ensure(ctx, s.JS); err != nil { // the bucket is back
		t.Fatal(err)
	}
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if down := m.PartsHealth(); len(down) != 0 {
			return fmt.Errorf("parts down: %q", down)
		}
		return nil
	})
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	// Run waited for every part: no goroutine of the dispatcher is left.
	buf := make([]byte, 1<<20)
	stacks := string(buf[:runtime.Stack(buf, true)])
	for _, g := range strings.Split(stacks, "\n\n") {
		if strings.Contains(g, "jetci/dispatcher.(*") && !strings.Contains(g, "TestDispatcherOwnsItsParts") {
			t.Errorf("left running after Run:\n%s", g)
		}
	}
}
