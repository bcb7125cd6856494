// Package broker owns the embedded NATS server with JetStream: `jetci up` and
// `jetci server` run it in-process, and tests start one per test on a random port.
// It is the only package that imports nats-server; every other package talks to
// NATS as a client, so the same code runs against a real nats-server or cluster.
package broker

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// Config says how to run the embedded server.
type Config struct {
	// ConfigFile is a nats-server configuration file (the same syntax the real
	// nats-server reads). When set, Listen and StoreDir override it only if non-empty.
	ConfigFile string
	// Listen is the client address, host:port; port 0 picks a free one.
	Listen string
	// StoreDir is where JetStream keeps its files.
	StoreDir string
	// HTTP is an optional monitoring address, host:port; port 0 picks a free one.
	HTTP string
	// TLSCert and TLSKey make the server serve TLS to clients (and require it);
	// with TLSCA too, clients must present a certificate signed by that CA.
	// They override a tls block of ConfigFile.
	TLSCert, TLSKey, TLSCA string
	// DiskCheck is how often the store's free space is checked (0: every 5 s).
	// DiskLow is the free space under which the store counts as full (0: 32 MiB);
	// once a write failed, JetStream is restarted when this much is free again.
	DiskCheck time.Duration
	DiskLow   int64
}

// DefaultConfig listens on the loopback NATS port and stores under ./.jetci/nats.
func DefaultConfig() Config {
	return Config{Listen: "127.0.0.1:4222", StoreDir: ".jetci/nats"}
}

// Validate reports the first bad field.
func (c Config) Validate() error {
	if c.ConfigFile == "" && c.StoreDir == "" {
		return errors.New("broker: StoreDir is empty: JetStream needs a directory")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("broker: TLSCert and TLSKey go together")
	}
	if c.TLSCA != "" && c.TLSCert == "" {
		return errors.New("broker: TLSCA (verify clients) needs TLSCert and TLSKey")
	}
	if c.Listen != "" {
		if _, _, err := splitHostPort(c.Listen); err != nil {
			return fmt.Errorf("broker: Listen %q: %w", c.Listen, err)
		}
	}
	return nil
}

// Server is a running embedded NATS server.
type Server struct {
	mu   sync.Mutex
	ns   *server.Server // replaced by a restart after a full disk
	opts *server.Options
	log  zerolog.Logger
	disk *disk
	stop chan struct{}
	done chan struct{}
}

// Start runs the server and waits until it accepts clients.
func Start(cfg Config, log zerolog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opts := &server.Options{}
	if cfg.ConfigFile != "" {
		o, err := server.ProcessConfigFile(cfg.ConfigFile)
		if err != nil {
			return nil, fmt.Errorf("broker: config %s: %w", cfg.ConfigFile, err)
		}
		opts = o
	}
	opts.JetStream = true
	opts.NoSigs = true
	if cfg.StoreDir != "" {
		opts.StoreDir = cfg.StoreDir
	}
	if cfg.Listen != "" {
		host, port, _ := splitHostPort(cfg.Listen)
		opts.Host, opts.Port = host, port
		if port == 0 {
			opts.Port = server.RANDOM_PORT
		} else if l, err := net.Listen("tcp", cfg.Listen); err != nil {
			return nil, fmt.Errorf("broker: cannot listen on %s: %w (is another jetci or nats-server running? choose another address)", cfg.Listen, err)
		} else {
			l.Close()
		}
	}
	if cfg.TLSCert != "" {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: cfg.TLSCert, KeyFile: cfg.TLSKey, CaFile: cfg.TLSCA, Verify: cfg.TLSCA != ""})
		if err != nil {
			return nil, fmt.Errorf("broker: TLS: %w", err)
		}
		opts.TLSConfig, opts.TLS, opts.TLSVerify = tc, true, cfg.TLSCA != ""
		opts.TLSCert, opts.TLSKey, opts.TLSCaCert = cfg.TLSCert, cfg.TLSKey, cfg.TLSCA
	}
	if cfg.HTTP != "" {
		host, port, err := splitHostPort(cfg.HTTP)
		if err != nil {
			return nil, fmt.Errorf("broker: HTTP %q: %w", cfg.HTTP, err)
		}
		opts.HTTPHost, opts.HTTPPort = host, port
		if port == 0 {
			opts.HTTPPort = server.RANDOM_PORT
		}
	}
	d := &disk{every: cfg.DiskCheck, low: cfg.DiskLow, free: -1, log: log.With().Str("component", "store").Logger()}
	if d.every <= 0 {
		d.every = DefaultDiskCheck
	}
	if d.low <= 0 {
		d.low = DefaultDiskLow
	}
	s := &Server{opts: opts, log: log, stop: make(chan struct{}), done: make(chan struct{})}
	ns, err := s.newServer(d, cfg.Listen)
	if err != nil {
		return nil, err
	}
	s.ns = ns
	// A restart (after a full disk) comes back on the same addresses, also
	// when the first start picked free ports.
	if a, ok := ns.Addr().(*net.TCPAddr); ok {
		opts.Port = a.Port
	}
	if a, ok := ns.MonitorAddr(), opts.HTTPPort != 0; ok && a != nil {
		opts.HTTPPort = a.Port
	}
	if jcfg, ok := jetStreamConfig(ns); ok {
		d.dir, s.disk = jcfg.StoreDir, d
		d.check(s)
		go func() {
			defer close(s.done)
			d.run(s, s.stop)
		}()
	} else {
		close(s.done)
	}
	return s, nil
}

// newServer makes and starts a nats-server of s.opts and waits until it
// accepts clients.
func (s *Server) newServer(d *disk, listen string) (*server.Server, error) {
	ns, err := server.NewServer(s.opts)
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	ns.SetLoggerV2(&logger{log: s.log.With().Str("component", "nats").Logger(), disk: d}, false, false, false)
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("broker: server not ready on %s within 30s (port in use?)", listen)
	}
	return ns, nil
}

// current is the running nats-server (a new one after a restart).
func (s *Server) current() *server.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ns
}

// restart stops the nats-server and starts a new one on the same addresses
// and store, which loads every stream from disk again. Clients see their
// connection drop and reconnect. Restarting the server object, rather than
// only its JetStream (ShutdownJetStream, EnableJetStream), because
// nats-server re-creates its API queues on EnableJetStream while client
// requests are dispatched to them: a data race inside nats-server.
func (s *Server) restart(d *disk) error {
	old := s.current()
	old.Shutdown()
	old.WaitForShutdown()
	ns, err := s.newServer(d, net.JoinHostPort(s.opts.Host, strconv.Itoa(s.opts.Port)))
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.ns = ns
	s.mu.Unlock()
	return nil
}

// StorageProblem says what is wrong with the JetStream store of this server —
// a write failed (a full disk), or little space is left — or returns nil.
func (s *Server) StorageProblem() error { return s.disk.problem() }

// StoreFree is the free space of the JetStream store's file system at the last
// check, -1 when unknown.
func (s *Server) StoreFree() int64 {
	if s.disk == nil {
		return -1
	}
	s.disk.mu.Lock()
	defer s.disk.mu.Unlock()
	return s.disk.free
}

// InProcess is the client option that connects to this server in-process,
// without the network (and without TLS); credentials are still checked.
func (s *Server) InProcess() nats.Option { return nats.InProcessServer(s.current()) }

// AuthRequired reports whether clients must give credentials.
func (s *Server) AuthRequired() bool {
	o := s.opts
	return o.Username != "" || o.Authorization != "" || len(o.Users) > 0 || len(o.Nkeys) > 0 ||
		len(o.TrustedOperators) > 0 || len(o.TrustedKeys) > 0 || o.TLSMap
}

// TLS reports whether the server serves TLS to clients.
func (s *Server) TLS() bool { return s.opts.TLSConfig != nil }

// Loopback reports whether clients can reach the server only from this machine.
func (s *Server) Loopback() bool {
	host := s.opts.Host
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ClientURL is the URL clients connect to.
func (s *Server) ClientURL() string { return s.current().ClientURL() }

// Shutdown stops the server and waits until it is down.
func (s *Server) Shutdown() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	ns := s.current()
	ns.Shutdown()
	ns.WaitForShutdown()
}

func splitHostPort(addr string) (string, int, error) {
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", ps)
	}
	return host, port, nil
}

// logger sends the server's log to zerolog.
// Error lines also go to the store watchdog, which recognises write failures.
type logger struct {
	log  zerolog.Logger
	disk *disk
}

func (l *logger) Noticef(f string, v ...any) { l.log.Debug().Msgf(f, v...) }
func (l *logger) Warnf(f string, v ...any)   { l.log.Warn().Msgf(f, v...) }
func (l *logger) Fatalf(f string, v ...any)  { l.log.Error().Msgf(f, v...) }
func (l *logger) Errorf(f string, v ...any) {
	msg := fmt.Sprintf(f, v...)
	l.disk.noteLog(msg)
	l.log.Error().Msg(msg)
}
func (l *logger) Debugf(f string, v ...any) { l.log.Trace().Msgf(f, v...) }
func (l *logger) Tracef(f string, v ...any) { l.log.Trace().Msgf(f, v...) }
