package runner

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/events"
)

// running is a job this runner runs, for its cancel requests.
type running struct {
	seq    uint64
	cancel context.CancelCauseFunc
}

// errCancelled is the cause of a job context cancelled on request.
type errCancelled struct{ by, reason string }

func (e errCancelled) Error() string {
	if e.reason != "" {
		return e.reason // "superseded by …"
	}
	if e.by == "" {
		return "cancelled"
	}
	return "cancelled by " + e.by
}

// cancelledBy returns the cancel request that stopped ctx, if one did.
func cancelledBy(ctx context.Context) (errCancelled, bool) {
	var c errCancelled
	ok := errors.As(context.Cause(ctx), &c)
	return c, ok
}

// track registers a job's context so that a cancel request can stop it; the
// returned function unregisters it.
func (r *Runner) track(ctx context.Context, jobID string, seq uint64) (context.Context, func()) {
	jctx, cancel := context.WithCancelCause(ctx)
	r.mu.Lock()
	r.jobs[jobID] = &running{seq: seq, cancel: cancel}
	r.mu.Unlock()
	return jctx, func() {
		r.mu.Lock()
		if j := r.jobs[jobID]; j != nil && j.seq == seq {
			delete(r.jobs, jobID)
		}
		r.mu.Unlock()
		cancel(nil)
	}
}

// onCancel stops a job of this runner that a cancel request names.
func (r *Runner) onCancel(m *nats.Msg) {
	req, err := events.DecodeAs[events.CancelRequest](m.Data)
	if err != nil {
		return
	}
	r.cancelJob(req)
}

func (r *Runner) cancelJob(req *events.CancelRequest) bool {
	r.mu.Lock()
	j := r.jobs[req.JobID]
	r.mu.Unlock()
	if j == nil || req.QueueSeq != 0 && req.QueueSeq != j.seq {
		return false
	}
	r.log.Info().Str("job_id", req.JobID).Str("by", req.By).Str("reason", req.Reason).Msg("job cancelled")
	j.cancel(errCancelled{by: req.By, reason: req.Reason})
	return true
}

// checkCancelled looks for a cancel request made before the job was taken.
func (r *Runner) checkCancelled(ctx context.Context, jobID string) {
	kv, err := r.cancelBucket(ctx)
	if err != nil {
		return
	}
	e, err := kv.Get(ctx, jobID)
	if err != nil {
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			r.log.Debug().Err(err).Msg("look up cancel requests")
		}
		return
	}
	if req, err := events.DecodeAs[events.CancelRequest](e.Value()); err == nil {
		r.cancelJob(req)
	}
}

// cancelBucket is the cancel requests' bucket, looked up once: a lookup is a
// stream-info request, which cost the server more than the get itself.
func (r *Runner) cancelBucket(ctx context.Context) (jetstream.KeyValue, error) {
	r.mu.Lock()
	kv := r.cancelKV
	r.mu.Unlock()
	if kv != nil {
		return kv, nil
	}
	kv, err := r.js.KeyValue(ctx, events.BucketCancel)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.cancelKV = kv
	r.mu.Unlock()
	return kv, nil
}
