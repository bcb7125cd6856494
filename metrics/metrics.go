// Package metrics is jetci's Prometheus instrumentation: the counters, gauges and
// histograms the services update, collectors that read queue state from
// JetStream at scrape time, and the /metrics and /healthz handler. A nil
// *Metrics is valid and records nothing, so services need no checks.
package metrics

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/jetci/jetci/events"
)

// Metrics holds every jetci metric of one process.
type Metrics struct {
	reg *prometheus.Registry

	queued      *prometheus.CounterVec
	started     *prometheus.CounterVec
	finished    *prometheus.CounterVec
	running     *prometheus.GaugeVec
	duration    *prometheus.HistogramVec
	redelivered *prometheus.CounterVec
	handedBack  prometheus.Counter
	gaveUp      prometheus.Counter
	pollTime    *prometheus.HistogramVec
	pollErrors  *prometheus.CounterVec
	commits     *prometheus.CounterVec
	limitHits   *prometheus.CounterVec
	notes       *prometheus.CounterVec
	parts       parts // parts.go
	forged      *prometheus.CounterVec
	authFailed  *prometheus.CounterVec
}

// New creates the metrics of a process. With js non-nil, each scrape also reports
// the depth and oldest waiting age of every job partition.
func New(js jetstream.JetStream) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	part := []string{"pool", "arch"}
	m.queued = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetci_jobs_queued_total", Help: "Jobs queued by the dispatcher."}, []string{"pool", "arch", "class"})
	m.started = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetci_jobs_started_total", Help: "Job attempts started by this runner."}, part)
	m.finished = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetci_jobs_finished_total", Help: "Job attempts finished, by status."}, []string{"pool", "arch", "status"})
	m.running = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "jetci_jobs_running", Help: "Jobs running on this runner now."}, part)
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "jetci_job_duration_seconds", Help: "Job run time, checkout included.",
		Buckets: prometheus.ExponentialBuckets(0.05, 2.5, 12)}, []string{"pool", "arch", "status"})
	m.redelivered = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetci_job_redeliveries_total", Help: "Job attempts after the first (a runner died or gave the job back)."}, part)
	m.handedBack = prometheus.NewCounter(prometheus.CounterOpts{Name: "jetci_jobs_handed_back_total", Help: "Jobs of runners whose lease expired, handed back to the queue."})
	m.gaveUp = prometheus.NewCounter(prometheus.CounterOpts{Name: "jetci_jobs_gave_up_total", Help: "Jobs that reached their delivery limit and were recorded as errors."})
	m.pollTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "jetci_observer_poll_seconds", Help: "Time of one poll of a repository.",
		Buckets: prometheus.ExponentialBuckets(0.002, 2.5, 12)}, []string{"repo"})
	m.pollErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetci_observer_poll_errors_total", Help: "Polls of a repository that failed."}, []string{"repo"})
	m.commits = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetci_commits_detected_total", Help: "Commits published by the observer."}, []string{"repo"})
	m.limitHits = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetci_observer_commit_limit_hits_total",
		Help: "Polls that found more new commits on a branch than --max-new-commits: only the newest were published, older ones were skipped."}, []string{"repo"})
	m.notes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetci_notifications_total",
		Help: "Notifications by kind (mail, webhook) and outcome: sent, failed (a try failed; it is retried), gave_up, dropped (outbox full), doubt (a crash left it unknown whether it went out; not resent), unrenderable (its mail template failed; not sent)."},
		[]string{"kind", "outcome"})
	m.forged = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetci_forgeries_total",
		Help: "Things the reporter refused as forged: result events, logs and artifacts that do not match their signed digest, bad records."}, []string{"what"})
	m.authFailed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetci_auth_failures_total",
		Help: "Failed logins and bearer tokens (outcome=refused), and attempts turned away by the per-client backoff (outcome=throttled)."}, []string{"outcome"})
	m.reg.MustRegister(m.forged, m.authFailed, m.notes, m.queued, m.started, m.finished, m.running, m.duration, m.redelivered, m.handedBack, m.gaveUp,
		m.pollTime, m.pollErrors, m.commits, m.limitHits, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if js != nil {
		m.reg.MustRegister(&queueCollector{js: js})
	}
	return m
}

// Handler serves /metrics and /healthz.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.MetricsHandler())
	mux.HandleFunc("/healthz", m.healthz)
	return mux
}

// MetricsHandler serves the Prometheus text format.
func (m *Metrics) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// JobQueued counts a job put on the queue.
func (m *Metrics) JobQueued(pool, arch string, class events.Class) {
	if m != nil {
		m.queued.WithLabelValues(pool, arch, string(class)).Inc()
	}
}

// JobStarted counts an attempt a runner began; it returns the function that
// records its end.
func (m *Metrics) JobStarted(pool, arch string, attempt uint64) func(status events.Status) {
	if m == nil {
		return func(events.Status) {}
	}
	start := time.Now()
	m.started.WithLabelValues(pool, arch).Inc()
	if attempt > 1 {
		m.redelivered.WithLabelValues(pool, arch).Inc()
	}
	m.running.WithLabelValues(pool, arch).Inc()
	return func(status events.Status) {
		m.running.WithLabelValues(pool, arch).Dec()
		if status != "" {
			m.finished.WithLabelValues(pool, arch, string(status)).Inc()
			m.duration.WithLabelValues(pool, arch, string(status)).Observe(time.Since(start).Seconds())
		}
	}
}

// HandedBack counts a job of a dead runner handed back to the queue.
func (m *Metrics) HandedBack() {
	if m != nil {
		m.handedBack.Inc()
	}
}

// GaveUp counts a job recorded as an error after its last delivery.
func (m *Metrics) GaveUp() {
	if m != nil {
		m.gaveUp.Inc()
	}
}

// Poll records one poll of a repository.
func (m *Metrics) Poll(repo string, took time.Duration, err error) {
	if m == nil {
		return
	}
	m.pollTime.WithLabelValues(repo).Observe(took.Seconds())
	if err != nil {
		m.pollErrors.WithLabelValues(repo).Inc()
	}
}

// CommitDetected counts a commit the observer published.
func (m *Metrics) CommitDetected(repo string) {
	if m != nil {
		m.commits.WithLabelValues(repo).Inc()
	}
}

// CommitLimitHit counts a poll that found more new commits on a branch than
// the observer may publish at once.
func (m *Metrics) CommitLimitHit(repo string) {
	if m != nil {
		m.limitHits.WithLabelValues(repo).Inc()
	}
}

// queueCollector reads the job partitions' state from JetStream at scrape time.
type queueCollector struct{ js jetstream.JetStream }

var (
	depthDesc = prometheus.NewDesc("jetci_queue_depth", "Jobs waiting for a runner, per partition.", []string{"pool", "arch", "class"}, nil)
	ageDesc   = prometheus.NewDesc("jetci_queue_oldest_age_seconds", "Age of the oldest job not yet done, per partition.", []string{"pool", "arch", "class"}, nil)
)

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) { ch <- depthDesc; ch <- ageDesc }

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := c.js.Stream(ctx, events.StreamJobs)
	if err != nil {
		return
	}
	lister := stream.ListConsumers(ctx)
	for info := range lister.Info() {
		// run-<pool>-<arch>-<class>; pool and arch contain no '-'-free guarantee,
		// so read them from the filter instead: jetci.job.<pool>.<arch>.<class>.>
		parts := strings.Split(info.Config.FilterSubject, ".")
		if len(parts) != 6 || parts[0]+"."+parts[1] != events.SubjectJobs {
			continue
		}
		pool, arch, class := parts[2], parts[3], parts[4]
		ch <- prometheus.MustNewConstMetric(depthDesc, prometheus.GaugeValue, float64(info.NumPending), pool, arch, class)
		age := 0.0
		if msg, err := stream.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(info.Config.FilterSubject)); err == nil {
			age = time.Since(msg.Time).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(ageDesc, prometheus.GaugeValue, age, pool, arch, class)
	}
}

// Notification counts one outcome of a notification.
func (m *Metrics) Notification(kind, outcome string) {
	if m != nil {
		m.notes.WithLabelValues(kind, outcome).Inc()
	}
}

// Forgery counts one thing refused as forged (result, log, artifact, record).
func (m *Metrics) Forgery(what string) {
	if m != nil {
		m.forged.WithLabelValues(what).Inc()
	}
}

// AuthFailure counts a wrong token (refused) or an attempt turned away while
// its client waits out its backoff (throttled).
func (m *Metrics) AuthFailure(outcome string) {
	if m != nil {
		m.authFailed.WithLabelValues(outcome).Inc()
	}
}
