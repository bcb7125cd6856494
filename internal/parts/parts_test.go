package parts

import (
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/metrics"
)

func healthz(t *testing.T, m *metrics.Metrics) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	b, _ := io.ReadAll(rec.Body)
	return rec.Code, string(b)
}

func metricsText(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}

// TestRestartedPartIsVisibleThenRecovers: a part that fails is started again
// after a pause; meanwhile /healthz answers 503 naming it and the metrics show
// it down with its restarts counted; once it runs again both say so.
func TestRestartedPartIsVisibleThenRecovers(t *testing.T) {
	old := Backoff
	Backoff.Min, Backoff.Max = 50*time.Millisecond, 200*time.Millisecond
	t.Cleanup(func() { Backoff = old })
	m := metrics.New(nil)
	ctx, cancel := context.WithCancel(context.Background())
	g, _ := New(ctx, "svc", m, zerolog.Nop())
	var runs atomic.Int32
	release := make(chan struct{})
	g.Restart("flaky", func(ctx context.Context) error {
		if runs.Add(1) <= 2 {
			<-release // fail only when the test has looked
			return errors.New("bucket gone")
		}
		<-ctx.Done()
		return nil
	})
	release <- struct{}{}
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := healthz(t, m)
		if code == 503 && strings.Contains(body, "svc/flaky") && strings.Contains(body, "bucket gone") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("healthz %d %q: want 503 naming the failed part", code, body)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if text := metricsText(t, m); !strings.Contains(text, `jetci_service_part_up{part="flaky",service="svc"} 0`) {
		t.Errorf("metrics do not show the part down:\n%s", text)
	}
	release <- struct{}{}
	for {
		code, _ := healthz(t, m)
		if code == 200 && runs.Load() == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("healthz %d after recovery", code)
		}
		time.Sleep(5 * time.Millisecond)
	}
	text := metricsText(t, m)
	for _, want := range []string{`jetci_service_part_up{part="flaky",service="svc"} 1`, `jetci_service_part_restarts_total{part="flaky",service="svc"} 2`} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	cancel()
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
}

// TestMustPartEndsTheServiceAndWaitWaitsForAll: a Must part's failure ends
// the group's context and is Wait's error, and Wait returns only after every
// part has returned.
func TestMustPartEndsTheServiceAndWaitWaitsForAll(t *testing.T) {
	g, gctx := New(context.Background(), "svc", nil, zerolog.Nop())
	var cleanedUp atomic.Bool
	g.Restart("slow to stop", func(ctx context.Context) error {
		<-ctx.Done()
		time.Sleep(50 * time.Millisecond)
		cleanedUp.Store(true)
		return nil
	})
	g.Must("core", func(context.Context) error { return errors.New("consumer deleted") })
	err := g.Wait()
	if err == nil || !strings.Contains(err.Error(), "svc: core: consumer deleted") {
		t.Fatalf("Wait: %v", err)
	}
	if gctx.Err() == nil || !cleanedUp.Load() {
		t.Fatal("Wait returned before every part had stopped")
	}
}
