package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/metrics"
)

// Reaper hands back the jobs of runners that died. Every live runner rewrites its
// lease in jetci-runners each second; when one stops, the bucket's TTL expires the
// lease with a marker, and the reaper NAKs the ack subject of each job the last
// lease named, so the job runs elsewhere within seconds instead of after the
// 30 s ack wait (which stays as the backstop). Several reapers may run: the one
// that claims a job's reap key hands it back. It also records jobs that
// reached their delivery limit (see deadLetters). Dispatcher.Run runs one
// among its parts, so a program that runs a dispatcher never starts its own.
type Reaper struct {
	nc  *nats.Conn
	js  jetstream.JetStream
	m   *metrics.Metrics
	log zerolog.Logger
}

// NewReaper returns a reaper; Run starts it. m may be nil.
func NewReaper(nc *nats.Conn, js jetstream.JetStream, m *metrics.Metrics, log zerolog.Logger) *Reaper {
	js = events.SigningJetStream(js, events.LazyServiceSigner(js)) // its "gave up" results are signed
	return &Reaper{nc: nc, js: js, m: m, log: log}
}

// Run watches the leases until ctx ends.
func (r *Reaper) Run(ctx context.Context) error {
	var kv jetstream.KeyValue
	if err := events.Retry(ctx, r.log, "open the runners bucket", 5*time.Second, func(ctx context.Context) (err error) {
		kv, err = r.js.KeyValue(ctx, events.BucketRunners)
		return err
	}); err != nil {
		return nil
	}
	dead := make(chan error, 1)
	go func() {
		err := r.deadLetters(ctx)
		if err != nil {
			r.log.Error().Err(err).Msg("dead letters stopped")
		}
		dead <- err
	}()
	defer func() { <-dead }()
	for ctx.Err() == nil {
		if err := r.watch(ctx, kv); err != nil && ctx.Err() == nil {
			r.log.Warn().Err(err).Msg("watching runner leases; starting again")
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	return nil
}

// tracked is what the reaper knows of one live runner.
type tracked struct {
	lease       events.Lease
	rev         uint64    // the lease entry's revision
	silentSince time.Time // when a probe first found no responders (since the last answer or lease write)
	probing     bool
}

// probeResult is the outcome of one request to a runner's alive subject.
type probeResult struct {
	id   string
	rev  uint64 // of the lease the probe was sent for
	sent time.Time
	gone bool // the server answered "no responders": the connection is closed
}

func (r *Reaper) watch(ctx context.Context, kv jetstream.KeyValue) error {
	w, err := kv.Watch(ctx, events.LeaseKey("*"))
	if err != nil {
		return err
	}
	defer w.Stop()
	last := map[string]*tracked{} // runner id -> its last lease
	tick := time.NewTicker(events.ProbeEvery)
	defer tick.Stop()
	probed := make(chan probeResult)
	for {
		var e jetstream.KeyValueEntry
		var ok bool
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			for id, t := range last {
				if len(t.lease.Jobs) > 0 && t.lease.Incarnation != "" && !t.probing {
					t.probing = true
					go r.probe(ctx, id, t.lease.Incarnation, t.rev, probed)
				}
			}
			continue
		case p := <-probed:
			if t := last[p.id]; t != nil && t.rev == p.rev {
				t.probing = false
				if r.disconnected(ctx, kv, t, p) {
					delete(last, p.id)
				}
			} else if t != nil {
				t.probing = false
			}
			continue
		case e, ok = <-w.Updates():
			if !ok {
				return errors.New("watcher closed")
			}
		}
		if e == nil {
			continue // the initial values are in
		}
		id := events.RunnerIDFromKey(e.Key())
		switch e.Operation() {
		case jetstream.KeyValuePut:
			var l events.Lease
			if json.Unmarshal(e.Value(), &l) == nil {
				// The same id from another process: the runner was restarted
				// at once (before its old lease could expire), so the old
				// process is dead and its jobs go back now, as for any dead
				// runner, rather than after the ack wait.
				if old, known := last[id]; known && old.lease.Incarnation != "" && l.Incarnation != old.lease.Incarnation {
					r.log.Info().Str("runner", l.ID).Msg("runner restarted with the same id: its old process is gone")
					r.reap(ctx, id, old.lease, "restarted", events.ReapedByLease)
				}
				// A lease write shows the runner alive: probing starts over.
				t := &tracked{lease: l, rev: e.Revision()}
				if old := last[id]; old != nil {
					t.probing = old.probing
				}
				last[id] = t
			}
		case jetstream.KeyValueDelete: // a clean stop, or a lease ended by a reaper (disconnected)
			delete(last, id)
		case jetstream.KeyValuePurge: // expired
			t := last[id]
			delete(last, id)
			if t != nil {
				r.reap(ctx, id, t.lease, "lease expired", events.ReapedByLease)
			}
		}
	}
}

// probe asks a runner process whether it is still connected. A frozen process
// (connected, not answering) times out, which counts as an answer: only a
// closed connection is acted on here, the lease covers the rest.
func (r *Reaper) probe(ctx context.Context, id, incarnation string, rev uint64, out chan<- probeResult) {
	sent := time.Now()
	pctx, cancel := context.WithTimeout(ctx, 5*events.ProbeEvery)
	_, err := r.nc.RequestWithContext(pctx, events.AliveSubject(id, incarnation), nil)
	cancel()
	select {
	case out <- probeResult{id: id, rev: rev, sent: sent, gone: errors.Is(err, nats.ErrNoResponders)}:
	case <-ctx.Done():
	}
}

// disconnected reports whether a probe's outcome ended the runner's lease: its
// alive subject has had no responders for ProbeConfirm, and the lease was not
// rewritten meanwhile. Then the lease is deleted (only at the revision the
// probes saw: a runner that came back and renewed keeps it) and its jobs are
// handed back. The deletion is what a reconnecting runner finds at its next
// renewal (wrong revision), so it settles its jobs through jetci-reaped
// exactly as after an expiry, and never acks a job handed to another runner.
func (r *Reaper) disconnected(ctx context.Context, kv jetstream.KeyValue, t *tracked, p probeResult) bool {
	if !p.gone {
		t.silentSince = time.Time{}
		return false
	}
	if t.silentSince.IsZero() {
		t.silentSince = p.sent
		return false
	}
	if p.sent.Sub(t.silentSince) < events.ProbeConfirm {
		return false
	}
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	err := kv.Delete(dctx, events.LeaseKey(p.id), jetstream.LastRevision(t.rev))
	cancel()
	if err != nil {
		ev := r.log.Warn()
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
			ev = r.log.Debug() // the runner renewed: it is back
		}
		ev.Err(err).Str("runner", t.lease.ID).Msg("runner unreachable, but its lease was not ended; the lease expiry will settle it")
		t.silentSince = time.Time{}
		return false
	}
	r.reap(ctx, p.id, t.lease, "connection closed", events.ReapedByDisconnect)
	return true
}

// reap hands back the jobs the lease l names; why says how the runner was
// found gone, by is the value of the claims (events.ReapedBy...).
func (r *Reaper) reap(ctx context.Context, id string, l events.Lease, why, by string) {
	log := r.log.With().Str("runner", l.ID).Logger()
	if len(l.Jobs) == 0 {
		log.Info().Str("why", why).Msg("runner gone; it held no job")
		return
	}
	claims, err := r.js.KeyValue(ctx, events.BucketReaped)
	if err != nil {
		log.Warn().Err(err).Msg("cannot hand back the jobs of an expired lease; the ack wait will")
		return
	}
	handed := 0
	for _, j := range l.Jobs {
		if j.Reply == "" {
			continue
		}
		if _, err := claims.Create(ctx, events.ReapKey(id, j.JobID, j.Attempt), []byte(by)); err != nil {
			if !errors.Is(err, jetstream.ErrKeyExists) {
				log.Warn().Err(err).Str("job_id", j.JobID).Msg("claiming a job of an expired lease")
			}
			continue // the runner came back and kept it, or another dispatcher has it
		}
		if err := r.nc.Publish(j.Reply, []byte("-NAK")); err != nil {
			log.Warn().Err(err).Str("job_id", j.JobID).Msg("handing back a job")
			continue
		}
		handed++
		r.m.HandedBack()
		log.Warn().Str("job_id", j.JobID).Uint64("attempt", j.Attempt).Str("why", why).Msg("runner gone: job handed back to the queue")
	}
	if handed > 0 {
		_ = r.nc.Publish(events.WakeSubject(l.Pool, l.Arch), nil)
	}
}
