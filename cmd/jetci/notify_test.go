package main

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/internal/smtptest"
	"github.com/jetci/jetci/reporter"
)

// reporterProcess starts `jetci reporter` with mail on, as a child process.
func reporterProcess(t *testing.T, bin, url, smtpAddr string) *child {
	t.Helper()
	c := &child{cmd: exec.Command(bin, "reporter", "--nats", url, "--http", "", "--smtp", smtpAddr, "--smtp-tls", "none",
		"--mail-from", "jetci <ci@example.com>", "--mail-to", "proj=lead@example.com", "--public-url", "https://ci.example.com",
		"--log-format", "json"), logs: &syncBuffer{}}
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

// TestMailSurvivesAKilledReporter kills (SIGKILL) a mail-sending reporter
// process between a failing result and its mail, then starts another: the
// author and the lead get exactly one mail.
func TestMailSurvivesAKilledReporter(t *testing.T) {
	bin := jetciBinary(t)
	sink := smtptest.Start(t)
	sink.Failing.Store(true) // the mail server is down at first
	repo := newGitRepo(t)
	first := repo.Commit("add tests", map[string]string{"tests/test_ok.py": passingTest})
	url, _ := startUp(t, t.TempDir(), repo.Dir) // its own reporter sends no mail
	read := func() ([]reporter.Record, error) { return resultsJSON(t, url) }
	waitStatus(t, read, first, "passed")

	nc, js, err := events.Connect(url, events.ConnectOptions{Name: "test", Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	outbox := func() uint64 {
		st, err := js.Stream(context.Background(), events.StreamNotify)
		if err != nil {
			return 0
		}
		info, err := st.Info(context.Background())
		if err != nil {
			return 0
		}
		return info.State.Msgs
	}

	rep := reporterProcess(t, bin, url, sink.Addr)
	broken := repo.Commit("break it", map[string]string{"tests/test_bad.py": failingTest})
	waitStatus(t, read, broken, "failed")
	brokertest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if outbox() != 1 || !strings.Contains(rep.logs.String(), "will retry") {
			return fmt.Errorf("outbox %d", outbox())
		}
		return nil
	})
	rep.kill(syscall.SIGKILL)

	sink.Failing.Store(false)
	rep2 := reporterProcess(t, bin, url, sink.Addr)
	brokertest.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
		if n := len(sink.Mails()); n != 1 || outbox() != 0 {
			return fmt.Errorf("%d mails, outbox %d", n, outbox())
		}
		return nil
	})
	m := sink.Mails()[0]
	if strings.Join(m.To, ",") != "dev@example.com,lead@example.com" || !strings.Contains(m.Subject, "FAILED") ||
		!strings.Contains(m.Text, "I will fail") || !strings.Contains(m.Text, "https://ci.example.com/job/") {
		t.Errorf("mail to %v %q:\n%s", m.To, m.Subject, m.Text)
	}
	// A second kill and restart sends nothing again.
	rep2.kill(syscall.SIGKILL)
	reporterProcess(t, bin, url, sink.Addr)
	fixed := repo.Commit("fix it", map[string]string{"tests/test_bad.py": passingTest})
	waitStatus(t, read, fixed, "passed")
	brokertest.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
		if n := len(sink.Mails()); n != 2 || outbox() != 0 {
			return fmt.Errorf("%d mails, outbox %d", n, outbox())
		}
		return nil
	})
	if m := sink.Mails()[1]; !strings.Contains(m.Subject, "FIXED") {
		t.Errorf("second mail %q", m.Subject)
	}
}
