package reporter

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/internal/smtptest"
)

// waitMails polls until the sink holds n mails and the outbox is empty.
func waitMails(t *testing.T, f *webFixture, sink *smtptest.Sink, n int) []smtptest.Mail {
	t.Helper()
	var got []smtptest.Mail
	brokertest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		got = sink.Mails()
		if len(got) != n {
			return fmt.Errorf("%d mails, want %d", len(got), n)
		}
		if err := resultsDone(f); err != nil {
			return err
		}
		return outboxEmpty(f)
	})
	return got
}

// resultsDone says whether the reporter has handled every result event (so
// every notification it will queue is queued).
func resultsDone(f *webFixture) error {
	c, err := f.s.JS.Consumer(f.ctx, events.StreamResults, events.ConsumerReporter)
	if err != nil {
		return err
	}
	info, err := c.Info(f.ctx)
	if err != nil {
		return err
	}
	if info.NumPending+uint64(info.NumAckPending) != 0 {
		return fmt.Errorf("reporter: %d results pending, %d unacked", info.NumPending, info.NumAckPending)
	}
	return nil
}

func outboxEmpty(f *webFixture) error {
	st, err := f.s.JS.Stream(f.ctx, events.StreamNotify)
	if err != nil {
		return err
	}
	info, err := st.Info(f.ctx)
	if err != nil {
		return err
	}
	if info.State.Msgs != 0 {
		return fmt.Errorf("%d notifications still in the outbox", info.State.Msgs)
	}
	return nil
}

// newNotifyFixture runs a reporter with notifications on.
func newNotifyFixture(t *testing.T, s *brokertest.Server, cfg NotifyConfig) (*webFixture, func()) {
	t.Helper()
	if s == nil {
		s = brokertest.Run(t)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := events.DefaultSetup().Ensure(ctx, s.JS); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Resolve(); err != nil {
		t.Fatal(err)
	}
	rep, err := New(ctx, Config{HTTP: "127.0.0.1:0", Notify: cfg}, s.JS, brokertest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- rep.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	t.Cleanup(stop)
	// Results are read from when the notifier's consumer exists: wait for it.
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		_, err := s.JS.Consumer(ctx, events.StreamResults, events.ConsumerNotifierResults)
		return err
	})
	return &webFixture{t: t, s: s, rep: rep, base: "http://" + rep.Addr(), ctx: context.Background(), sign: newTestSigner(s.JS)}, stop
}

// commitResult publishes a whole job on main by author, failing or passing.
func commitResult(f *webFixture, seq uint64, sha, author string, st events.Status, log string) events.JobRef {
	ref := jref("proj", "main", sha, "test", "amd64")
	p := events.Person{Name: author, Email: strings.ToLower(author) + "@example.com"}
	f.publish(&events.JobQueued{JobRef: ref, Pool: "default", Class: events.ClassFirst, QueueSeq: seq, QueuedAt: time.Now(), Author: p, Subject: author + "'s change"})
	fin := &events.JobFinished{JobRef: ref, QueueSeq: seq, Attempt: 1, Runner: "r1", Status: st, FinishedAt: time.Now(), DurationMs: 10,
		Author: p, Subject: author + "'s change"}
	if st == events.StatusFailed {
		fin.ExitCode = 1
	}
	if log != "" {
		fin.Log = events.LogObject(ref.JobID, seq, 1)
		if _, err := f.rep.logs.PutString(context.Background(), fin.Log, log); err != nil {
			f.t.Fatal(err)
		}
	}
	f.publish(fin)
	f.waitFor(ref.JobID, func(r Record) bool { return r.Status == st && r.Attempt == 1 })
	return ref
}

func sha(c byte) string { return strings.Repeat(string(c), 40) }

func numberedLog(n int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "log line %03d\n", i)
	}
	return b.String() + "FAIL: TestThing\n"
}

func TestMailOncePerTransition(t *testing.T) {
	sink := smtptest.Start(t)
	f, _ := newNotifyFixture(t, nil, NotifyConfig{PublicURL: "https://ci.example.com",
		Mail: MailConfig{SMTP: sink.Addr, TLS: "none", From: "jetci <ci@example.com>",
			Recipients: []RecipientRule{{Repo: "proj", To: []string{"boss@example.com"}}, {Repo: "proj", Branch: "release/*", To: []string{"rm@example.com"}}}}})

	commitResult(f, 1, sha('a'), "Alice", events.StatusPassed, "ok\n") // passing: no mail
	broke := commitResult(f, 2, sha('b'), "Bob", events.StatusFailed, numberedLog(80))
	mails := waitMails(t, f, sink, 1)
	m := mails[0]
	if strings.Join(m.To, ",") != "bob@example.com,boss@example.com" || m.From != "ci@example.com" {
		t.Errorf("failed mail to %v from %s", m.To, m.From)
	}
	for _, want := range []string{"FAILED", "proj", "main", "test/amd64", "bbbbbbbbbb", "Bob's change"} {
		if !strings.Contains(m.Subject, want) {
			t.Errorf("subject %q lacks %q", m.Subject, want)
		}
	}
	for _, want := range []string{"FAIL: TestThing", "log line 080", "log line 032", "https://ci.example.com/job/" + broke.JobID, "exit code 1", "Bob <bob@example.com>"} {
		if !strings.Contains(m.Text, want) {
			t.Errorf("text body lacks %q:\n%s", want, m.Text)
		}
	}
	if strings.Contains(m.Text, "log line 031\n") {
		t.Errorf("text body has more than the last 50 lines:\n%s", m.Text)
	}
	if !strings.Contains(m.HTML, `<a href="https://ci.example.com/job/`+broke.JobID+`">`) || !strings.Contains(m.HTML, "Bob&#39;s change") {
		t.Errorf("html body:\n%s", m.HTML)
	}

	// A later commit fails too: only its author hears, once, of the first failure.
	commitResult(f, 3, sha('c'), "Carol", events.StatusFailed, "FAIL again\n")
	mails = waitMails(t, f, sink, 2)
	if m := mails[1]; strings.Join(m.To, ",") != "carol@example.com" || !strings.Contains(m.Subject, "still failing") ||
		!strings.Contains(m.Text, "already broken by bbbbbbbbbb") {
		t.Errorf("still-failing mail %v %q\n%s", m.To, m.Subject, m.Text)
	}
	// The same failing result delivered again changes nothing.
	f.publish(&events.JobFinished{JobRef: jref("proj", "main", sha('c'), "test", "amd64"), QueueSeq: 3, Attempt: 1, Runner: "r1",
		Status: events.StatusFailed, ExitCode: 1, FinishedAt: time.Now()})

	// Fixed: the fixer, the one who broke it and the managers.
	commitResult(f, 4, sha('d'), "Dave", events.StatusPassed, "ok\n")
	mails = waitMails(t, f, sink, 3)
	if m := mails[2]; strings.Join(m.To, ",") != "dave@example.com,bob@example.com,boss@example.com" || !strings.Contains(m.Subject, "FIXED") ||
		!strings.Contains(m.Text, "broken since bbbbbbbbbb by Bob") {
		t.Errorf("fixed mail %v %q\n%s", m.To, m.Subject, m.Text)
	}
	// Passing again: nothing more.
	commitResult(f, 5, sha('e'), "Eve", events.StatusPassed, "ok\n")
	// A late result of an older commit does not reopen anything.
	commitResult(f, 0, sha('0'), "Old", events.StatusFailed, "old\n")
	waitMails(t, f, sink, 3)
}

func TestMailSurvivesAReporterRestart(t *testing.T) {
	sink := smtptest.Start(t)
	sink.Failing.Store(true) // the mail server is down while the first reporter runs
	s := brokertest.Run(t)
	cfg := NotifyConfig{Mail: MailConfig{SMTP: sink.Addr, TLS: "none", From: "ci@example.com"}}
	f1, stop1 := newNotifyFixture(t, s, cfg)
	commitResult(f1, 1, sha('a'), "Alice", events.StatusPassed, "")
	commitResult(f1, 2, sha('b'), "Bob", events.StatusFailed, "FAIL\n")
	// The notification waits in the outbox: the first try failed.
	brokertest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if err := outboxEmpty(f1); err == nil {
			return errors.New("outbox empty")
		}
		return nil
	})
	stop1() // the reporter dies between the result and the mail
	sink.Failing.Store(false)
	f2, _ := newNotifyFixture(t, s, cfg)
	mails := waitMails(t, f2, sink, 1)
	if strings.Join(mails[0].To, ",") != "bob@example.com" || !strings.Contains(mails[0].Subject, "FAILED") {
		t.Errorf("mail %v %q", mails[0].To, mails[0].Subject)
	}
}

func TestASendCutShortIsNotRepeated(t *testing.T) {
	sink := smtptest.Start(t)
	s := brokertest.Run(t)
	ctx := context.Background()
	if err := events.DefaultSetup().Ensure(ctx, s.JS); err != nil {
		t.Fatal(err)
	}
	// A sender died mid-send: its claim says "sending".
	ref := jref("proj", "main", sha('b'), "test", "amd64")
	kv, _ := s.JS.KeyValue(ctx, events.BucketSent)
	if _, err := kv.Create(ctx, "n."+shortHash(fmt.Sprintf("mail.%s.%s.%d", EventFailed, ref.JobID, 1)), []byte(claimSending)); err != nil {
		t.Fatal(err)
	}
	f, _ := newNotifyFixture(t, s, NotifyConfig{Mail: MailConfig{SMTP: sink.Addr, TLS: "none", From: "ci@example.com"}})
	commitResult(f, 2, sha('b'), "Bob", events.StatusFailed, "FAIL\n")
	brokertest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error { return outboxEmpty(f) })
	commitResult(f, 3, sha('c'), "Carol", events.StatusPassed, "")
	mails := waitMails(t, f, sink, 1) // only the fixed mail
	if !strings.Contains(mails[0].Subject, "FIXED") {
		t.Errorf("mail %q", mails[0].Subject)
	}
}

func TestWebhookSignedAndRetriedUntilDelivered(t *testing.T) {
	const secret = "hook-secret"
	var mu sync.Mutex
	var tries int
	delivered := map[string]WebhookPayload{}
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		m := hmac.New(sha256.New, []byte(secret))
		m.Write(body)
		want := "sha256=" + hex.EncodeToString(m.Sum(nil))
		if !hmac.Equal([]byte(r.Header.Get("X-Jetci-Signature-256")), []byte(want)) {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		tries++
		if tries <= 2 {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		var p WebhookPayload
		if err := json.Unmarshal(body, &p); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		if p.DeliveryID != r.Header.Get("X-Jetci-Delivery") {
			http.Error(w, "delivery id", 400)
			return
		}
		delivered[p.DeliveryID] = p
	}))
	defer hook.Close()
	f, _ := newNotifyFixture(t, nil, NotifyConfig{PublicURL: "https://ci.example.com",
		Webhooks: []WebhookConfig{{URL: hook.URL + "/ci", Secret: secret, Events: "transitions"}}})
	commitResult(f, 1, sha('a'), "Alice", events.StatusPassed, "") // not a transition
	ref := commitResult(f, 2, sha('b'), "Bob", events.StatusFailed, "FAIL\n")
	brokertest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if err := outboxEmpty(f); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		if len(delivered) != 1 || tries != 3 {
			return fmt.Errorf("%d delivered after %d tries", len(delivered), tries)
		}
		return nil
	})
	for _, p := range delivered {
		if p.Type != TypeWebhook || p.Event != EventFailed || p.JobID != ref.JobID || p.Status != events.StatusFailed ||
			p.ExitCode != 1 || p.Author.Email != "bob@example.com" || p.JobURL != "https://ci.example.com/job/"+ref.JobID ||
			p.FirstFailingCommit != sha('b') || !strings.Contains(p.LogURL, "/api/v1/jobs/"+ref.JobID+"/log?attempt=1") {
			t.Errorf("payload %+v", p)
		}
	}
}

func TestDecide(t *testing.T) {
	rec := func(seq uint64, commit string, st events.Status, attempt uint64) *Record {
		return &Record{JobID: "j" + commit, Commit: commit, Status: st, Attempt: attempt, QueueSeq: seq,
			Attempts: []Attempt{{QueueSeq: seq}}}
	}
	var st *branchState
	step := func(r *Record, want string, changed bool) {
		t.Helper()
		next, ev, ch := decide(st, r, time.Time{})
		if ev != want || ch != changed {
			t.Fatalf("%s %s: event %q changed %v, want %q %v", r.Commit, r.Status, ev, ch, want, changed)
		}
		st = next
	}
	step(rec(1, "a", events.StatusPassed, 1), "", true)
	step(rec(2, "b", events.StatusError, 1), EventFailed, true)
	step(rec(2, "b", events.StatusError, 1), "", false)  // redelivered
	step(rec(2, "b", events.StatusFailed, 2), "", true)  // re-check of the same commit, still failing
	step(rec(1, "a", events.StatusFailed, 2), "", false) // an older commit
	step(rec(3, "c", events.StatusFailed, 1), EventStillFailing, true)
	if st.FirstFail.Commit != "b" {
		t.Fatalf("first failure %+v", st.FirstFail)
	}
	step(rec(3, "c", events.StatusPassed, 2), EventFixed, true) // a re-check passes
	step(rec(4, "d", events.StatusPassed, 1), "", true)
	step(rec(5, "e", events.StatusFailed, 1), EventFailed, true)
	if st.FirstFail.Commit != "e" {
		t.Fatalf("first failure %+v", st.FirstFail)
	}
}

func TestNotifyConfig(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("s3cret\n"), 0o600)
	file := filepath.Join(dir, "notify.yml")
	os.WriteFile(file, []byte(`public_url: https://ci.example.com
mail:
  smtp: smtp.example.com:465
  username: jetci
  password_file: `+pw+`
  from: jetci <ci@example.com>
  recipients:
    - repo: proj
      to: [boss@example.com]
    - repo: "*"
      branch: release/*
      to: [rm@example.com]
webhooks:
  - url: https://hooks.example.com/x
    secret: abc
`), 0o644)
	c, err := LoadNotifyConfig(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Resolve(); err != nil {
		t.Fatal(err)
	}
	if c.Mail.TLS != "tls" || c.Mail.Password != "s3cret" || c.Webhooks[0].Events != "finished" {
		t.Errorf("resolved %+v", c)
	}
	if got := c.Mail.extra("proj", "release/1.0"); strings.Join(got, ",") != "boss@example.com,rm@example.com" {
		t.Errorf("extra(proj, release/1.0) = %v", got)
	}
	if got := c.Mail.extra("other", "main"); len(got) != 0 {
		t.Errorf("extra(other, main) = %v", got)
	}
	r, err := ParseRecipientFlag("proj:release/*=a@example.com, b@example.com")
	if err != nil || r.Repo != "proj" || r.Branch != "release/*" || len(r.To) != 2 {
		t.Errorf("ParseRecipientFlag = %+v %v", r, err)
	}
	for _, bad := range []NotifyConfig{
		{Mail: MailConfig{SMTP: "nohost", From: "a@b"}},
		{Mail: MailConfig{SMTP: "h:25", TLS: "none"}},
		{Mail: MailConfig{SMTP: "h:25", TLS: "maybe", From: "a@b"}},
		{Mail: MailConfig{SMTP: "h:25", TLS: "none", From: "a@b", Username: "u"}},
		{Mail: MailConfig{Recipients: []RecipientRule{{Repo: "p", To: []string{"not an address"}}}}},
		{Webhooks: []WebhookConfig{{URL: "ftp://x", Secret: "s", Events: "finished"}}},
		{Webhooks: []WebhookConfig{{URL: "https://x", Events: "finished"}}},
		{PublicURL: "ci.example.com"},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil, want an error", bad)
		}
	}
	os.WriteFile(file, []byte("mail:\n  smtpp: x\n"), 0o644)
	if _, err := LoadNotifyConfig(file); err == nil || !strings.Contains(err.Error(), "smtpp") {
		t.Errorf("unknown field: %v", err)
	}
}

func TestComposeIsAValidMessage(t *testing.T) {
	raw := compose("jetci <ci@example.com>", &MailMessage{To: []string{"a@example.com", "b@example.com"}, Subject: "[jetci] FAILED: ünï",
		Text: strings.Repeat("long line ", 50) + "\n", HTML: "<p>x</p>"}, "id1", time.Unix(0, 0))
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	subj, _ := new(mime.WordDecoder).DecodeHeader(msg.Header.Get("Subject"))
	if subj != "[jetci] FAILED: ünï" || msg.Header.Get("Message-ID") != "<id1@example.com>" {
		t.Errorf("headers %v", msg.Header)
	}
	for _, line := range strings.Split(string(raw), "\r\n") {
		if len(line) > 998 {
			t.Fatalf("line of %d bytes", len(line))
		}
	}
}

func TestSMTPWithTLSAndAuth(t *testing.T) {
	for _, mode := range []string{"starttls", "tls"} {
		t.Run(mode, func(t *testing.T) {
			sink, ca := smtptest.StartWith(t, smtptest.Options{TLS: mode, User: "jetci", Password: "pw"})
			c := MailConfig{SMTP: sink.Addr, TLS: mode, Username: "jetci", Password: "pw", CAFile: ca, From: "ci@example.com"}
			msg := compose(c.From, &MailMessage{To: []string{"a@example.com"}, Subject: "hello", Text: "t", HTML: "<p>h</p>"}, "x", time.Now())
			if err := c.send(context.Background(), c.From, []string{"a@example.com"}, msg); err != nil {
				t.Fatal(err)
			}
			if got := sink.Mails(); len(got) != 1 || got[0].Subject != "hello" || got[0].Text != "t" {
				t.Fatalf("got %+v", got)
			}
			bad := c
			bad.Password = "wrong"
			if err := bad.send(context.Background(), c.From, []string{"a@example.com"}, msg); err == nil || !strings.Contains(err.Error(), "auth") {
				t.Errorf("wrong password: %v", err)
			}
			untrusted := c
			untrusted.CAFile = ""
			if err := untrusted.send(context.Background(), c.From, []string{"a@example.com"}, msg); err == nil {
				t.Error("an untrusted certificate was accepted")
			}
		})
	}
	// A server without STARTTLS is refused when STARTTLS is asked for.
	plain := smtptest.Start(t)
	c := MailConfig{SMTP: plain.Addr, TLS: "starttls", From: "ci@example.com"}
	if err := c.send(context.Background(), c.From, []string{"a@example.com"}, []byte("x")); err == nil || !strings.Contains(err.Error(), "STARTTLS") {
		t.Errorf("plain server with starttls: %v", err)
	}
}

// TestMailResultsAllAndManagersAllFailures: with results: all every result
// goes to its author, passing ones too; with managers: all-failures the
// managers get every failure mail, still failing too. A failure mail lists
// the failing tests with their messages before the log.
func TestMailResultsAllAndManagersAllFailures(t *testing.T) {
	sink := smtptest.Start(t)
	f, _ := newNotifyFixture(t, nil, NotifyConfig{Mail: MailConfig{SMTP: sink.Addr, TLS: "none", From: "ci@example.com",
		Results: MailAll, Managers: MailAllFailures, Recipients: []RecipientRule{{Repo: "proj", To: []string{"boss@example.com"}}}}})
	commitResult(f, 1, sha('a'), "Alice", events.StatusPassed, "ok\n")
	mails := waitMails(t, f, sink, 1)
	if m := mails[0]; strings.Join(m.To, ",") != "alice@example.com" || !strings.Contains(m.Subject, "passed") {
		t.Errorf("passing mail to %v: %q", m.To, m.Subject)
	}
	// Bob's commit fails two tests.
	ref := jref("proj", "main", sha('b'), "test", "amd64")
	bob := events.Person{Name: "Bob", Email: "bob@example.com"}
	f.publish(&events.JobQueued{JobRef: ref, Pool: "default", Class: events.ClassFirst, QueueSeq: 2, QueuedAt: time.Now(), Author: bob, Subject: "Bob's change"})
	fin := &events.JobFinished{JobRef: ref, QueueSeq: 2, Attempt: 1, Runner: "r1", Status: events.StatusFailed, ExitCode: 1, FinishedAt: time.Now(),
		Author: bob, Subject: "Bob's change", Log: events.LogObject(ref.JobID, 2, 1),
		Tests: []events.TestResult{{Name: "pkg.TestOK", Status: events.TestPassed}, {Name: "pkg.TestAdd", Status: events.TestFailed, Message: "expected 4, got 5"},
			{Name: "pkg.TestSub", Status: events.TestError, Message: "panic: boom"}}}
	if _, err := f.rep.logs.PutString(context.Background(), fin.Log, "running\nFAIL pkg\n"); err != nil {
		t.Fatal(err)
	}
	f.publish(fin)
	mails = waitMails(t, f, sink, 2)
	m := mails[1]
	if strings.Join(m.To, ",") != "bob@example.com,boss@example.com" || !strings.Contains(m.Subject, "FAILED") {
		t.Errorf("failed mail to %v: %q", m.To, m.Subject)
	}
	m.Text = strings.ReplaceAll(m.Text, "\r\n", "\n")
	add, sub, log := strings.Index(m.Text, "pkg.TestAdd (failed)\n    expected 4, got 5"), strings.Index(m.Text, "pkg.TestSub (error)\n    panic: boom"),
		strings.Index(m.Text, "Last lines of the log")
	if add < 0 || sub < 0 || log < 0 || add > log || sub > log || strings.Contains(m.Text, "TestOK") {
		t.Errorf("failing tests not listed before the log:\n%s", m.Text)
	}
	if !strings.Contains(m.HTML, "<code>pkg.TestAdd</code>") {
		t.Errorf("html lacks the failing tests:\n%s", m.HTML)
	}
	// Carol's commit fails too: still failing, to her and the managers.
	commitResult(f, 3, sha('c'), "Carol", events.StatusFailed, "FAIL again\n")
	mails = waitMails(t, f, sink, 3)
	if m := mails[2]; strings.Join(m.To, ",") != "carol@example.com,boss@example.com" || !strings.Contains(m.Subject, "still failing") {
		t.Errorf("still-failing mail to %v: %q", m.To, m.Subject)
	}
}

// TestCoveredFailureIsNotBlamedAndOpeningIsMailed: a released commit older
// than the commit whose check opened a gated branch fails with the break:
// no mail to its author, and the branch's notification state does not move
// (the next pass is no "fixed"). Opening the branch mails the break's author
// and the managers once, however often the state is published.
func TestCoveredFailureIsNotBlamedAndOpeningIsMailed(t *testing.T) {
	sink := smtptest.Start(t)
	f, _ := newNotifyFixture(t, nil, NotifyConfig{Mail: MailConfig{SMTP: sink.Addr, TLS: "none", From: "ci@example.com",
		Recipients: []RecipientRule{{Repo: "proj", To: []string{"boss@example.com"}}}}})
	kv, err := f.s.JS.KeyValue(f.ctx, events.BucketBranches)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now().UTC()
	st := &events.BranchState{Repo: "proj", Branch: "main", State: events.BranchOpen, Since: at.Add(time.Millisecond), Held: 2,
		Reason: "broken by bbbbbbbbbb, fixed by dddddddddd",
		Fixes: []events.BranchFix{{BrokenBy: sha('b'), Author: events.Person{Name: "Bob", Email: "bob@example.com"}, FixedBy: sha('d'),
			Kind: "second", Released: 2, Covered: []string{sha('c')}, At: at}}}
	data, _ := events.Encode(st)
	if _, err := kv.Put(f.ctx, events.BranchKey("proj", "main"), data); err != nil {
		t.Fatal(err)
	}
	for range 3 { // published again as each held commit is released
		if _, err := f.s.JS.Publish(f.ctx, events.BranchSubject("proj", "main"), data); err != nil {
			t.Fatal(err)
		}
	}
	mails := waitMails(t, f, sink, 1)
	if m := mails[0]; strings.Join(m.To, ",") != "bob@example.com,boss@example.com" ||
		m.Subject != "[jetci] proj main is open again; 2 held commit(s) released" || !strings.Contains(m.Text, "main is open again; 2 held commits released") {
		t.Errorf("open mail to %v %q\n%s", m.To, m.Subject, m.Text)
	}
	commitResult(f, 5, sha('d'), "Dave", events.StatusPassed, "ok\n")
	commitResult(f, 6, sha('c'), "Carol", events.StatusFailed, "FAIL: the break\n") // covered: not Carol's
	commitResult(f, 7, sha('e'), "Eve", events.StatusPassed, "ok\n")
	waitMails(t, f, sink, 1)
}

func TestMailResultsAndManagersSettings(t *testing.T) {
	base := func() NotifyConfig {
		return NotifyConfig{Mail: MailConfig{SMTP: "127.0.0.1:25", TLS: "none", From: "ci@example.com"}}
	}
	c := base()
	if err := c.Resolve(); err != nil || c.Mail.Results != MailTransitions || c.Mail.Managers != MailTransitions {
		t.Fatalf("defaults: %v %q %q", err, c.Mail.Results, c.Mail.Managers)
	}
	for _, bad := range []func(*MailConfig){
		func(m *MailConfig) { m.Results = "every" },
		func(m *MailConfig) { m.Managers = "all" },
	} {
		c := base()
		bad(&c.Mail)
		if err := c.Resolve(); err == nil || !strings.Contains(err.Error(), "want") {
			t.Errorf("%+v: %v", c.Mail, err)
		}
	}
}
