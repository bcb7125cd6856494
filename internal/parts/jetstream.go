package parts

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/metrics"
)

// ProblemJetStream is the name under which WatchJetStream records what it
// sees wrong (metrics.SetProblem): /healthz shows it, the reporter's pages
// show it in a banner.
const ProblemJetStream = "jetstream"

// JetStreamWatch is how often, and how patiently, WatchJetStream asks.
var JetStreamWatch = struct{ Every, Timeout time.Duration }{5 * time.Second, 3 * time.Second}

// WatchJetStream asks the server, every JetStreamWatch.Every, for its
// account info and for the info of stream (one the service uses), and
// writes a small probe to probe (events.HealthSubject, stream JETCI_HEALTH),
// until ctx ends. It tells a server that does not answer from one that
// answers while its JetStream takes no write: when the disk under a
// standalone nats-server's store fills, the account info still answers but
// every write times out, even after space is freed, until the server is
// restarted, and after a while stream requests time out too (measured with
// nats-server 2.15; the embedded server of jetci up and jetci server
// restarts its JetStream by itself). What it sees goes
// to m (SetProblem, so /healthz answers 503 with it), to seen (nil: none)
// and to the log, once when it starts and once when it ends.
func WatchJetStream(ctx context.Context, js jetstream.JetStream, stream, probe string, m *metrics.Metrics, seen func(error), log zerolog.Logger) error {
	var last error
	tick := time.NewTicker(JetStreamWatch.Every)
	defer tick.Stop()
	for {
		err := CheckJetStream(ctx, js, stream, probe)
		if ctx.Err() != nil {
			return nil
		}
		switch {
		case err != nil && (last == nil || err.Error() != last.Error()):
			log.Error().Err(err).Msg("JetStream problem")
		case err == nil && last != nil:
			log.Info().Msg("JetStream answers again")
		}
		last = err
		m.SetProblem(ProblemJetStream, err)
		if seen != nil {
			seen(err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// CheckJetStream is one look of WatchJetStream: nil when the server answers
// for its account and for stream, and takes a write to probe (skipped when
// its stream, JETCI_HEALTH, does not exist: a deployment set up before it).
func CheckJetStream(ctx context.Context, js jetstream.JetStream, stream, probe string) error {
	c, cancel := context.WithTimeout(ctx, JetStreamWatch.Timeout)
	defer cancel()
	if _, err := js.AccountInfo(c); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			return fmt.Errorf("JetStream is off on the NATS server (%v): nats-server turns it off when it runs out of store resources; its log says why", err)
		}
		return fmt.Errorf("the NATS server does not answer JetStream requests: %w", err)
	}
	if _, err := js.Stream(c, stream); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, jetstream.ErrNoStreamResponse) {
			return fmt.Errorf("the NATS server answers but its JetStream does not: stream %s gives no answer in %s (a full disk under the server's store does this, and it lasts until the server is restarted: its log says \"no space left on device\"; free space, then restart nats-server)",
				stream, JetStreamWatch.Timeout)
		}
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("stream %s is gone from the NATS server (run jetci setup)", stream)
		}
		return fmt.Errorf("stream %s: %w", stream, err)
	}
	if _, err := js.Stream(c, events.StreamHealth); errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil // set up before the probes: nothing to write to
	}
	if _, err := js.Publish(c, probe, []byte(time.Now().UTC().Format(time.RFC3339))); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, jetstream.ErrNoStreamResponse) {
			return fmt.Errorf("the NATS server answers but its JetStream takes no write: a probe write to %s got no answer in %s (a full disk under the server's store does this, and it lasts until the server is restarted: its log says \"no space left on device\"; free space, then restart nats-server)",
				events.StreamHealth, JetStreamWatch.Timeout)
		}
		return fmt.Errorf("JetStream refuses a probe write to %s: %w", events.StreamHealth, err)
	}
	return nil
}
