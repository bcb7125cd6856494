package events

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// DefaultURL is the NATS server `jetci up` listens on by default.
const DefaultURL = "nats://127.0.0.1:4222"

// ConnectOptions tune Connect.
type ConnectOptions struct {
	Name string // client name shown by the server, e.g. "jetci-runner"
	// Wait makes a service wait for a server that is not up yet, and reconnect
	// forever. Commands for people (results, trigger) fail fast instead.
	Wait bool
	Log  zerolog.Logger
	// Role is the user role this process connects as (observer, dispatcher,
	// runner, reporter, admin, hook, pool; see Roles). It sets the inbox prefix
	// the server lets that role read, and names the role in permission errors.
	// Empty: the default inbox, for servers without permissions (jetci up).
	Role string
	// Auth holds the credentials and TLS settings.
	Auth Auth
	// Extra options, e.g. nats.InProcessServer.
	Extra []nats.Option
	// Ctx, with Wait, makes Connect wait until the server is reached: it
	// returns an error at once when the server refuses the credentials (a
	// service would otherwise wait forever), and ctx's error when ctx ends.
	Ctx context.Context
}

// Connect dials NATS and opens JetStream. The connection remembers the
// server's refusals (see Conn.Explain).
func Connect(url string, o ConnectOptions) (*Conn, jetstream.JetStream, error) {
	log := o.Log
	authOpts, err := o.Auth.Options()
	if err != nil {
		return nil, nil, err
	}
	who := o.Role
	switch {
	case who == "":
		who = o.Auth.User
	case o.Auth.User != "" && o.Auth.User != o.Role:
		who = fmt.Sprintf("user %s (running as %s)", o.Auth.User, o.Role)
	}
	if who == "" {
		who = "this client"
	}
	c := &Conn{}
	opts := []nats.Option{
		nats.Name(o.Name),
		nats.CustomReconnectDelay(reconnectDelay),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn().Err(err).Msg("disconnected from nats")
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info().Str("server", c.ConnectedUrlRedacted()).Msg("reconnected to nats")
		}),
		nats.ErrorHandler(func(_ *nats.Conn, s *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrPermissionViolation) {
				pe := parseViolation(who, err)
				c.recordDenial(pe)
				log.Error().Str("role", o.Role).Str("subject", pe.Subject).Msg(pe.Error())
				return
			}
			ev := log.Error().Err(err)
			if s != nil {
				ev = ev.Str("subject", s.Subject)
			}
			ev.Msg("nats error")
		}),
	}
	if o.Wait {
		opts = append(opts, nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true))
	} else {
		opts = append(opts, nats.Timeout(5*time.Second))
	}
	if o.Role != "" {
		opts = append(opts, nats.CustomInboxPrefix(InboxPrefix(o.Role)))
	}
	opts = append(opts, authOpts...)
	opts = append(opts, o.Extra...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to nats at %s: %w", url, err)
	}
	if o.Wait && o.Ctx != nil {
		if err := waitConnected(o.Ctx, nc, url, log); err != nil {
			nc.Close()
			return nil, nil, fmt.Errorf("connect to nats at %s as %s: %w", url, who, err)
		}
	}
	// An asynchronous publish whose ack never comes (lost in a leader change)
	// is given up after a while, so that such losses do not pile up against
	// the client's limit of publishes in flight; callers retry with the same
	// Msg-Id.
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(30*time.Second))
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	c.Conn = nc
	return c, js, nil
}

// Retry calls f until it succeeds or ctx ends, waiting between tries with backoff
// up to max. It is for start-up steps that need the server (stream set-up) when the
// server may still be coming up.
func Retry(ctx context.Context, log zerolog.Logger, what string, max time.Duration, f func(context.Context) error) error {
	wait := 100 * time.Millisecond
	for {
		err := f(ctx)
		if err == nil {
			return nil
		}
		log.Warn().Err(err).Dur("retry_in", wait).Msgf("%s failed", what)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, err)
		case <-time.After(wait):
		}
		if wait *= 2; wait > max {
			wait = max
		}
	}
}

// waitConnected waits until nc is connected, the server refused its
// credentials, or ctx ends.
func waitConnected(ctx context.Context, nc *nats.Conn, url string, log zerolog.Logger) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	said := time.Now().Add(time.Second)
	for {
		if time.Now().After(said) && !nc.IsConnected() {
			log.Info().Str("url", url).Msg("waiting for the nats server")
			said = time.Now().Add(time.Minute)
		}
		if nc.IsConnected() {
			return nil
		}
		err := nc.LastError()
		if isAuthError(err) || nc.IsClosed() {
			if err == nil {
				err = nats.ErrConnectionClosed
			}
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func isAuthError(err error) bool {
	for _, e := range []error{nats.ErrAuthorization, nats.ErrAuthExpired, nats.ErrAuthRevoked, nats.ErrAccountAuthExpired} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// reconnectDelay is the wait before the n-th round of reconnect attempts (n
// from 1). The first round goes at once: nats.go otherwise sleeps
// ReconnectWait even before its first attempt when it knows one server, and a
// runner whose connection dropped for an instant would stay unsubscribed
// (from its alive subject) longer than the dispatcher's ProbeConfirm. Later
// rounds wait 250 ms plus up to 100 ms of jitter, as before.
func reconnectDelay(n int) time.Duration {
	if n <= 1 {
		return 0
	}
	return 250*time.Millisecond + rand.N(100*time.Millisecond)
}
