package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/internal/disktest"
	"github.com/jetci/jetci/reporter"
)

func diskGet(url string) (int, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// TestUpFullDisk runs `jetci up` on a 96 MB disk: it starts (the live log
// reservation is sized to the disk), and when the disk fills, /healthz and
// every page say so; once space is freed it recovers by itself, without a
// restart, and tests the commits made meanwhile; it stops promptly on a full
// disk.
func TestUpFullDisk(t *testing.T) {
	data := disktest.Small(t, "96m")
	repo := newGitRepo(t)
	first := repo.Commit("add tests", map[string]string{"tests/test_ok.py": passingTest})
	url, web, stop := startUpHTTP(t, filepath.Join(data, "jetci"), []string{"--runners", "1"}, repo.Dir)
	read := func() ([]reporter.Record, error) { return resultsJSON(t, url) }
	waitStatus(t, read, first, "passed")
	if code, body, err := diskGet(web + "/healthz"); err != nil || code != 200 {
		t.Fatalf("/healthz on a healthy disk: %d %q %v", code, body, err)
	}

	fill := filepath.Join(data, "fill")
	disktest.Fill(t, fill)
	during := repo.Commit("made while the disk is full", map[string]string{"a.txt": "1"})
	brokertest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		code, body, err := diskGet(web + "/healthz")
		if err != nil || code != http.StatusServiceUnavailable || !strings.Contains(body, "NATS") {
			return fmt.Errorf("/healthz on a full disk: %d %q %v", code, body, err)
		}
		return nil
	})
	_, body, _ := diskGet(web + "/healthz")
	t.Logf("/healthz: %s", body)
	if _, page, err := diskGet(web + "/"); err != nil || !strings.Contains(page, "jetci cannot save new work") {
		t.Fatalf("the overview shows no banner on a full disk (%v)", err)
	}

	if err := os.Remove(fill); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	brokertest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		code, body, err := diskGet(web + "/healthz")
		if err != nil || code != 200 {
			return fmt.Errorf("/healthz after space was freed: %d %q %v", code, body, err)
		}
		return nil
	})
	t.Logf("healthy again %s after space was freed", time.Since(freed).Round(time.Millisecond))
	waitStatus(t, read, during, "passed")
	after := repo.Commit("after", map[string]string{"b.txt": "1"})
	waitStatus(t, read, after, "passed")
	t.Logf("commits tested again %s after space was freed", time.Since(freed).Round(time.Millisecond))

	// Full again, then stopped.
	disktest.Fill(t, fill)
	repo.Commit("full again", map[string]string{"c.txt": "1"})
	brokertest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		if code, _, _ := diskGet(web + "/healthz"); code != http.StatusServiceUnavailable {
			return errors.New("not reported full again")
		}
		return nil
	})
	start := time.Now()
	stop() // fails the test if jetci up does not stop within 30 s
	t.Logf("stopped in %s on a full disk", time.Since(start).Round(time.Millisecond))
}

// TestUpHugeCommitMessageIsTested: a commit with a 1 MB message (more than the
// server's max payload) is tested like any other, and so is the commit after
// it; its record carries the subject cut to 1,000 bytes.
func TestUpHugeCommitMessageIsTested(t *testing.T) {
	repo := newGitRepo(t)
	first := repo.Commit("add tests", map[string]string{"tests/test_ok.py": passingTest})
	url, _ := startUpWith(t, t.TempDir(), []string{"--runners", "1"}, repo.Dir)
	read := func() ([]reporter.Record, error) { return resultsJSON(t, url) }
	waitStatus(t, read, first, "passed")
	msg := filepath.Join(t.TempDir(), "msg")
	if err := os.WriteFile(msg, []byte(strings.Repeat("long subject ", 90<<10)+"\n\n"+strings.Repeat("body ", 50<<10)), 0o644); err != nil {
		t.Fatal(err)
	}
	repo.Git("commit", "-q", "--allow-empty", "-F", msg)
	huge := repo.Git("rev-parse", "HEAD")
	after := repo.Commit("after the huge message", map[string]string{"a.txt": "1"})
	recs := waitStatus(t, read, huge, "passed")
	if n := len(recs[0].Subject); n == 0 || n > 1000 {
		t.Fatalf("record subject of %d bytes, want cut to at most 1000", n)
	}
	waitStatus(t, read, after, "passed")
}
