package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
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

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
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
