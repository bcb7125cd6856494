// Package pgtest starts a real PostgreSQL server for tests, on a temporary
// directory and a free loopback port, from the binaries of the machine's
// PostgreSQL installation (Debian's postgresql package: pg_config --bindir,
// or /usr/lib/postgresql/*/bin).
//
// Without PostgreSQL installed the test is skipped, unless it runs in CI
// (CI=true, or JETCI_REQUIRE_POSTGRES=1, which .ci/run sets): there it
// fails, so a missing package cannot pass unnoticed.
package pgtest

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
)

// Server is a running PostgreSQL server.
type Server struct {
	t      testing.TB
	bin    string
	dir    string // owned by the server's user
	port   int
	cmd    *exec.Cmd
	asUser []string // the command prefix that runs as a non-root user
	n      atomic.Int32
}

func required() bool {
	return os.Getenv("CI") == "true" || os.Getenv("JETCI_REQUIRE_POSTGRES") == "1"
}

// BinDir finds PostgreSQL's server binaries; "" when it is not installed.
func BinDir() string {
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		d := strings.TrimSpace(string(out))
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d
		}
	}
	ds, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Strings(ds)
	for i := len(ds) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(ds[i], "initdb")); err == nil {
			return ds[i]
		}
	}
	return ""
}

// Start starts a server, stopped when the test ends; it skips the test when
// PostgreSQL is not installed (outside CI).
func Start(t testing.TB) *Server {
	t.Helper()
	bin := BinDir()
	if bin == "" {
		if required() {
			t.Fatal("PostgreSQL is not installed (initdb not found via pg_config --bindir or /usr/lib/postgresql/*/bin); CI needs it: apt-get install postgresql")
		}
		t.Skip("PostgreSQL is not installed (set JETCI_REQUIRE_POSTGRES=1 to fail instead)")
	}
	dir, err := os.MkdirTemp("", "jetci-pg-*")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{t: t, bin: bin, dir: dir}
	t.Cleanup(func() { s.Stop(); os.RemoveAll(dir) })
	if os.Geteuid() == 0 {
		// postgres refuses to run as root: run it as the postgres user
		// (Debian's package makes one), or nobody.
		name := "postgres"
		u, err := user.Lookup(name)
		if err != nil {
			name = "nobody"
			if u, err = user.Lookup(name); err != nil {
				t.Fatalf("running as root and there is no postgres or nobody user to run PostgreSQL as")
			}
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		s.asUser = []string{"setpriv", "--reuid=" + u.Uid, "--regid=" + u.Gid, "--clear-groups", "--"}
	}
	out, err := s.command(filepath.Join(bin, "initdb"), "-D", filepath.Join(dir, "data"), "-U", "jetci", "--auth=trust",
		"-E", "UTF8", "--no-sync", "--no-instructions").CombinedOutput()
	if err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	s.port = freePort(t)
	s.Restart()
	return s
}

func (s *Server) command(name string, args ...string) *exec.Cmd {
	if len(s.asUser) > 0 {
		args = append(append(append([]string{}, s.asUser[1:]...), name), args...)
		name = s.asUser[0]
	}
	cmd := exec.Command(name, args...)
	cmd.Dir = s.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Restart starts the server (again, after Stop) on the same port and data,
// and waits until it answers.
func (s *Server) Restart() {
	s.t.Helper()
	log, err := os.OpenFile(filepath.Join(s.dir, "postgres.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o666)
	if err != nil {
		s.t.Fatal(err)
	}
	defer log.Close()
	s.cmd = s.command(filepath.Join(s.bin, "postgres"), "-D", filepath.Join(s.dir, "data"), "-p", strconv.Itoa(s.port),
		"-k", s.dir, "-c", "listen_addresses=127.0.0.1", "-F", "-c", "max_connections=100")
	s.cmd.Stdout, s.cmd.Stderr = log, log
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start postgres: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		db, err := sql.Open("pgx", s.url("postgres"))
		if err == nil {
			err = db.PingContext(context.Background())
			db.Close()
		}
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(s.dir, "postgres.log"))
			s.t.Fatalf("postgres did not start: %v\n%s", err, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop stops the server (fast shutdown).
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGINT)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	s.cmd = nil
}

func (s *Server) url(db string) string {
	return fmt.Sprintf("postgres://jetci@127.0.0.1:%d/%s?sslmode=disable", s.port, db)
}

// NewDB creates a new, empty database and returns its URL.
func (s *Server) NewDB() string {
	s.t.Helper()
	name := fmt.Sprintf("t%d", s.n.Add(1))
	db, err := sql.Open("pgx", s.url("postgres"))
	if err != nil {
		s.t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("CREATE DATABASE " + name); err != nil {
		s.t.Fatalf("create database: %v", err)
	}
	return s.url(name)
}
