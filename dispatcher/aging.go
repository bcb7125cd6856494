package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/events"
)

// agingOrder is the ladder aging climbs, highest first: every class but bisect.
var agingOrder = []events.Class{events.ClassUser, events.ClassFirst, events.ClassSecond, events.ClassPeriodic}

// runAging keeps low classes from starving: a job that has waited AgeAfter in
// its class, never taken by a runner, moves up one class (periodic → second →
// first → user; agingOrder). The bisect class is outside that ladder: a
// culprit search's runs are already near the top, and a commit's own check
// must never turn into one (its result would be taken for a bisection run's). JetStream has no per-message priority, so a move is a copy
// queued at the higher class and the original deleted; only jobs past the
// consumer's delivered position are moved, never one a runner holds. (A runner
// that takes the job in the instant between the look and the delete would run
// it alongside the copy: steps must tolerate a rerun, as with any redelivery.)
func (d *Dispatcher) runAging(ctx context.Context) error {
	if d.cfg.AgeAfter <= 0 {
		return nil
	}
	stream, err := d.js.Stream(ctx, events.StreamJobs)
	if err != nil {
		return fmt.Errorf("aging: open the jobs stream: %w", err)
	}
	tick := min(max(d.cfg.AgeAfter/4, 10*time.Millisecond), 30*time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		for _, p := range d.partitions(ctx, stream) {
			pool, arch, _ := strings.Cut(p, "/")
			for i := len(agingOrder) - 1; i > 0; i-- {
				if err := d.age(ctx, stream, pool, arch, agingOrder[i], agingOrder[i-1]); err != nil && ctx.Err() == nil {
					d.log.Warn().Err(err).Str("pool", pool).Str("arch", arch).Msg("aging")
				}
			}
		}
	}
}

// age moves the jobs of one partition and class that waited too long up to
// the class above.
func (d *Dispatcher) age(ctx context.Context, stream jetstream.Stream, pool, arch string, from, to events.Class) error {
	cons, err := d.js.Consumer(ctx, events.StreamJobs, events.JobConsumerName(pool, arch, from))
	if err != nil {
		return err
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return err
	}
	if info.NumPending == 0 {
		return nil
	}
	cutoff := d.now().Add(-d.cfg.AgeAfter)
	seq := info.Delivered.Stream + 1
	for moved := 0; moved < 1000; moved++ {
		raw, err := stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(events.JobFilter(pool, arch, from)))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if raw.Time.After(cutoff) {
			return nil // jobs are in queue order: the rest waited less
		}
		seq = raw.Sequence + 1
		job, err := events.DecodeAs[events.JobQueued](raw.Data)
		if err != nil {
			continue // the runners terminate it
		}
		if err := stream.DeleteMsg(ctx, raw.Sequence); err != nil {
			if events.MsgGone(err) {
				continue // taken meanwhile
			}
			return err
		}
		if job.Origin == "" {
			job.Origin = from // what the job is stays: only where it waits changes
		}
		job.Class, job.QueueSeq = to, 0
		ack, err := publishAck(ctx, d.js, events.JobSubject(pool, arch, to, job.Repo, job.Branch), job, fmt.Sprintf("age:%d", raw.Sequence))
		if err != nil {
			return fmt.Errorf("requeue job %s at class %s: %w", job.JobID, to, err)
		}
		job.QueueSeq = ack.Sequence
		if err := publish(ctx, d.js, events.ResultSubject(job.Repo, job.Branch, events.KindQueued), job,
			events.ResultMsgID(job.JobID, job.QueueSeq, 0, events.KindQueued)); err != nil {
			return err
		}
		d.cfg.Metrics.JobQueued(pool, arch, to)
		d.log.Info().Str("job_id", job.JobID).Str("repo", job.Repo).Str("branch", job.Branch).Str("commit", events.Short(job.Commit)).
			Str("job", job.Job).Str("from", string(from)).Str("to", string(to)).Dur("waited", d.now().Sub(raw.Time)).Msg("job aged up a class")
	}
	return nil
}

// partitions lists the pool/arch of every job consumer on the stream, also
// those made before this dispatcher started.
func (d *Dispatcher) partitions(ctx context.Context, stream jetstream.Stream) []string {
	seen := map[string]bool{}
	var out []string
	lister := stream.ListConsumers(ctx)
	for ci := range lister.Info() {
		// jetci.job.<pool>.<arch>.<class>.>
		tok := strings.Split(ci.Config.FilterSubject, ".")
		if len(tok) != 6 || tok[0]+"."+tok[1] != events.SubjectJobs {
			continue
		}
		if p := tok[2] + "/" + tok[3]; !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}
