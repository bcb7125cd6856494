package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/metrics"
)

func metricsFlag(fs *flag.FlagSet) *string {
	return fs.String("metrics", "", "serve Prometheus /metrics and /healthz on this address, host:port (empty: none)")
}

// startMetrics serves a process's metrics on addr until ctx ends. With an empty
// addr it still returns metrics to record into, served nowhere.
func startMetrics(ctx context.Context, addr string, js jetstream.JetStream, log zerolog.Logger) (*metrics.Metrics, error) {
	m := metrics.New(js)
	if addr == "" {
		return m, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics %s: %w", addr, err)
	}
	srv := &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("metrics server")
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info().Str("addr", "http://"+ln.Addr().String()+"/metrics").Msg("metrics listening")
	return m, nil
}
