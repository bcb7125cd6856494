package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/forge"
	"github.com/jetci/jetci/forge/forgetest"
	"github.com/jetci/jetci/reporter"
)

// statusReporter starts `jetci reporter` posting commit statuses to fs, as a
// child process; its token comes from the environment.
func statusReporter(t *testing.T, bin, url string, fs *forgetest.Server) *child {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "notify.yml")
	yml := fmt.Sprintf("public_url: https://ci.example.com\nforges:\n  - repo: proj\n    kind: github\n    url: https://github.example.com\n"+
		"    api_url: %s/api/v3\n    project: %s\n    token_env: JETCI_TEST_FORGE_TOKEN\n", fs.URL, fs.Project)
	if err := os.WriteFile(cfg, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: exec.Command(bin, "reporter", "--nats", url, "--http", "", "--notify-config", cfg, "--log-format", "json"), logs: &syncBuffer{}}
	c.cmd.Env = append(os.Environ(), "JETCI_TEST_FORGE_TOKEN="+fs.Token)
	c.cmd.Stdout, c.cmd.Stderr = c.logs, c.logs
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.kill(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("reporter log:\n%s", c.logs.String())
		}
	})
	brokertest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if !strings.Contains(c.logs.String(), "notifications on") {
			return fmt.Errorf("reporter not ready")
		}
		return nil
	})
	return c
}

// TestCommitStatusSurvivesAKilledReporter kills (SIGKILL) a reporter process
// while the forge holds its status request unanswered, after a 500: the next
// reporter posts the commit's result exactly once, and the commit does not
// end pending. A second kill and restart posts nothing again.
func TestCommitStatusSurvivesAKilledReporter(t *testing.T) {
	bin := jetciBinary(t)
	fs := forgetest.Start(t, forge.GitHub, "octo/proj", "ghp_test_token")
	fs.Script(forgetest.Fail500, forgetest.Hang)
	repo := newGitRepo(t)
	first := repo.Commit("add tests", map[string]string{"tests/test_ok.py": passingTest})
	url, _ := startUp(t, t.TempDir(), repo.Dir) // its own reporter posts nothing
	read := func() ([]reporter.Record, error) { return resultsJSON(t, url) }
	waitStatus(t, read, first, "passed")

	nc, js, err := events.Connect(url, events.ConnectOptions{Name: "test", Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	outbox := func() error {
		st, err := js.Stream(context.Background(), events.StreamNotify)
		if err != nil {
			return err
		}
		info, err := st.Info(context.Background())
		if err != nil {
			return err
		}
		if info.State.Msgs != 0 {
			return fmt.Errorf("%d in the outbox", info.State.Msgs)
		}
		return nil
	}

	rep := statusReporter(t, bin, url, fs)
	broken := repo.Commit("break it", map[string]string{"tests/test_bad.py": failingTest})
	waitStatus(t, read, broken, "failed")
	brokertest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if n := fs.Requests(); n < 2 {
			return fmt.Errorf("%d requests", n) // the 500, then the one left hanging
		}
		return nil
	})
	rep.kill(syscall.SIGKILL)
	fs.Release()
	if strings.Contains(rep.logs.String(), fs.Token) {
		t.Error("the token is in the reporter's log")
	}

	rep2 := statusReporter(t, bin, url, fs)
	var got []forgetest.Posted
	brokertest.CheckFor(t, 90*time.Second, 50*time.Millisecond, func() error {
		got = fs.Posted()
		final := 0
		for _, p := range got {
			if p.SHA != broken {
				t.Fatalf("a status for %s, which was tested before statuses were on", p.SHA)
			}
			if p.State != forge.Pending {
				final++
			}
		}
		if final == 0 {
			return fmt.Errorf("no result posted (%d requests): %+v", fs.Requests(), got)
		}
		return outbox()
	})
	// Once more: kill the reporter that posted, start another: nothing is
	// posted again.
	rep2.kill(syscall.SIGKILL)
	statusReporter(t, bin, url, fs)
	fixed := repo.Commit("fix it", map[string]string{"tests/test_bad.py": passingTest})
	waitStatus(t, read, fixed, "passed")
	brokertest.CheckFor(t, 90*time.Second, 50*time.Millisecond, func() error {
		got = fs.Posted()
		for _, p := range got {
			if p.SHA == fixed && p.State == forge.Success {
				return outbox()
			}
		}
		return fmt.Errorf("fix not posted: %+v", got)
	})
	count := map[string]int{}
	last := map[string]string{}
	for _, p := range got {
		count[p.SHA[:7]+" "+p.State]++
		last[p.SHA] = p.State
	}
	for k, n := range count {
		if n != 1 {
			t.Errorf("%s posted %d times: %+v", k, n, got)
		}
	}
	if last[broken] != forge.Failure || last[fixed] != forge.Success {
		t.Errorf("last states %v: %+v", last, got)
	}
	for _, p := range got {
		if p.Context != "jetci/test (amd64)" || !strings.HasPrefix(p.TargetURL, "https://ci.example.com/job/") {
			t.Errorf("status %+v", p)
		}
	}
}
