package metrics_test

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/metrics"
)

func scrape(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	rr := httptest.NewRecorder()
	m.Handler().ServeHTTP(rr, httptest.NewRequest("GET", "/metrics", nil))
	b, _ := io.ReadAll(rr.Body)
	return string(b)
}

func TestMetrics(t *testing.T) {
	s := brokertest.Run(t)
	if _, err := events.EnsureJobConsumers(context.Background(), s.JS, "default", "riscv64"); err != nil {
		t.Fatal(err)
	}
	s.JS.Publish(context.Background(), events.JobSubject("default", "riscv64", events.ClassFirst, "r", "b"), []byte("{}"))
	m := metrics.New(s.JS)
	m.JobQueued("default", "riscv64", events.ClassFirst)
	done := m.JobStarted("default", "amd64", 2)
	done(events.StatusPassed)
	m.Poll("proj", 3*time.Millisecond, nil)
	m.CommitDetected("proj")
	m.HandedBack()
	out := scrape(t, m)
	for _, want := range []string{
		`jetci_jobs_queued_total{arch="riscv64",class="first",pool="default"} 1`,
		`jetci_jobs_finished_total{arch="amd64",pool="default",status="passed"} 1`,
		`jetci_job_redeliveries_total{arch="amd64",pool="default"} 1`,
		`jetci_jobs_running{arch="amd64",pool="default"} 0`,
		`jetci_job_duration_seconds_count{arch="amd64",pool="default",status="passed"} 1`,
		`jetci_queue_depth{arch="riscv64",class="first",pool="default"} 1`,
		`jetci_queue_oldest_age_seconds{arch="riscv64",class="first",pool="default"}`,
		`jetci_observer_poll_seconds_count{repo="proj"} 1`,
		`jetci_commits_detected_total{repo="proj"} 1`,
		`jetci_jobs_handed_back_total 1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	// A nil *Metrics records nothing and does not panic.
	var none *metrics.Metrics
	none.JobQueued("p", "a", events.ClassUser)
	none.JobStarted("p", "a", 1)(events.StatusFailed)
	none.Poll("r", 0, nil)
}
