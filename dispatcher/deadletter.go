package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/events"
)

// maxDeliveries is the part of the server's max-deliveries advisory we use.
type maxDeliveries struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// deadLetters records jobs that reached their delivery limit — each runner that
// took them died or lost them — as `error` results, and takes them out of the
// work queue, where JetStream would otherwise leave them for ever.
func (r *Reaper) deadLetters(ctx context.Context) error {
	jobs, err := r.js.Stream(ctx, events.StreamJobs)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("dead letters: %w", err)
	}
	cfg := jetstream.ConsumerConfig{
		Durable: events.ConsumerDead, AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait: 30 * time.Second, Description: "records jobs that reached their delivery limit",
	}
	return events.Consume(ctx, r.js, events.StreamDead, cfg, 8, r.log, func(m jetstream.Msg) {
		if err := r.bury(ctx, jobs, m.Data()); err != nil {
			r.log.Warn().Err(err).Msg("recording a job that reached its delivery limit; will retry")
			_ = m.NakWithDelay(time.Second)
			return
		}
		_ = m.Ack()
	})
}

func (r *Reaper) bury(ctx context.Context, jobs jetstream.Stream, data []byte) error {
	var adv maxDeliveries
	if err := json.Unmarshal(data, &adv); err != nil || adv.StreamSeq == 0 {
		r.log.Error().Str("advisory", string(data)).Msg("unreadable max-deliveries advisory; dropped")
		return nil
	}
	raw, err := jobs.GetMsg(ctx, adv.StreamSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil // acked or removed meanwhile
	}
	if err != nil {
		return err
	}
	job, err := events.DecodeAs[events.JobQueued](raw.Data)
	if err == nil {
		res := &events.JobFinished{
			JobRef: job.JobRef, QueueSeq: adv.StreamSeq, Attempt: adv.Deliveries, Runner: "dispatcher",
			Status: events.StatusError, ExitCode: -1, FinishedAt: time.Now().UTC(),
			Error:  fmt.Sprintf("gave up after %d attempts: every runner that took this job died or lost it before finishing", adv.Deliveries),
			Author: job.Author, Subject: job.Subject, Class: job.Class, TriggerID: job.TriggerID,
		}
		if err := publish(ctx, r.js, events.ResultSubject(job.Repo, job.Branch, events.KindFinished), res,
			events.ResultMsgID(job.JobID, adv.StreamSeq, adv.Deliveries, "gave-up")); err != nil {
			return err
		}
		r.m.GaveUp()
		r.log.Error().Str("job_id", job.JobID).Str("repo", job.Repo).Str("branch", job.Branch).Str("commit", events.Short(job.Commit)).
			Str("job", job.Job).Str("arch", job.Arch).Uint64("attempts", adv.Deliveries).Msg("job gave up: recorded as an error and removed from the queue")
	}
	if err := jobs.DeleteMsg(ctx, adv.StreamSeq); err != nil && !events.MsgGone(err) {
		return err
	}
	return nil
}
