package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/metrics"
)

// serve connects a long-running service to NATS (waiting for the server and
// setting up jetci's streams), serves its metrics on maddr, runs it, and drains
// the connection when it returns. queueMetrics adds the queue depth collectors.
func (m *Main) serve(ctx context.Context, nf *natsFlags, name, maddr string, queueMetrics bool, log zerolog.Logger,
	run func(nc *nats.Conn, js jetstream.JetStream, m *metrics.Metrics) error) error {
	nc, js, err := m.connectService(ctx, nf, name, log)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while waiting for the server
		}
		return err
	}
	defer drain(nc, log)
	var qjs jetstream.JetStream
	if queueMetrics {
		qjs = js
	}
	mets, err := startMetrics(ctx, maddr, qjs, log)
	if err != nil {
		return err
	}
	return run(nc, js, mets)
}

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
