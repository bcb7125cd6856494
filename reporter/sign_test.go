package reporter

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/jetci/jetci/events"
)

// testSigner publishes result events as their real producers would: queued
// events with the service key, a runner's started and finished events with
// that runner's identity (registered on first use), with a run id and a
// delivery token made up from the queue sequence and delivery when unset.
type testSigner struct {
	mu      sync.Mutex
	js      jetstream.JetStream
	runners map[string]jetstream.JetStream
	svc     jetstream.JetStream
}

func newTestSigner(js jetstream.JetStream) *testSigner {
	return &testSigner{js: js, runners: map[string]jetstream.JetStream{}, svc: events.SigningJetStream(js, events.LazyServiceSigner(js))}
}

func (s *testSigner) runner(ctx context.Context, t testing.TB, id string) jetstream.JetStream {
	s.mu.Lock()
	defer s.mu.Unlock()
	if js, ok := s.runners[id]; ok {
		return js
	}
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	name := events.IdentityName(id)
	if err := events.RegisterRunner(ctx, s.js, name, kp); err != nil {
		t.Fatal(err)
	}
	js := events.SigningJetStream(s.js, events.RunnerSigner(kp, name))
	s.runners[id] = js
	return js
}

func (s *testSigner) publish(ctx context.Context, t testing.TB, subject string, ev any) {
	t.Helper()
	js := s.svc
	switch e := ev.(type) {
	case *events.JobStarted:
		if e.Run == "" {
			e.Run = fmt.Sprintf("run%d-%d-%s", e.QueueSeq, e.Attempt, e.Runner)
		}
		if e.Token == "" {
			e.Token = fmt.Sprintf("%d.%d", e.QueueSeq, e.Attempt)
		}
		js = s.runner(ctx, t, e.Runner)
	case *events.JobFinished:
		if e.Attempt > 0 && e.Runner != "" {
			if e.Run == "" {
				e.Run = fmt.Sprintf("run%d-%d-%s", e.QueueSeq, e.Attempt, e.Runner)
			}
			if e.Token == "" {
				e.Token = fmt.Sprintf("%d.%d", e.QueueSeq, e.Attempt)
			}
			js = s.runner(ctx, t, e.Runner)
		}
	}
	data, err := events.Encode(ev)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, subject, data); err != nil {
		t.Fatal(err)
	}
}
