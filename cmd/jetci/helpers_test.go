package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/internal/gittest"
	"github.com/jetci/jetci/reporter"
)

// gitRepo is a real git repository in a temp dir, named proj.
type gitRepo = gittest.Repo

func newGitRepo(t testing.TB) *gitRepo { return gittest.New(t, "proj") }

const passingTest = "import unittest\nclass TestOk(unittest.TestCase):\n    def test_ok(self):\n        self.assertEqual(1 + 1, 2)\n"
const failingTest = "import unittest\nclass TestBad(unittest.TestCase):\n    def test_bad(self):\n        self.fail('I will fail')\n"

// reserveAddr returns a loopback address for a server whose address must be
// known before it starts: the members of a cluster (each names the others'
// routes), a server restarted where its clients reconnect, a child process.
// Where the test can let the server pick (port 0) and read the address it
// got, it does that instead (startUpHTTP).
//
// The port is below the kernel's ephemeral range (ip_local_port_range), from
// which every port-0 bind and every outgoing connection of every process
// draws: none of those can take it between this choice and the server's
// bind, as they could a port-0 port closed for reuse. Each port is handed out
// once per test binary, starting at a point set by the process id (test
// binaries running at once start far apart), and one something listens on is
// skipped.
func reserveAddr(t testing.TB) string {
	t.Helper()
	ports.mu.Lock()
	defer ports.mu.Unlock()
	if ports.next == 0 {
		ports.low, ports.high = 10000, ephemeralLow()
		ports.next = ports.low + os.Getpid()*97%(ports.high-ports.low)
	}
	for range ports.high - ports.low {
		p := ports.next
		ports.next++
		if ports.next >= ports.high {
			ports.next = ports.low
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue // in use
		}
		l.Close()
		return addr
	}
	t.Fatalf("no free loopback port between %d and %d", ports.low, ports.high)
	return ""
}

var ports struct {
	mu              sync.Mutex
	low, high, next int
}

// ephemeralLow is the first port of the kernel's ephemeral range (32768
// where it cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 11000 {
				return n
			}
		}
	}
	return 32768
}

// results reads the records through `jetci results --json`, in-process.
func resultsJSON(t testing.TB, natsURL string, extra ...string) ([]reporter.Record, error) {
	var out, errb bytes.Buffer
	m := &Main{Stdout: &out, Stderr: &errb}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if code := m.Run(ctx, append([]string{"results", "--nats", natsURL, "--json"}, extra...)); code != 0 {
		return nil, fmt.Errorf("jetci results exited %d: %s", code, errb.String())
	}
	return parseJSONLines(out.Bytes())
}

func parseJSONLines(b []byte) ([]reporter.Record, error) {
	var recs []reporter.Record
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var r reporter.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("bad JSON line %q: %w", sc.Text(), err)
		}
		recs = append(recs, r)
	}
	return recs, sc.Err()
}

// waitStatus polls until the commit has a result and returns its records.
func waitStatus(t testing.TB, read func() ([]reporter.Record, error), commit string, want string) []reporter.Record {
	t.Helper()
	var got []reporter.Record
	brokertest.CheckFor(t, 2*time.Minute, 50*time.Millisecond, func() error {
		recs, err := read()
		if err != nil {
			return err
		}
		got = got[:0]
		for _, r := range recs {
			if r.Commit == commit {
				got = append(got, r)
			}
		}
		if len(got) == 0 {
			return fmt.Errorf("no result for %s yet", commit[:8])
		}
		for _, r := range got {
			if string(r.Status) != want {
				return fmt.Errorf("commit %s job %s: status %s (%s), want %s", commit[:8], r.Job, r.Status, r.Error, want)
			}
		}
		return nil
	})
	return got
}
