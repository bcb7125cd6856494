package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

// cutProxy is a TCP proxy to the broker whose connections the test can cut,
// as a network drop would: the client sees its connection close and
// reconnects through the proxy. New connections wait hold before they reach
// the broker (a slow reconnect).
type cutProxy struct {
	ln    net.Listener
	to    string
	mu    sync.Mutex
	conns []net.Conn
	hold  atomic.Int64 // ns
}

func newCutProxy(t testing.TB, to string) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, to: to}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p
}

func (p *cutProxy) serve(c net.Conn) {
	time.Sleep(time.Duration(p.hold.Load()))
	up, err := net.Dial("tcp", p.to)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, c, up)
	p.mu.Unlock()
	go func() { _, _ = io.Copy(up, c); up.Close() }()
	_, _ = io.Copy(c, up)
	c.Close()
}

// cut closes every proxied connection.
func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *cutProxy) url() string { return "nats://" + p.ln.Addr().String() }

// fakeRunner is the part of a runner the reaper sees: a connection answering
// on its alive subject, and a lease naming one job.
type fakeRunner struct {
	nc       *nats.Conn
	answered atomic.Int64
	rev      uint64
}

func startFakeRunner(t testing.TB, s *brokertest.Server, url, id, inc string, job events.LeasedJob) *fakeRunner {
	t.Helper()
	nc, _, err := events.Connect(url, events.ConnectOptions{Name: "runner " + id, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	f := &fakeRunner{nc: nc.Conn}
	if _, err := nc.Subscribe(events.AliveSubject(id, inc), func(m *nats.Msg) { f.answered.Add(1); _ = m.Respond(nil) }); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	kv, err := s.JS.KeyValue(context.Background(), events.BucketRunners)
	if err != nil {
		t.Fatal(err)
	}
	lease, _ := json.Marshal(events.Lease{ID: id, Arch: "amd64", Pool: "default", Incarnation: inc, Jobs: []events.LeasedJob{job}})
	if f.rev, err = kv.Put(context.Background(), events.LeaseKey(id), lease); err != nil {
		t.Fatal(err)
	}
	return f
}

func claimOf(t testing.TB, s *brokertest.Server, key string) string {
	kv, err := s.JS.KeyValue(context.Background(), events.BucketReaped)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(context.Background(), key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return ""
	} else if err != nil {
		t.Fatal(err)
	}
	return string(e.Value())
}

// TestReaperHandsBackTheJobsOfAClosedConnection: a runner's connection closes
// (as with kill -9) while its lease is still valid; the reaper hands its job
// back through the disconnect path, and ends the lease so that the runner,
// were it alive after all, would find out at its next renewal.
func TestReaperHandsBackTheJobsOfAClosedConnection(t *testing.T) {
	s := brokertest.Run(t)
	runReaper(t, s)
	j, c := queueJob(t, s)
	m := fetchOne(t, c)
	r := startFakeRunner(t, s, s.URL, "gone", "inc1", events.LeasedJob{JobID: j.JobID, Attempt: 1, Reply: m.Reply()})
	brokertest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if r.answered.Load() == 0 {
			return fmt.Errorf("not probed yet")
		}
		return nil
	})
	r.nc.Close()
	m2 := fetchOne(t, c)
	if md, _ := m2.Metadata(); md.NumDelivered != 2 {
		t.Fatalf("redelivery number %d, want 2", md.NumDelivered)
	}
	if by := claimOf(t, s, events.ReapKey("gone", j.JobID, 1)); by != events.ReapedByDisconnect {
		t.Fatalf("handed back by %s, want %s", by, events.ReapedByDisconnect)
	}
	kv, _ := s.JS.KeyValue(context.Background(), events.BucketRunners)
	if _, err := kv.Get(context.Background(), events.LeaseKey("gone")); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("lease of the gone runner: %v, want it deleted", err)
	}
	_ = m2.DoubleAck(context.Background())
}

// TestReaperKeepsTheJobsOfARunnerThatReconnects: a runner's connection drops
// and comes back after a pause shorter than ProbeConfirm (the probes meanwhile
// find no responders); its job stays with it: no claim, no redelivery, and the
// lease untouched.
func TestReaperKeepsTheJobsOfARunnerThatReconnects(t *testing.T) {
	s := brokertest.Run(t)
	runReaper(t, s)
	j, c := queueJob(t, s)
	m := fetchOne(t, c)
	p := newCutProxy(t, s.URL[len("nats://"):])
	r := startFakeRunner(t, s, p.url(), "flaky", "inc1", events.LeasedJob{JobID: j.JobID, Attempt: 1, Reply: m.Reply()})
	waitAnswers := func(n int64) {
		t.Helper()
		target := r.answered.Load() + n
		brokertest.CheckFor(t, 20*time.Second, 5*time.Millisecond, func() error {
			if r.answered.Load() < target {
				return fmt.Errorf("%d probes answered, waiting for %d", r.answered.Load(), target)
			}
			return nil
		})
	}
	waitAnswers(1)
	for range 3 {
		// A third of the confirm window without a connection: probes in the
		// gap find no responders, but not for long enough.
		p.hold.Store(int64(events.ProbeConfirm / 3))
		p.cut()
		// Answers across more than a confirm window after it came back.
		waitAnswers(int64(2*events.ProbeConfirm/events.ProbeEvery) + 1)
	}
	if by := claimOf(t, s, events.ReapKey("flaky", j.JobID, 1)); by != "" {
		t.Fatalf("the job of a runner that reconnected was handed back (by %s)", by)
	}
	kv, _ := s.JS.KeyValue(context.Background(), events.BucketRunners)
	if e, err := kv.Get(context.Background(), events.LeaseKey("flaky")); err != nil || e.Revision() != r.rev {
		t.Fatalf("lease of the reconnected runner: %v, want it as written", err)
	}
	if b, _ := c.FetchNoWait(1); b != nil {
		for m := range b.Messages() {
			t.Fatalf("job redelivered (%s) while its runner holds it", m.Subject())
		}
	}
	if err := m.DoubleAck(context.Background()); err != nil {
		t.Fatalf("the runner could not ack its job: %v", err)
	}
}

// BenchmarkRunnerReconnect measures what ProbeConfirm must cover: from a cut
// of a runner's connection to its alive subject answering again (nats.go
// reconnects at once, then resubscribes), on loopback.
//
//	go test -run '^$' -bench RunnerReconnect -benchtime 20x ./dispatcher
func BenchmarkRunnerReconnect(b *testing.B) {
	s := brokertest.Run(b)
	p := newCutProxy(b, s.URL[len("nats://"):])
	r := startFakeRunner(b, s, p.url(), "r", "inc", events.LeasedJob{})
	subj := events.AliveSubject("r", "inc")
	var ds []time.Duration
	for range b.N {
		time.Sleep(300 * time.Millisecond) // nats.go waits ReconnectWait between attempts at one server
		before := r.nc.Stats().Reconnects
		start := time.Now()
		p.cut()
		for {
			if r.nc.Stats().Reconnects > before {
				if _, err := s.NC.Request(subj, nil, time.Second); err == nil {
					break
				}
			}
			time.Sleep(time.Millisecond)
		}
		ds = append(ds, time.Since(start))
	}
	slices.Sort(ds)
	b.ReportMetric(float64(ds[len(ds)/2].Microseconds())/1000, "p50_ms")
	b.ReportMetric(float64(ds[len(ds)-1].Microseconds())/1000, "max_ms")
}
