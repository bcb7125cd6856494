package metrics

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Service parts: the goroutines a service's Run owns (the dispatcher's reaper,
// aging, periodic check, gate, culprit search; the reporter's consumers). Each
// reports whether it runs; a part that failed and waits to be restarted makes
// /healthz answer 503 and names it, and the metrics count its restarts.

type partState struct {
	err   error
	since time.Time
}

type parts struct {
	once     sync.Once
	up       *prometheus.GaugeVec
	restarts *prometheus.CounterVec
	spooled  prometheus.Gauge

	mu       sync.Mutex
	state    map[string]partState // "service/part" -> state
	problems map[string]error     // what a watch sees wrong outside the service (SetProblem)
}

func (m *Metrics) partsInit() *parts {
	m.parts.once.Do(func() {
		m.parts.up = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "jetci_service_part_up",
			Help: "1 while a part of a service (reaper, aging, consumers…) runs, 0 while it waits to be restarted after a failure."}, []string{"service", "part"})
		m.parts.restarts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetci_service_part_restarts_total",
			Help: "Times a part of a service failed and was restarted."}, []string{"service", "part"})
		m.parts.spooled = prometheus.NewGauge(prometheus.GaugeOpts{Name: "jetci_runner_spooled_logs",
			Help: "Job logs kept on the runner's disk because the log store did not answer; uploaded when it does."})
		m.parts.state = map[string]partState{}
		m.parts.problems = map[string]error{}
		m.reg.MustRegister(m.parts.up, m.parts.restarts, m.parts.spooled)
	})
	return &m.parts
}

// PartUp records that a part of service runs.
func (m *Metrics) PartUp(service, part string) {
	if m == nil {
		return
	}
	p := m.partsInit()
	p.up.WithLabelValues(service, part).Set(1)
	p.mu.Lock()
	p.state[service+"/"+part] = partState{since: time.Now()}
	p.mu.Unlock()
}

// PartFailed records that a part of service failed with err and will be
// restarted.
func (m *Metrics) PartFailed(service, part string, err error) {
	if m == nil {
		return
	}
	p := m.partsInit()
	p.up.WithLabelValues(service, part).Set(0)
	p.restarts.WithLabelValues(service, part).Inc()
	p.mu.Lock()
	p.state[service+"/"+part] = partState{err: err, since: time.Now()}
	p.mu.Unlock()
}

// SetProblem records (err non-nil) or clears what a watch sees wrong outside
// the service, under name: /healthz answers 503 with it while it lasts.
func (m *Metrics) SetProblem(name string, err error) {
	if m == nil {
		return
	}
	p := m.partsInit()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err == nil {
		delete(p.problems, name)
	} else {
		p.problems[name] = err
	}
}

// Problem returns what the watch name last saw wrong, nil when nothing.
func (m *Metrics) Problem(name string) error {
	if m == nil {
		return nil
	}
	p := m.partsInit()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.problems[name]
}

// SetSpooledLogs sets how many job logs wait on the runner's disk.
func (m *Metrics) SetSpooledLogs(n int) {
	if m != nil {
		m.partsInit().spooled.Set(float64(n))
	}
}

// PartsHealth reports the parts that are down, one line each; empty when
// every part runs.
func (m *Metrics) PartsHealth() []string {
	if m == nil {
		return nil
	}
	p := m.partsInit()
	p.mu.Lock()
	defer p.mu.Unlock()
	var down []string
	for name, s := range p.state {
		if s.err != nil {
			down = append(down, fmt.Sprintf("%s: failed %s ago, restarting: %v", name, time.Since(s.since).Round(time.Second), s.err))
		}
	}
	for name, err := range p.problems {
		down = append(down, fmt.Sprintf("%s: %v", name, err))
	}
	sort.Strings(down)
	return down
}

// healthz answers ok, or 503 naming the parts that are down.
func (m *Metrics) healthz(w http.ResponseWriter, _ *http.Request) {
	if down := m.PartsHealth(); len(down) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(strings.Join(down, "\n") + "\n"))
		return
	}
	_, _ = w.Write([]byte("ok\n"))
}
