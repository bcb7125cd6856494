package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jetci/jetci/reporter"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// jetciBinary builds the jetci binary once per test run, with -race when the
// suite runs with it.
func jetciBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "jetci-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "jetci")
		// JETCI_BUILD_TAGS=jetciprof builds the profiling hook in
		// (cpuprofile_tag.go), for benchmarks of real processes.
		args := []string{"build", "-tags", os.Getenv("JETCI_BUILD_TAGS"), "-o", binPath}
		if raceEnabled {
			args = append(args, "-race") // the children are checked as the suite is
		}
		out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// upProcess is `jetci up` running as a child process.
type upProcess struct {
	cmd  *exec.Cmd
	logs *syncBuffer
	url  string
}

func startUpProcess(t *testing.T, bin, data, natsAddr string, repos ...string) *upProcess {
	t.Helper()
	args := []string{"up", "--data", data, "--nats-listen", natsAddr, "--http", "127.0.0.1:0", "--poll", "100ms", "--runners", "2"} // its web UI is not used: any port
	for _, r := range repos {
		args = append(args, "--repo", r)
	}
	p := &upProcess{cmd: exec.Command(bin, args...), logs: &syncBuffer{}, url: "nats://" + natsAddr}
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("jetci up log:\n%s", p.logs.String())
		}
	})
	return p
}

// stop sends SIGTERM, as a person's Ctrl-C or a service manager would.
func (p *upProcess) stop(t *testing.T) {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("jetci up exited with %v", err)
		}
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
		t.Errorf("jetci up ignored SIGTERM for 30s")
	}
}

func binResults(bin, url string) func() ([]reporter.Record, error) {
	return func() ([]reporter.Record, error) {
		var out, errb bytes.Buffer
		cmd := exec.Command(bin, "results", "--nats", url, "--json")
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("jetci results: %v: %s", err, errb.String())
		}
		return parseJSONLines(out.Bytes())
	}
}

// TestBinaryEndToEnd uses the built binary as a user would: jetci up on a repo,
// commits on branches with odd names, jetci results --json, then a restart on the
// same --data that keeps every result and tests what was committed meanwhile.
func TestBinaryEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := jetciBinary(t)
	repo := newGitRepo(t)
	first := repo.Commit("add tests", map[string]string{"tests/test_ok.py": passingTest})
	data, natsAddr := t.TempDir(), reserveAddr(t)
	up := startUpProcess(t, bin, data, natsAddr, repo.Dir)
	read := binResults(bin, up.url)
	waitStatus(t, read, first, "passed")

	branches := []string{"feature/x.y", "a>b", "fix/ünï", "release-1.2", "$sys"}
	want := map[string]string{} // commit -> branch
	for _, b := range branches {
		repo.Git("checkout", "-q", "-b", b, "main")
		c := repo.Commit("on "+b, map[string]string{"branch.txt": b + "\n"})
		want[c] = b
	}
	repo.Git("checkout", "-q", "main")
	for c, b := range want {
		recs := waitStatus(t, read, c, "passed")
		if recs[0].Branch != b {
			t.Errorf("commit %s reported on branch %q, want %q", c[:8], recs[0].Branch, b)
		}
	}
	before, err := read()
	if err != nil {
		t.Fatal(err)
	}

	// Stop, commit while jetci is down, start again on the same data.
	up.stop(t)
	during := repo.Commit("while down", map[string]string{"down.txt": "1\n"})
	up2 := startUpProcess(t, bin, data, natsAddr, repo.Dir)
	read2 := binResults(bin, up2.url)
	waitStatus(t, read2, during, "passed")
	after, err := read2()
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before)+1 {
		t.Fatalf("after restart %d records, want %d (the %d before plus the commit made while down)", len(after), len(before)+1, len(before))
	}
	seen := map[string]bool{}
	for _, r := range after {
		if seen[r.JobID] {
			t.Errorf("job %s (%s %s) recorded twice", r.JobID, r.Branch, r.Commit[:8])
		}
		seen[r.JobID] = true
	}
}
