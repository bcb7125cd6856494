package dispatcher

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

func runReaper(t *testing.T, s *brokertest.Server) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- NewReaper(s.NC, s.JS, nil, brokertest.Logger(t)).Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func queueJob(t *testing.T, s *brokertest.Server) (*events.JobQueued, jetstream.Consumer) {
	ctx := context.Background()
	cons, err := events.EnsureJobConsumers(ctx, s.JS, "default", "amd64")
	if err != nil {
		t.Fatal(err)
	}
	j := &events.JobQueued{JobRef: events.JobRef{Repo: "proj", Branch: "main", Commit: "c0ffee", Job: "test", Arch: "amd64"}, Pool: "default", Class: events.ClassFirst}
	j.JobID = events.JobID(j.Repo, j.Branch, j.Commit, j.Job, j.Arch)
	data, _ := events.Encode(j)
	if _, err := s.JS.Publish(ctx, events.JobSubject("default", "amd64", events.ClassFirst, "proj", "main"), data); err != nil {
		t.Fatal(err)
	}
	return j, cons[slices.Index(events.Classes, events.ClassFirst)]
}

func fetchOne(t *testing.T, c jetstream.Consumer) jetstream.Msg {
	t.Helper()
	var got jetstream.Msg
	brokertest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		b, err := c.FetchNoWait(1)
		if err != nil {
			return err
		}
		for m := range b.Messages() {
			got = m
			return nil
		}
		return fmt.Errorf("no job delivered")
	})
	return got
}

func finishedEvents(t *testing.T, s *brokertest.Server) chan *events.JobFinished {
	ch := make(chan *events.JobFinished, 16)
	sub, err := s.NC.Subscribe("jetci.result.>", func(m *nats.Msg) {
		if f, err := events.DecodeAs[events.JobFinished](m.Data); err == nil {
			ch <- f
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	s.NC.Flush()
	t.Cleanup(func() { sub.Unsubscribe() })
	return ch
}

// TestReaperHandsBackTheJobsOfAnExpiredLease: a runner holds a job and stops
// renewing its lease; when the lease expires, the job is redelivered at once.
func TestReaperHandsBackTheJobsOfAnExpiredLease(t *testing.T) {
	s := brokertest.Run(t)
	runReaper(t, s)
	_, c := queueJob(t, s)
	m := fetchOne(t, c)
	kv, _ := s.JS.KeyValue(context.Background(), events.BucketRunners)
	lease, _ := json.Marshal(events.Lease{ID: "dead", Arch: "amd64", Pool: "default", Jobs: []events.LeasedJob{{JobID: "x", Attempt: 1, Reply: m.Reply()}}})
	if _, err := kv.Put(context.Background(), events.LeaseKey("dead"), lease); err != nil {
		t.Fatal(err)
	}
	// No renewal: after LeaseTTL the job comes back, long before the 30 s ack wait.
	start := time.Now()
	m2 := fetchOne(t, c)
	md, _ := m2.Metadata()
	if md.NumDelivered != 2 {
		t.Fatalf("redelivery number %d, want 2", md.NumDelivered)
	}
	if took := time.Since(start); took > events.JobAckWait/2 {
		t.Fatalf("redelivered after %v: the ack wait, not the lease, did it", took)
	}
	// A runner that stops cleanly deletes its lease: nothing is handed back.
	lease, _ = json.Marshal(events.Lease{ID: "clean", Jobs: []events.LeasedJob{{JobID: "y", Reply: m2.Reply()}}})
	kv.Put(context.Background(), events.LeaseKey("clean"), lease)
	kv.Delete(context.Background(), events.LeaseKey("clean"))
	m2.DoubleAck(context.Background())
}

// TestJobThatKeepsFailingToFinishIsRecordedAndRemoved: a job delivered
// JobMaxDeliver times without an ack becomes an error result and leaves the queue.
func TestJobThatKeepsFailingToFinishIsRecordedAndRemoved(t *testing.T) {
	s := brokertest.Run(t)
	fin := finishedEvents(t, s)
	runReaper(t, s)
	j, c := queueJob(t, s)
	for range events.JobMaxDeliver {
		fetchOne(t, c).Nak()
	}
	// The server notices the limit when a runner next asks for work.
	deadline := time.After(10 * time.Second)
	for done := false; !done; {
		select {
		case f := <-fin:
			if f.JobID != j.JobID || f.Status != events.StatusError || !strings.Contains(f.Error, "gave up after 10 attempts") {
				t.Fatalf("result %+v", f)
			}
			done = true
		case <-time.After(50 * time.Millisecond):
			if b, err := c.FetchNoWait(1); err == nil {
				for m := range b.Messages() {
					t.Fatalf("job delivered past its limit: %v", m.Subject())
				}
			}
		case <-deadline:
			t.Fatal("no error result for a job that reached its delivery limit")
		}
	}
	brokertest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		st, err := s.JS.Stream(context.Background(), events.StreamJobs)
		if err != nil {
			return err
		}
		if n := st.CachedInfo().State.Msgs; n != 0 {
			return fmt.Errorf("%d messages still in the work queue", n)
		}
		return nil
	})
}
