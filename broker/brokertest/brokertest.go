// Package brokertest starts a real embedded JetStream server for tests: random
// loopback port, storage in t.TempDir(), jetci's streams and buckets created.
// The server's log is kept and shown when the test fails.
package brokertest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker"
	"github.com/jetci/jetci/events"
)

// Server is a test server with a client connection.
type Server struct {
	*broker.Server
	URL string
	NC  *nats.Conn
	JS  jetstream.JetStream
	dir string
	log *serverLog
}

// Log is what the server logged so far (also shown when the test fails).
func (s *Server) Log() string { return s.log.String() }

// Run starts a server with jetci's streams; it stops when the test ends.
func Run(tb testing.TB) *Server {
	tb.Helper()
	return RunDir(tb, tb.TempDir())
}

// RunDir starts a server storing in dir, so a test can stop it and start it again
// on the same data.
func RunDir(tb testing.TB, dir string) *Server {
	tb.Helper()
	return RunAt(tb, dir, "127.0.0.1:0")
}

// RunAt starts a server storing in dir and listening on addr, so a test can stop
// it and bring it back where its clients reconnect.
func RunAt(tb testing.TB, dir, addr string) *Server {
	tb.Helper()
	logs := &serverLog{}
	// Registered first, so it runs last: after the server's shutdown.
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("nats server log (%s, %s):\n%s", addr, dir, logs.String())
		}
	})
	srv, err := broker.Start(broker.Config{Listen: addr, StoreDir: dir}, zerolog.New(logs).Level(zerolog.DebugLevel).With().Timestamp().Logger())
	if err != nil {
		tb.Fatalf("start nats: %v\nits log:\n%s", err, logs.String())
	}
	nc, js, err := events.Connect(srv.ClientURL(), events.ConnectOptions{Name: "test", Log: zerolog.Nop()})
	if err != nil {
		srv.Shutdown()
		tb.Fatalf("connect: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := events.DefaultSetup().Ensure(ctx, js); err != nil {
		tb.Fatalf("setup: %v", err)
	}
	s := &Server{Server: srv, URL: srv.ClientURL(), NC: nc.Conn, JS: js, dir: dir, log: logs}
	tb.Cleanup(s.Stop)
	return s
}

// serverLog keeps the server's log for a failing test: the last
// serverLogMax bytes of it.
type serverLog struct {
	mu  sync.Mutex
	buf []byte
	cut bool
}

const serverLogMax = 1 << 20

func (l *serverLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	if over := len(l.buf) - serverLogMax; over > 0 {
		l.buf, l.cut = append(l.buf[:0], l.buf[over:]...), true
	}
	return len(p), nil
}

func (l *serverLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cut {
		return "[…earlier lines dropped]\n" + string(l.buf)
	}
	return string(l.buf)
}

// Stop closes the client and shuts the server down; it is safe to call twice.
func (s *Server) Stop() {
	if s.NC != nil {
		s.NC.Close()
		s.NC = nil
		s.Server.Shutdown()
	}
}

// Logger returns a zerolog logger that writes to the test log.
func Logger(tb testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.ConsoleWriter{Out: testWriter{tb}, NoColor: true}).With().Timestamp().Logger()
}

type testWriter struct{ tb testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.tb.Log(string(p))
	return len(p), nil
}

// CheckFor polls f every 'every' until it returns nil or total passes.
func CheckFor(tb testing.TB, total, every time.Duration, f func() error) {
	tb.Helper()
	deadline := time.Now().Add(total)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(every)
	}
	tb.Fatalf("condition not met after %v: %v", total, err)
}

// RunConfig starts a nats-server in this process from a configuration file, as
// the real nats-server would read it (a leaf node, a hub with a domain), with
// adjust applied to its options first (nil: none). It does not set up jetci's
// streams; it stops when the test ends.
func RunConfig(tb testing.TB, file string, adjust func(*server.Options)) *server.Server {
	tb.Helper()
	opts, err := server.ProcessConfigFile(file)
	if err != nil {
		tb.Fatal(err)
	}
	opts.NoSigs, opts.NoLog = true, true
	if adjust != nil {
		adjust(opts)
	}
	s, err := server.NewServer(opts)
	if err != nil {
		tb.Fatal(err)
	}
	go s.Start()
	tb.Cleanup(s.Shutdown)
	if !s.ReadyForConnections(10 * time.Second) {
		tb.Fatalf("nats-server from %s did not start", file)
	}
	return s
}
