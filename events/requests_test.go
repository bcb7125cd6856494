package events_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

// answer serves subject with a TriggerReply of reply, or stays silent when
// reply is nil.
func answer(t *testing.T, nc *nats.Conn, subject string, reply *events.TriggerReply) {
	t.Helper()
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		if reply == nil {
			return
		}
		data, err := events.Encode(reply)
		if err == nil {
			err = m.Respond(data)
		}
		if err != nil {
			t.Error(err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// TestRequestClientsErrors: each client says who is missing, passes a
// refusal on as the service gave it, and hands back an answer.
func TestRequestClientsErrors(t *testing.T) {
	s := brokertest.Run(t)
	ctx := context.Background()
	var re *events.RequestError

	_, err := events.RequestTrigger(ctx, s.NC, &events.TriggerRequest{Repo: "nobody", Branch: "main"})
	if !errors.Is(err, events.ErrNoObserver) || !errors.As(err, &re) || re.Op != "trigger" || err.Error() != `no observer watches a repo named "nobody"` {
		t.Fatalf("trigger without observers: %v", err)
	}
	_, err = events.RequestRecheck(ctx, s.NC, &events.RecheckRequest{Repo: "nobody", Branch: "main"})
	if !errors.Is(err, events.ErrNoDispatcher) || errors.Is(err, events.ErrNoObserver) {
		t.Fatalf("recheck without dispatchers: %v", err)
	}
	if err := events.Poke(ctx, s.NC, "nobody"); !errors.Is(err, events.ErrNoObserver) || !errors.As(err, &re) || re.Op != "poke" {
		t.Fatalf("poke without observers: %v", err)
	}

	answer(t, s.NC, events.TriggerSubject("r"), &events.TriggerReply{Error: `no branch "nope"`})
	_, err = events.RequestTrigger(ctx, s.NC, &events.TriggerRequest{Repo: "r", Branch: "nope"})
	if !errors.Is(err, events.ErrRefused) || err.Error() != `no branch "nope"` {
		t.Fatalf("refused trigger: %v", err)
	}
	answer(t, s.NC, events.RecheckSubject("r"), &events.TriggerReply{Commit: "c0ffee", TriggerID: "t1"})
	reply, err := events.RequestRecheck(ctx, s.NC, &events.RecheckRequest{Repo: "r", Branch: "main"})
	if err != nil || reply.Commit != "c0ffee" || reply.TriggerID != "t1" {
		t.Fatalf("recheck: %+v, %v", reply, err)
	}
	answer(t, s.NC, events.PokeSubject("r"), &events.TriggerReply{})
	if err := events.Poke(ctx, s.NC, "r"); err != nil {
		t.Fatalf("poke: %v", err)
	}

	answer(t, s.NC, events.TriggerSubject("silent"), nil)
	tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	_, err = events.RequestTrigger(tctx, s.NC, &events.TriggerRequest{Repo: "silent", Branch: "main"})
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, events.ErrNoObserver) || errors.Is(err, events.ErrRefused) {
		t.Fatalf("trigger nobody answers: %v", err)
	}
}
