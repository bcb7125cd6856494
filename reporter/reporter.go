// Package reporter is the end of the pipeline: it consumes the queued, started and
// finished events of every job from JETCI_RESULTS, folds them into exactly one
// record per job in the jetci-results KV bucket, and serves those records to
// people: `jetci results`, a JSON API under /api/v1/ and a web page.
//
// The record lives in JetStream, not in the reporter's memory, so a reporter can be
// restarted, or run several times, without losing or doubling a result: each event
// is folded in with a compare-and-swap on the record, and events older than what
// the record holds (a late report from a runner whose job was redelivered) are
// ignored.
//
// Finished events with test results also feed the per-test history in the
// jetci-tests bucket (tests.go): per repo × branch × arch × job, each test's
// runs, failures, durations and the commits it failed and passed on. A test
// that failed and passed on the same commit is flaky; /api/v1/tests/flaky,
// /api/v1/tests/slowest and the /tests page list them.
package reporter

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/metrics"
)

// Config configures a reporter.
type Config struct {
	// HTTP is the address of the web UI and API, host:port; empty serves nothing.
	HTTP string
	// Metrics, when set, is also served at /metrics on HTTP.
	Metrics *metrics.Metrics
	// AdminToken enables the actions (trigger, re-check, cancel) for whoever
	// presents it; without it the pages and the API are read-only.
	AdminToken string
	// HookSecret enables POST /hooks/git: the HMAC secret (GitHub, Gitea)
	// or token (GitLab) push hooks must carry.
	HookSecret string
	// Notify says who hears of failures and fixes (mail, webhooks); it must be
	// resolved (NotifyConfig.Resolve). Empty sends nothing.
	Notify NotifyConfig
}

// DefaultConfig serves HTTP on loopback port 8080.
func DefaultConfig() Config { return Config{HTTP: "127.0.0.1:8080"} }

// Validate reports a bad field.
func (c Config) Validate() error {
	if c.HTTP != "" {
		if _, _, err := net.SplitHostPort(c.HTTP); err != nil {
			return fmt.Errorf("reporter: HTTP %q: %w", c.HTTP, err)
		}
	}
	return nil
}

// Reporter consumes results and serves them.
type Reporter struct {
	cfg       Config
	js        jetstream.JetStream
	log       zerolog.Logger
	store     *Store
	tests     *TestStore
	view      *View
	auth      *auth
	logs      jetstream.ObjectStore
	artifacts jetstream.ObjectStore
	cancels   jetstream.KeyValue
	jobs      jetstream.Stream
	ln        net.Listener
	closing   chan struct{} // closed when Run ends, to end event streams
	notifier  *Notifier     // nil when nothing is to be sent
	keys      *events.Keys  // who may report results
	forgeries *forgeries
	forgeLog  *logLimit // refused results are logged at most once a second
	// deliveries remembers push hooks received, to refuse replays.
	deliveries jetstream.KeyValue
}

// New opens the results bucket and, if configured, binds the HTTP address, so a
// port in use is reported before Run.
func New(ctx context.Context, cfg Config, js jetstream.JetStream, log zerolog.Logger) (*Reporter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	store, err := OpenStore(ctx, js)
	if err != nil {
		return nil, err
	}
	r := &Reporter{cfg: cfg, js: js, log: log, store: store, auth: &auth{token: cfg.AdminToken, limit: newLimiter(), metrics: cfg.Metrics, log: log}, closing: make(chan struct{})}
	if r.keys, err = events.OpenKeys(ctx, js); err != nil {
		return nil, err
	}
	// Its own results (cancelled jobs) carry the service signature.
	r.js = events.SigningJetStream(js, events.ServiceSigner(r.keys))
	js = r.js
	r.forgeries, r.forgeLog = &forgeries{}, newLogLimit(time.Second)
	if r.forgeries.kv, err = js.KeyValue(ctx, events.BucketForgeries); err != nil {
		return nil, fmt.Errorf("open %s: %w (run 'jetci setup' as the admin)", events.BucketForgeries, err)
	}
	if r.auth.sessions, err = openSessions(ctx, js); err != nil {
		return nil, err
	}
	if r.deliveries, err = js.KeyValue(ctx, events.BucketDeliveries); err != nil {
		return nil, fmt.Errorf("open %s: %w (run 'jetci setup' as the admin)", events.BucketDeliveries, err)
	}
	if r.tests, err = OpenTestStore(ctx, js); err != nil {
		return nil, err
	}
	if r.logs, err = js.ObjectStore(ctx, events.BucketLogs); err != nil {
		return nil, fmt.Errorf("open %s: %w", events.BucketLogs, err)
	}
	if r.artifacts, err = js.ObjectStore(ctx, events.BucketArtifacts); err != nil {
		return nil, fmt.Errorf("open %s: %w", events.BucketArtifacts, err)
	}
	if r.cancels, err = js.KeyValue(ctx, events.BucketCancel); err != nil {
		return nil, fmt.Errorf("open %s: %w", events.BucketCancel, err)
	}
	if r.jobs, err = js.Stream(ctx, events.StreamJobs); err != nil {
		return nil, fmt.Errorf("open %s: %w", events.StreamJobs, err)
	}
	r.view = NewView(store.kv, store.runners, log)
	badLog := newLogLimit(time.Second)
	r.view.OnBad = func(key string, err error) {
		r.cfg.Metrics.Forgery("record")
		if badLog.Allow() {
			r.log.Warn().Str("key", key).Err(err).Msg("a damaged record in the results bucket")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = r.forgeries.add(ctx, Forgery{What: "record", Reason: "not a valid record: " + err.Error(), Object: key}, []byte(key+"\x00"+err.Error()))
	}
	if b, err := js.KeyValue(ctx, events.BucketBranches); err == nil {
		r.view.branches = b
	}
	if cfg.HTTP != "" {
		if r.ln, err = net.Listen("tcp", cfg.HTTP); err != nil {
			return nil, fmt.Errorf("reporter: listen %s: %w", cfg.HTTP, err)
		}
	}
	if cfg.Notify.Enabled() {
		if cfg.Notify.PublicURL == "" && r.ln != nil {
			cfg.Notify.PublicURL = "http://" + r.Addr() // links work on this machine; set --public-url for others
			r.cfg.Notify.PublicURL = cfg.Notify.PublicURL
		}
		if r.notifier, err = NewNotifier(ctx, cfg.Notify, js, cfg.Metrics, log.With().Str("part", "notifier").Logger()); err != nil {
			if r.ln != nil {
				r.ln.Close()
			}
			return nil, err
		}
	}
	return r, nil
}

// Addr is the bound HTTP address, or "" when HTTP is off.
func (r *Reporter) Addr() string {
	if r.ln == nil {
		return ""
	}
	return r.ln.Addr().String()
}

// Tests gives access to the per-test history.
func (r *Reporter) Tests() *TestStore { return r.tests }

// Store gives access to the records.
func (r *Reporter) Store() *Store { return r.store }

// View is the reporter's live picture of records and runners.
func (r *Reporter) View() *View { return r.view }

func (r *Reporter) ready() bool {
	select {
	case <-r.view.Ready():
		return true
	default:
		return false
	}
}

// Run consumes results and serves HTTP until ctx ends.
func (r *Reporter) Run(ctx context.Context) error {
	defer close(r.closing)
	errc := make(chan error, 8)
	// spawn runs a part of the reporter; only its failure ends Run (a part
	// with nothing to do returns nil at once).
	spawn := func(f func() error) {
		go func() {
			if err := f(); err != nil {
				errc <- err
			}
		}()
	}
	vctx, stopView := context.WithCancel(ctx)
	defer stopView()
	go r.view.Run(vctx)
	var srv *http.Server
	if r.ln != nil {
		srv = &http.Server{Handler: r.Handler(), ReadHeaderTimeout: 10 * time.Second,
			BaseContext: func(net.Listener) context.Context { return vctx }}
		mode := "read-only: no --admin-token"
		if r.auth.enabled() {
			mode = "actions enabled with the admin token"
		}
		r.log.Info().Str("addr", "http://"+r.Addr()).Str("actions", mode).Msg("web UI and API listening")
		go func() {
			if err := srv.Serve(r.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("reporter: http: %w", err)
			}
		}()
	}
	spawn(func() error { return r.consume(ctx) })
	if r.notifier != nil {
		spawn(func() error { return r.notifier.RunOutbox(ctx) })
		spawn(func() error { return r.consumeForNotifier(ctx) })
		spawn(func() error { return r.consumeBranchStates(ctx) })
		spawn(func() error { return r.consumeBisections(ctx) })
		r.log.Info().Str("smtp", r.cfg.Notify.Mail.SMTP).Int("webhooks", len(r.cfg.Notify.Webhooks)).
			Str("public_url", r.cfg.Notify.PublicURL).Msg("notifications on")
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	stopView() // ends event streams, which would hold Shutdown up
	if srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}
	return err
}

// consume folds every result event into the records; it acks an event only after
// its record is written.
func (r *Reporter) consume(ctx context.Context) error {
	cfg := jetstream.ConsumerConfig{
		Durable:       events.ConsumerReporter,
		Description:   "folds job events into records",
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       10 * time.Second, // an event is folded in in milliseconds
		MaxAckPending: 1000,
	}
	return events.Consume(ctx, r.js, events.StreamResults, cfg, 64, r.log, func(m jetstream.Msg) { r.handle(ctx, m) })
}

func (r *Reporter) handle(ctx context.Context, m jetstream.Msg) {
	ev, err := events.Decode(m.Data())
	if err == nil {
		if _, ok := refOf(ev); !ok {
			err = fmt.Errorf("%w: %T on a result subject", events.ErrBadMessage, ev)
		}
	}
	if err != nil {
		r.log.Error().Err(err).Str("subject", m.Subject()).Msg("dropping a bad result message")
		_ = m.Term()
		return
	}
	who, err := r.verify(m, ev)
	var seq, delivered uint64
	var at time.Time
	if meta, merr := m.Metadata(); merr == nil && err == nil && who != "service" {
		// A runner's event: checked against the claims of its delivery.
		seq, at, delivered = meta.Sequence.Stream, meta.Timestamp, meta.NumDelivered
	}
	var rec *Record
	var changed bool
	if err == nil {
		rec, changed, err = r.store.apply(ctx, ev, seq, at)
	}
	if errors.Is(err, ErrWait) {
		_ = m.NakWithDelay(time.Duration(min(delivered, 10)) * time.Second)
		return
	}
	if errors.Is(err, events.ErrForged) {
		r.refuse(ctx, m, ev, who, err)
		_ = m.Term()
		return
	}
	var disputed *DisputedError
	if errors.As(err, &disputed) {
		// Kept in the history, marked, and shown to the admins; its tests
		// do not feed the test history.
		r.refuse(ctx, m, ev, who, err)
		_ = m.Ack()
		return
	}
	if err != nil {
		r.log.Warn().Err(err).Msg("storing a result; will retry")
		_ = m.NakWithDelay(time.Second)
		return
	}
	if fin, ok := ev.(*events.JobFinished); ok {
		if err := r.tests.Observe(ctx, fin); err != nil {
			r.log.Warn().Err(err).Msg("storing test history; will retry")
			_ = m.NakWithDelay(time.Second)
			return
		}
	}
	if changed && rec.Status.Final() {
		r.log.Info().Str("repo", rec.Repo).Str("branch", rec.Branch).Str("commit", events.Short(rec.Commit)).
			Str("job", rec.Job).Str("arch", rec.Arch).Str("status", string(rec.Status)).
			Uint64("attempt", rec.Attempt).Int64("duration_ms", rec.DurationMs).Msg("result")
	}
	if err := m.Ack(); err != nil {
		r.log.Debug().Err(err).Msg("ack result")
	}
}

// consumeForNotifier hands every finished event to the notifier, through its
// own durable consumer: only reporters with notifications on read it, so a
// reporter without them (say, the one in jetci up) never takes a result the
// notifier must see. The event is folded into its record first (a no-op when
// the folding consumer got there before), so the notifier sees the record with
// this result in it.
func (r *Reporter) consumeForNotifier(ctx context.Context) error {
	cfg := jetstream.ConsumerConfig{
		Durable:       events.ConsumerNotifierResults,
		Description:   "finished jobs, for notifications",
		FilterSubject: events.SubjectResults + ".*.*." + events.KindFinished,
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverNewPolicy, // turning notifications on does not mail about the past
		AckWait:       30 * time.Second,
		MaxAckPending: 1000,
	}
	return events.Consume(ctx, r.js, events.StreamResults, cfg, 64, r.log, func(m jetstream.Msg) {
		fin, err := events.DecodeAs[events.JobFinished](m.Data())
		if err != nil {
			_ = m.Term() // the folding consumer logs it
			return
		}
		if fin.Class == events.ClassBisect {
			// A culprit search's run of an older commit says nothing new
			// about the branch: no transition mail or webhook (the culprit
			// mail comes from the bisection's state, culprit.go).
			_ = m.Ack()
			return
		}
		who, err := r.verify(m, fin)
		var seq, delivered uint64
		var at time.Time
		if meta, merr := m.Metadata(); merr == nil && err == nil && who != "service" {
			seq, at, delivered = meta.Sequence.Stream, meta.Timestamp, meta.NumDelivered
		}
		var rec *Record
		if err == nil {
			rec, _, err = r.store.apply(ctx, fin, seq, at)
		}
		if errors.Is(err, ErrWait) {
			_ = m.NakWithDelay(time.Duration(min(delivered, 10)) * time.Second)
			return
		}
		var disputed *DisputedError
		if errors.Is(err, events.ErrForged) || errors.As(err, &disputed) {
			_ = m.Term() // refused, and recorded by the folding consumer
			return
		}
		if err == nil {
			// Also for an unchanged record: after a crash the redelivered
			// event must still produce the notification it may not have.
			err = r.notifier.Observe(ctx, rec)
		}
		if err != nil {
			r.log.Warn().Err(err).Msg("notifications for a result; will retry")
			_ = m.NakWithDelay(time.Second)
			return
		}
		_ = m.Ack()
	})
}

// consumeBranchStates tells the author of a commit that broke a gated branch
// to fix it within the fix window, and says when the branch failed its second
// check, through the notifier's outbox.
func (r *Reporter) consumeBranchStates(ctx context.Context) error {
	return consumeForMail(ctx, r, events.StreamBranch, events.ConsumerNotifierBranches, "branch state changes, for notifications",
		"a branch state", r.notifier.BranchChanged)
}

// consumeForMail feeds the notifier from a stream of state changes through
// its own durable consumer, when mail is configured: a message that does not
// decode is terminated, one the notifier could not take is retried.
func consumeForMail[T any](ctx context.Context, r *Reporter, stream, durable, description, what string,
	handle func(context.Context, *T) error) error {
	if r.cfg.Notify.Mail.SMTP == "" {
		return nil
	}
	cfg := jetstream.ConsumerConfig{
		Durable:       durable,
		Description:   description,
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverNewPolicy,
		AckWait:       30 * time.Second,
	}
	return events.Consume(ctx, r.js, stream, cfg, 16, r.log, func(m jetstream.Msg) {
		v, err := events.DecodeAs[T](m.Data())
		if err != nil {
			_ = m.Term()
			return
		}
		if err := handle(ctx, v); err != nil {
			r.log.Warn().Err(err).Msg("notification for " + what + "; will retry")
			_ = m.NakWithDelay(time.Second)
			return
		}
		_ = m.Ack()
	})
}

// logLimit lets a log line through at most once per period, and says how
// many it held back since.
type logLimit struct {
	mu      sync.Mutex
	period  time.Duration
	last    time.Time
	dropped int
}

func newLogLimit(period time.Duration) *logLimit { return &logLimit{period: period} }

// Allow reports whether a line may be logged now; held back reports how many
// were not since the last one allowed.
func (l *logLimit) Allow() bool { ok, _ := l.allow(); return ok }

func (l *logLimit) allow() (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if now.Sub(l.last) < l.period {
		l.dropped++
		return false, 0
	}
	l.last = now
	n := l.dropped
	l.dropped = 0
	return true, n
}
