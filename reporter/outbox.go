package reporter

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/forge"
)

// Outbox delivery: tries per notification, and the wait between them.
const (
	outboxMaxDeliver = 15
	outboxMaxBackoff = 10 * time.Minute
)

var errNoLongerConfigured = errors.New("its webhook is no longer configured")

// backoff is the wait after the n-th failed try: 1s, 2s, 4s … up to 10 min;
// 15 tries span about an hour and a half.
func backoff(n uint64) time.Duration {
	d := time.Second << min(n-1, 20)
	return min(d, outboxMaxBackoff)
}

// Sent-claim values in jetci-sent.
const (
	claimSending = "sending"
	claimSent    = "sent"
)

// RunOutbox sends the outbox's notifications until ctx ends. Before sending it
// claims the notification's id in jetci-sent ("sending"), and marks it "sent"
// after: a second copy of a notification is skipped, and one whose sender died
// mid-send is not sent again (a duplicate is worse than a rare loss; it is
// logged and counted as "doubt"). A failed try releases the claim and is
// retried with backoff; result processing never waits for it.
func (n *Notifier) RunOutbox(ctx context.Context) error {
	cfg := jetstream.ConsumerConfig{
		Durable:       events.ConsumerNotifier,
		Description:   "sends mails and webhooks",
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       30 * time.Second, // a crashed sender's notification comes back this soon; sends report progress
		MaxDeliver:    outboxMaxDeliver,
	}
	return events.Consume(ctx, n.js, events.StreamNotify, cfg, 1, n.log, func(m jetstream.Msg) { n.handleOutbox(ctx, m) })
}

func (n *Notifier) handleOutbox(runCtx context.Context, m jetstream.Msg) {
	if runCtx.Err() != nil {
		_ = m.Nak() // stopping: leave it to the next sender
		return
	}
	// Once claimed, a notification is seen through even while the reporter
	// stops: a claim cut short by the stop would read as a sender that died
	// mid-send, and the notification would never go out.
	ctx, cancelAll := context.WithTimeout(context.WithoutCancel(runCtx), 3*time.Minute)
	defer cancelAll()
	var note Notification
	if err := json.Unmarshal(m.Data(), &note); err != nil || note.Type != TypeNotification || note.ID == "" || countSet(note.Mail != nil, note.Webhook != nil, note.Status != nil) != 1 ||
		note.Status != nil && note.Status.Repo == "" {
		n.log.Error().Str("subject", m.Subject()).Msg("dropping a bad outbox message")
		_ = m.Term()
		return
	}
	kind := kindOf(&note)
	log := n.log.With().Str("id", note.ID).Str("kind", kind).Str("event", note.Event).Str("job_id", note.JobID).Logger()
	if note.Status != nil {
		// A forge that asked to wait (Retry-After) or refused the token
		// is not asked again before its time, by any status.
		if until := n.holdOf(note.Status.Repo); until.After(n.now()) {
			if meta, _ := m.Metadata(); meta != nil && meta.NumDelivered >= outboxMaxDeliver {
				log.Error().Uint64("tries", meta.NumDelivered).Msg("status not posted: its forge kept refusing; giving up")
				n.metrics.Notification(kind, "gave_up")
				_ = m.Term()
				return
			}
			_ = m.NakWithDelay(until.Sub(n.now()))
			return
		}
		// A state is not posted over a newer one of the same context (a
		// pending retried after the result went out).
		if newer, err := n.newerPosted(ctx, note.Status); err != nil {
			log.Warn().Err(err).Msg("outbox: read the posted state; will retry")
			_ = m.NakWithDelay(5 * time.Second)
			return
		} else if newer {
			log.Debug().Msg("a newer state of this context was posted: not posting this one")
			_ = m.Ack()
			return
		}
	}
	claim := "n." + shortHash(note.ID) // ids may hold characters keys may not
	var rev uint64
	if e, err := n.sent.Get(ctx, claim); err == nil {
		if string(e.Value()) == claimSending && kind == "status" {
			// Posting a status again is harmless (the forge keeps the
			// context's latest state, which is this one); losing it would
			// leave the commit pending for ever. So it is posted again.
			if rev, err = n.sent.Update(ctx, claim, []byte(claimSending), e.Revision()); err != nil {
				_ = m.Ack() // another sender took it over
				return
			}
			log.Warn().Msg("a sender died while posting this status: posting it again")
		} else {
			if string(e.Value()) == claimSending {
				log.Warn().Msg("a sender died while sending this notification: it may have gone out, so it is not sent again")
				n.metrics.Notification(kind, "doubt")
			} else {
				log.Debug().Msg("already sent")
			}
			_ = m.Ack()
			return
		}
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		log.Warn().Err(err).Msg("outbox: read the sent mark; will retry")
		_ = m.NakWithDelay(5 * time.Second)
		return
	}
	var err error
	if rev == 0 {
		rev, err = n.sent.Create(ctx, claim, []byte(claimSending))
	}
	if err != nil {
		if isConflict(err) {
			_ = m.Ack() // another sender has it
			return
		}
		log.Warn().Err(err).Msg("outbox: claim; will retry")
		_ = m.NakWithDelay(5 * time.Second)
		return
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	stopBeat := inProgress(m, 10*time.Second)
	switch kind {
	case "mail":
		err = n.sendMail(sctx, n.cfg.Mail.From, note.Mail.To, compose(n.cfg.Mail.From, note.Mail, note.ID+"."+newID(), n.now()))
	case "status":
		err = n.sendStatus(sctx, &note)
	default:
		err = n.deliver(sctx, &note)
	}
	cancel()
	stopBeat()
	meta, _ := m.Metadata()
	tries := uint64(1)
	if meta != nil {
		tries = meta.NumDelivered
	}
	if err != nil {
		// It did not go out: release the claim so that the retry may send it.
		if derr := n.sent.Delete(context.WithoutCancel(ctx), claim, jetstream.LastRevision(rev)); derr != nil {
			log.Warn().Err(derr).Msg("outbox: release the claim")
		}
		n.metrics.Notification(kind, "failed")
		if errors.Is(err, errNoLongerConfigured) || tries >= outboxMaxDeliver {
			log.Error().Err(err).Uint64("tries", tries).Msg("notification not sent; giving up")
			n.metrics.Notification(kind, "gave_up")
			_ = m.Term()
			return
		}
		wait := n.retryDelay(&note, err, tries)
		lvl := log.Warn()
		var ae *forge.AuthError
		if errors.As(err, &ae) {
			lvl = log.Debug() // sendStatus logged it once for the repo
		}
		lvl.Err(err).Uint64("try", tries).Dur("retry_in", wait).Msg("notification not sent; will retry")
		_ = m.NakWithDelay(wait)
		return
	}
	if _, err := n.sent.Update(context.WithoutCancel(ctx), claim, []byte(claimSent), rev); err != nil {
		log.Warn().Err(err).Msg("outbox: mark sent")
	}
	n.metrics.Notification(kind, "sent")
	switch kind {
	case "mail":
		log.Info().Strs("to", note.Mail.To).Str("subject", note.Mail.Subject).Uint64("try", tries).Msg("mail sent")
	case "status":
		if err := n.notePosted(context.WithoutCancel(ctx), note.Status); err != nil {
			log.Warn().Err(err).Msg("outbox: note the posted state")
		}
		log.Info().Str("repo", note.Status.Repo).Str("commit", events.Short(note.Status.SHA)).Str("context", note.Status.Context).
			Str("state", note.Status.State).Uint64("try", tries).Msg("commit status posted")
	default:
		log.Info().Str("url", note.Webhook.URL).Uint64("try", tries).Msg("webhook delivered")
	}
	_ = m.Ack()
}

// inProgress tells the server every interval that m is still being worked on,
// until the returned function is called.
func inProgress(m jetstream.Msg, every time.Duration) func() {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = m.InProgress()
			}
		}
	}()
	return func() { close(done) }
}

func countSet(bs ...bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}
