package reporter

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jetci/jetci/broker/brokertest"
)

// TestHealthProblemOnHealthzAndPages: a problem Config.Health reports makes
// /healthz answer 503 with it and puts a banner on every page; when it goes
// away, both are back to normal.
func TestHealthProblemOnHealthzAndPages(t *testing.T) {
	s := brokertest.Run(t)
	var problem atomic.Value
	problem.Store("")
	health := func() error {
		if p := problem.Load().(string); p != "" {
			return errors.New(p)
		}
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rep, err := New(ctx, Config{Health: health}, s.JS, brokertest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- rep.Run(ctx) }()
	defer func() { cancel(); <-done }()
	get := func(path string) (int, string) {
		rr := httptest.NewRecorder()
		rep.Handler().ServeHTTP(rr, httptest.NewRequest("GET", path, nil))
		return rr.Code, rr.Body.String()
	}
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if code, _ := get("/"); code != http.StatusOK {
			return fmt.Errorf("overview: %d", code)
		}
		return nil
	})
	if code, body := get("/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("healthy: %d %q", code, body)
	}
	problem.Store("the NATS store /x is almost full <b>")
	if code, body := get("/healthz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "almost full") {
		t.Fatalf("/healthz with a problem: %d %q", code, body)
	}
	for _, path := range []string{"/", "/queue", "/runners"} {
		if _, page := get(path); !strings.Contains(page, "jetci cannot save new work") || !strings.Contains(page, "almost full &lt;b&gt;") {
			t.Fatalf("%s shows no (escaped) banner", path)
		}
	}
	problem.Store("")
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Fatalf("after the problem went away: %d", code)
	}
	if _, page := get("/"); strings.Contains(page, "jetci cannot save new work") {
		t.Fatal("the banner stays after the problem went away")
	}
}
