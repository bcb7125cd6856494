// Package reporter is the end of the pipeline: it consumes the queued, started and
// finished events of every job from JETCI_RESULTS, folds them into exactly one
// record per job (record.go), and serves those records to people: `jetci
// results`, a JSON API under /api/v1/ and a web page.
//
// The records live in a SQL read model (package readmodel: a SQLite file, or
// PostgreSQL), folded from the stream in batched transactions that also store
// the stream sequence applied (fold.go), so a reporter can be restarted, or
// run several times, without losing or doubling a result; events older than
// what a record holds (a late report from a runner whose job was redelivered)
// change nothing. The fold also writes each record to the jetci-results
// bucket, for the dispatcher and `jetci artifacts`. Pages and the API read
// the read model through indexes, page by page (view.go); only live things
// (runners, branch states, the latest cell of each module × job × arch) are
// kept in memory.
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
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/internal/parts"
	"github.com/jetci/jetci/metrics"
	"github.com/jetci/jetci/reporter/readmodel"
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
	// DB is the read model: a postgres:// URL, or the path of a SQLite file
	// (created, and rebuilt from the streams when missing). Empty: a SQLite
	// file in a new temporary directory, removed when Run ends (tests).
	DB string
	// HistoryRetention, when set, deletes finished records from the read
	// model once they are older than this (0: keep everything).
	HistoryRetention time.Duration
	// Health, when set, reports a problem of the whole installation (the NATS
	// store out of disk space, say): /healthz answers 503 with it, and every
	// page shows it in a banner. nil or a nil error: healthy.
	Health func() error
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
	jsProblem atomic.Pointer[error] // what the JetStream watch saw last (nil: nothing yet)
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
	db        *readmodel.DB
	dbTemp    string       // a temporary directory holding db, removed at the end
	keys      *events.Keys // who may report results
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
	if err := r.openDB(ctx); err != nil {
		return nil, err
	}
	r.view = NewView(r.db, js, store.runners, log)
	r.view.results = store.kv
	r.view.guard = r.admitter(store)
	badLog := newLogLimit(time.Second)
	r.view.OnBad = func(key string, err error) {
		r.cfg.Metrics.Forgery("record")
		if badLog.Allow() {
			r.log.Warn().Str("key", key).Err(err).Msg("a damaged record")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = r.forgeries.add(ctx, Forgery{What: "record", Reason: "not a valid record: " + err.Error(), Object: key}, []byte(key+"\x00"+err.Error()))
	}
	if b, err := js.KeyValue(ctx, events.BucketBranches); err == nil {
		r.view.branches = b
	}
	if kv, err := js.KeyValue(ctx, events.BucketNotify); err == nil {
		r.view.notifyKV = kv // the pull requests heard of, for the pages
	}
	if cfg.HTTP != "" {
		if r.ln, err = net.Listen("tcp", cfg.HTTP); err != nil {
			r.closeDB()
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
			r.closeDB()
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
	defer r.closeDB()
	// Run owns its parts and waits for every one of them. Folding results
	// into records and the web server are the reporter: their failure ends
	// Run. The notification parts are restarted when they fail (with a
	// pause, shown in /healthz and the metrics). A part with nothing to do
	// returns nil at once.
	g, gctx := parts.New(ctx, "reporter", r.cfg.Metrics, r.log)
	vctx, stopView := context.WithCancel(gctx)
	defer stopView()
	g.Must("view", func(context.Context) error { r.view.Run(vctx); return nil })
	if r.ln != nil {
		srv := &http.Server{Handler: r.Handler(), ReadHeaderTimeout: 10 * time.Second,
			BaseContext: func(net.Listener) context.Context { return vctx }}
		mode := "read-only: no --admin-token"
		if r.auth.enabled() {
			mode = "actions enabled with the admin token"
		}
		r.log.Info().Str("addr", "http://"+r.Addr()).Str("actions", mode).Msg("web UI and API listening")
		g.Must("http", func(ctx context.Context) error {
			served := make(chan error, 1)
			go func() { served <- srv.Serve(r.ln) }()
			select {
			case err := <-served:
				if errors.Is(err, http.ErrServerClosed) {
					return nil
				}
				return fmt.Errorf("reporter: http: %w", err)
			case <-ctx.Done():
			}
			stopView() // ends event streams, which would hold Shutdown up
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
			<-served
			return nil
		})
	}
	g.Must("results", r.consume)
	g.Must("query service", r.queryService)
	g.Restart("jetstream watch", func(ctx context.Context) error {
		return parts.WatchJetStream(ctx, r.js, events.StreamResults, events.HealthSubject("reporter", nuid.Next()), r.cfg.Metrics, func(err error) { r.jsProblem.Store(&err) }, r.log)
	})
	if r.cfg.HistoryRetention > 0 {
		g.Restart("retention", func(ctx context.Context) error { r.prune(ctx); return nil })
	}
	if r.notifier != nil {
		g.Restart("notify outbox", r.notifier.RunOutbox)
		g.Restart("notify results", r.consumeForNotifier)
		g.Restart("pending statuses", r.consumeQueued)
		g.Restart("branch states", r.consumeBranchStates)
		g.Restart("bisections", r.consumeBisections)
		r.log.Info().Str("smtp", r.cfg.Notify.Mail.SMTP).Int("webhooks", len(r.cfg.Notify.Webhooks)).Int("forges", len(r.cfg.Notify.Forges)).
			Str("public_url", r.cfg.Notify.PublicURL).Msg("notifications on")
	}
	return g.Wait()
}

// consume feeds the per-test history from every finished event (the records
// themselves are folded by the read model, fold.go, which also writes them
// to the jetci-results bucket); it acks an event only after it is stored.
func (r *Reporter) consume(ctx context.Context) error {
	cfg := jetstream.ConsumerConfig{
		Durable:       events.ConsumerReporter,
		Description:   "finished jobs, for the test history",
		FilterSubject: events.SubjectResults + ".*.*." + events.KindFinished,
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
	fin, ok := ev.(*events.JobFinished)
	if !ok {
		_ = m.Ack() // the consumer of a server set up before the filter: not for this one
		return
	}
	if len(fin.Tests) == 0 && len(fin.FailedTries) == 0 {
		// Nothing for the test history (TestStore.Observe would store
		// nothing): no signature check nor look at the fold's record,
		// which cost as much as the fold itself for such a result.
		_ = m.Ack()
		return
	}
	// Only results the fold took feed the test history: not a forged one,
	// nor a disputed run's, nor one still waiting to be judged.
	meta, err := m.Metadata()
	if err != nil {
		_ = m.Term()
		return
	}
	took, marked, judgeErr := r.view.judged(ctx, fin, meta.Sequence.Stream)
	if judgeErr != nil || !marked {
		// Not known as a runner's result whose signature the fold checked
		// (marked): checked here. A marked one skips this second ed25519
		// verification, a third of the reporter's CPU per job with tests.
		who, err := r.verify(m, ev)
		if err != nil {
			_ = m.Term() // the fold records it as forged
			return
		}
		if who != "service" {
			if judgeErr != nil {
				_ = m.NakWithDelay(time.Second) // the fold has not got there yet
				return
			}
			if !took {
				_ = m.Ack()
				return
			}
		}
	}
	if err := r.tests.Observe(ctx, fin); err != nil {
		r.log.Warn().Err(err).Msg("storing test history; will retry")
		_ = m.NakWithDelay(time.Second)
		return
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
			r.log.Debug().Err(err).Str("job_id", fin.JobID).Msg("no notification for a refused result")
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
