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
// reached their delivery limit (see deadLetters).
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

func (r *Reaper) watch(ctx context.Context, kv jetstream.KeyValue) error {
	w, err := kv.Watch(ctx, events.LeaseKey("*"))
	if err != nil {
		return err
	}
	defer w.Stop()
	last := map[string]events.Lease{} // runner id -> its last lease
	for {
		var e jetstream.KeyValueEntry
		var ok bool
		select {
		case <-ctx.Done():
			return nil
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
				if old, known := last[id]; known && old.Incarnation != "" && l.Incarnation != old.Incarnation {
					r.log.Info().Str("runner", l.ID).Msg("runner restarted with the same id: its old process is gone")
					r.reap(ctx, id, old)
				}
				last[id] = l
			}
		case jetstream.KeyValueDelete: // a clean stop: the runner handed its jobs back itself
			delete(last, id)
		case jetstream.KeyValuePurge: // expired
			l, known := last[id]
			delete(last, id)
			if known {
				r.reap(ctx, id, l)
			}
		}
	}
}

func (r *Reaper) reap(ctx context.Context, id string, l events.Lease) {
	log := r.log.With().Str("runner", l.ID).Logger()
	if len(l.Jobs) == 0 {
		log.Info().Msg("runner gone (lease expired); it held no job")
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
		if _, err := claims.Create(ctx, events.ReapKey(id, j.JobID, j.Attempt), []byte(`"dispatcher"`)); err != nil {
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
		log.Warn().Str("job_id", j.JobID).Uint64("attempt", j.Attempt).Msg("runner gone (lease expired): job handed back to the queue")
	}
	if handed > 0 {
		_ = r.nc.Publish(events.WakeSubject(l.Pool, l.Arch), nil)
	}
}
