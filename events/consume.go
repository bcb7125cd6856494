package events

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// The pull expiry and heartbeat of Consume's pulls.
const (
	consumePullExpiry = 5 * time.Second
	consumeHeartbeat  = time.Second
)

// Consume creates (or updates) the durable consumer cfg on stream, retrying while
// the server is away, then hands its messages to handle one at a time until ctx
// ends, with at most buffer messages pulled ahead. It returns nil on a clean stop.
// handle acks, naks or terminates each message itself.
func Consume(ctx context.Context, js jetstream.JetStream, stream string, cfg jetstream.ConsumerConfig, buffer int,
	log zerolog.Logger, handle func(jetstream.Msg)) error {
	return ConsumeBatches(ctx, js, stream, cfg, buffer, 1, log, func(ms []jetstream.Msg) { handle(ms[0]) })
}

// ConsumeBatches is Consume for a handler that does better with several
// messages at once: after a message arrives, the messages already pulled
// behind it (at most max in all) go to handle together, in stream order. A
// batch never waits for messages that are not there yet.
func ConsumeBatches(ctx context.Context, js jetstream.JetStream, stream string, cfg jetstream.ConsumerConfig, buffer, max int,
	log zerolog.Logger, handle func([]jetstream.Msg)) error {
	var cons jetstream.Consumer
	err := Retry(ctx, log, "create consumer "+cfg.Durable, 5*time.Second, func(ctx context.Context) (err error) {
		cons, err = js.CreateOrUpdateConsumer(ctx, stream, cfg)
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	// Short pulls with a heartbeat every second: when the consumer's leader
	// dies (a cluster node lost), the client notices the missing heartbeats
	// within seconds and pulls from the new leader, instead of waiting out
	// the default 30 s pull.
	it, err := cons.Messages(jetstream.PullMaxMessages(buffer), jetstream.PullExpiry(consumePullExpiry), jetstream.PullHeartbeat(consumeHeartbeat))
	if err != nil {
		return fmt.Errorf("consume %s: %w", cfg.Durable, err)
	}
	// On stop, messages already pulled but not handled are handed back at once
	// (Nak), rather than waiting out the ack wait, so a restarted or another
	// process gets them without delay.
	go func() { <-ctx.Done(); it.Drain() }()
	batch := make([]jetstream.Msg, 0, max)
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			log.Warn().Err(err).Str("consumer", cfg.Durable).Msg("reading messages")
			continue
		}
		batch = append(batch[:0], m)
		for len(batch) < max {
			// Only what is buffered already: a millisecond is no wait for
			// a message in the client's buffer, and the least Next takes.
			m, err := it.Next(jetstream.NextMaxWait(time.Millisecond))
			if err != nil {
				break
			}
			batch = append(batch, m)
		}
		if ctx.Err() != nil {
			for _, m := range batch {
				_ = m.Nak()
			}
			continue
		}
		handle(batch)
	}
}

// MsgGone reports whether err says that a stream message is not there (any
// more): a get that found nothing, or a delete of a message another process
// deleted or a runner took first. nats.go reports the second as
// ErrMsgDeleteUnsuccessful with the server's error in text only, not as
// ErrMsgNotFound; the server answers 10037 (message not found), 10043
// ("sequence N not found": a message inside a block, and any on a memory
// store) or 10057 with "no message found" or "stream store EOF" (at the ends
// of a file store). Other 10057 failures (a store write error, a delete not
// permitted) are not "gone".
func MsgGone(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return true
	}
	if !errors.Is(err, jetstream.ErrMsgDeleteUnsuccessful) {
		return false
	}
	text := err.Error()
	switch {
	case strings.Contains(text, "err_code=10037"), strings.Contains(text, "err_code=10043"):
		return true
	case strings.Contains(text, "err_code=10057"):
		return strings.Contains(text, "no message found") || strings.Contains(text, "stream store EOF")
	}
	return false
}
