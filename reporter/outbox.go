package reporter

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/events"
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
	if err := json.Unmarshal(m.Data(), &note); err != nil || note.Type != TypeNotification || note.ID == "" || note.Mail == nil == (note.Webhook == nil) {
		n.log.Error().Str("subject", m.Subject()).Msg("dropping a bad outbox message")
		_ = m.Term()
		return
	}
	kind := kindOf(&note)
	log := n.log.With().Str("id", note.ID).Str("kind", kind).Str("event", note.Event).Str("job_id", note.JobID).Logger()
	claim := "n." + shortHash(note.ID) // ids may hold characters keys may not
	if e, err := n.sent.Get(ctx, claim); err == nil {
		if string(e.Value()) == claimSending {
			log.Warn().Msg("a sender died while sending this notification: it may have gone out, so it is not sent again")
			n.metrics.Notification(kind, "doubt")
		} else {
			log.Debug().Msg("already sent")
		}
		_ = m.Ack()
		return
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		log.Warn().Err(err).Msg("outbox: read the sent mark; will retry")
		_ = m.NakWithDelay(5 * time.Second)
		return
	}
	rev, err := n.sent.Create(ctx, claim, []byte(claimSending))
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
	if kind == "mail" {
		err = n.sendMail(sctx, n.cfg.Mail.From, note.Mail.To, compose(n.cfg.Mail.From, note.Mail, note.ID+"."+newID(), n.now()))
	} else {
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
		wait := backoff(tries)
		log.Warn().Err(err).Uint64("try", tries).Dur("retry_in", wait).Msg("notification not sent; will retry")
		_ = m.NakWithDelay(wait)
		return
	}
	if _, err := n.sent.Update(context.WithoutCancel(ctx), claim, []byte(claimSent), rev); err != nil {
		log.Warn().Err(err).Msg("outbox: mark sent")
	}
	n.metrics.Notification(kind, "sent")
	if kind == "mail" {
		log.Info().Strs("to", note.Mail.To).Str("subject", note.Mail.Subject).Uint64("try", tries).Msg("mail sent")
	} else {
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
