package broker

import (
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"
)

// Defaults of the store watchdog.
const (
	DefaultDiskCheck = 5 * time.Second
	DefaultDiskLow   = 32 << 20 // free bytes under which the store counts as full
)

// disk watches the JetStream store: its free space, and the write errors the
// server logs. On a full disk JetStream's file store keeps failing every write
// of a stream even after space is freed (the error is sticky until the stream
// is loaded again), and publishers only see timeouts. The watchdog says so
// clearly, and once there is room again restarts the server in this process,
// which reloads every stream from disk.
type disk struct {
	dir   string
	every time.Duration
	low   int64
	log   zerolog.Logger

	mu       sync.Mutex
	writeErr string // the last store write failure the server logged
	free     int64  // free bytes at the last check; -1: unknown
	bad      bool   // a problem was logged and not yet resolved
	restarts int
}

// noteLog looks at a server error line for store write failures.
func (d *disk) noteLog(msg string) {
	if d == nil {
		return
	}
	if strings.Contains(msg, "no space left on device") || strings.Contains(msg, "failed to store a msg") ||
		strings.Contains(msg, "Critical write error") || strings.Contains(msg, "out of file resources") ||
		strings.Contains(msg, "disk quota exceeded") {
		d.mu.Lock()
		d.writeErr = msg
		d.mu.Unlock()
	}
}

// freeBytes is what an unprivileged process may still write under dir.
func freeBytes(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return -1, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// problem describes what is wrong with the store now, or returns nil.
func (d *disk) problem() error {
	if d == nil {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.problemLocked()
}

func (d *disk) problemLocked() error {
	switch {
	case d.writeErr != "":
		return fmt.Errorf("the NATS server cannot write its store %s (%s free): %s; new commits, jobs, results and logs are not saved until there is room again. Free space there: jetci recovers by itself", d.dir, size(d.free), d.writeErr)
	case d.free >= 0 && d.free < d.low:
		return fmt.Errorf("the NATS store %s is almost full (%s free, under %s): writes will soon fail. Free space there", d.dir, size(d.free), size(d.low))
	}
	return nil
}

func size(n int64) string {
	switch {
	case n < 0:
		return "unknown"
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	default:
		return fmt.Sprintf("%d KiB", n>>10)
	}
}

// check runs one round: measure, log a change, and restart JetStream when a
// write failure was seen and there is room again (or JetStream disabled
// itself). It returns whether JetStream was restarted.
func (d *disk) check(s *Server) bool {
	ns := s.current()
	free, err := freeBytes(d.dir)
	if err != nil {
		free = -1
	}
	d.mu.Lock()
	d.free = free
	roomy := free < 0 || free >= d.low
	stuck := d.writeErr != "" || !ns.JetStreamEnabled()
	restart := stuck && roomy && !ns.JetStreamIsClustered()
	perr := d.problemLocked()
	if perr != nil && !d.bad {
		d.bad = true
		d.log.Error().Str("store", d.dir).Int64("free_bytes", free).Msg(perr.Error())
	}
	d.mu.Unlock()
	if !restart {
		if perr == nil && d.isBad() && ns.JetStreamEnabled() {
			d.setGood("disk space is back")
		}
		return false
	}
	// Reload every stream from disk: the only way to clear a store's write
	// error is a restart of the server.
	if err := s.restart(d); err != nil {
		d.log.Error().Err(err).Msg("restarting the NATS server after the full disk; will retry")
		return false
	}
	d.mu.Lock()
	d.writeErr = ""
	d.restarts++
	d.mu.Unlock()
	d.setGood("disk space is back; the NATS server restarted and every stream reloaded")
	return true
}

func (d *disk) isBad() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.bad
}

func (d *disk) setGood(msg string) {
	d.mu.Lock()
	was := d.bad
	d.bad = false
	free := d.free
	d.mu.Unlock()
	if was {
		d.log.Info().Str("store", d.dir).Int64("free_bytes", free).Msg(msg)
	}
}

// run checks every d.every until stop is closed.
func (d *disk) run(s *Server, stop <-chan struct{}) {
	t := time.NewTicker(d.every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			d.check(s)
		}
	}
}

// jetStreamConfig is the configuration to restart JetStream with: the one it
// runs with, whose StoreDir already has "jetstream" appended (EnableJetStream
// appends it again).
func jetStreamConfig(ns *server.Server) (server.JetStreamConfig, bool) {
	c := ns.JetStreamConfig()
	if c == nil {
		return server.JetStreamConfig{}, false
	}
	cfg := *c
	if filepath.Base(cfg.StoreDir) == server.JetStreamStoreDir {
		cfg.StoreDir = filepath.Dir(cfg.StoreDir)
	}
	return cfg, true
}
