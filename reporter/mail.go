package reporter

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"net/textproto"
	"net/url"
	"os"
	"slices"
	"strings"
	"text/template"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/jetci/jetci/events"
)

// mailData is what the mail templates get.
type mailData struct {
	Event, Repo, Branch, Job, Arch, Commit, Short, Subject string
	Author                                                 events.Person
	Status                                                 events.Status
	ExitCode                                               int
	Error                                                  string
	Attempt                                                uint64
	URL                                                    string
	Tail                                                   string
	First                                                  *failRef
	FirstShort                                             string
	// Failing are the failing tests (at most maxMailTests), FailingMore
	// how many more there are.
	Failing     []events.TestResult
	FailingMore int
}

// maxMailTests bounds the failing tests a mail lists.
const maxMailTests = 20

var mailText = template.Must(template.New("text").Parse(`{{if eq .Event "failed"}}{{.Job}} on {{.Arch}} FAILED on {{.Repo}} {{.Branch}}.
{{else if eq .Event "passed"}}{{.Job}} on {{.Arch}} passed on {{.Repo}} {{.Branch}}.
{{else if eq .Event "fixed"}}{{.Job}} on {{.Arch}} passes again on {{.Repo}} {{.Branch}}: fixed.
{{else}}{{.Job}} on {{.Arch}} fails on {{.Repo}} {{.Branch}}, which was already broken.
{{end}}
Commit:  {{.Commit}}
Author:  {{.Author.Name}} <{{.Author.Email}}>
Subject: {{.Subject}}
Result:  {{.Status}}{{if .Error}}: {{.Error}}{{else if ne .Status "passed"}}, exit code {{.ExitCode}}{{end}} (attempt {{.Attempt}})
{{with .URL}}Job:     {{.}}
{{end}}{{with .First}}{{if eq $.Event "fixed"}}
It had been broken since {{$.FirstShort}} by {{.Author.Name}}: {{.Subject}}
{{else if eq $.Event "still-failing"}}
The branch was already broken by {{$.FirstShort}} ({{.Author.Name}}: {{.Subject}}); this mail is only for you, the author of a later commit that fails too. The first failure's author has been told.
{{end}}{{end}}{{with .Failing}}
Failing tests:
{{range .}}  {{.Name}} ({{.Status}}){{with .Message}}
    {{.}}{{end}}
{{end}}{{if $.FailingMore}}  … and {{$.FailingMore}} more
{{end}}{{end}}{{with .Tail}}
Last lines of the log:

{{.}}
{{end}}
-- 
jetci
`))

var mailHTML = htmltemplate.Must(htmltemplate.New("html").Parse(`<!doctype html><html><body style="font-family:system-ui,sans-serif;font-size:14px">
<p>{{if eq .Event "failed"}}<b style="color:#c62828">{{.Job}} on {{.Arch}} failed</b> on {{.Repo}} {{.Branch}}.{{else if eq .Event "passed"}}<b style="color:#1a7f37">{{.Job}} on {{.Arch}} passed</b> on {{.Repo}} {{.Branch}}.{{else if eq .Event "fixed"}}<b style="color:#1a7f37">{{.Job}} on {{.Arch}} passes again</b> on {{.Repo}} {{.Branch}}.{{else}}<b style="color:#c62828">{{.Job}} on {{.Arch}} fails</b> on {{.Repo}} {{.Branch}}, which was already broken.{{end}}</p>
<table style="border-collapse:collapse">
<tr><td style="color:#666;padding-right:1em">Commit</td><td><code>{{.Commit}}</code></td></tr>
<tr><td style="color:#666;padding-right:1em">Author</td><td>{{.Author.Name}} &lt;{{.Author.Email}}&gt;</td></tr>
<tr><td style="color:#666;padding-right:1em">Subject</td><td>{{.Subject}}</td></tr>
<tr><td style="color:#666;padding-right:1em">Result</td><td>{{.Status}}{{if .Error}}: {{.Error}}{{else if ne .Status "passed"}}, exit code {{.ExitCode}}{{end}} (attempt {{.Attempt}})</td></tr>
</table>
{{with .URL}}<p><a href="{{.}}">Open the job</a></p>{{end}}
{{with .First}}{{if eq $.Event "fixed"}}<p>It had been broken since <code>{{$.FirstShort}}</code> by {{.Author.Name}}: {{.Subject}}</p>{{else if eq $.Event "still-failing"}}<p>The branch was already broken by <code>{{$.FirstShort}}</code> ({{.Author.Name}}: {{.Subject}}); this mail is only for you, the author of a later commit that fails too.</p>{{end}}{{end}}
{{with .Failing}}<p>Failing tests:</p><ul>{{range .}}<li><code>{{.Name}}</code> ({{.Status}}){{with .Message}}<br><pre style="margin:.2em 0;white-space:pre-wrap">{{.}}</pre>{{end}}</li>{{end}}{{if $.FailingMore}}<li>… and {{$.FailingMore}} more</li>{{end}}</ul>{{end}}
{{with .Tail}}<p>Last lines of the log:</p><pre style="background:#111;color:#eee;padding:.6em;white-space:pre-wrap">{{.}}</pre>{{end}}
</body></html>
`))

// mail renders the mail for a result, or nil when it has no recipient.
// transition says the result changed the branch's state (failed, fixed,
// still failing); with mail results: all, other results are mailed too,
// to the author (and failures to the managers with managers: all-failures).
func (n *Notifier) mail(ctx context.Context, r *Record, event string, first *failRef, transition bool) *Notification {
	var to []string
	add := func(addrs ...string) {
		for _, a := range addrs {
			if p, err := mail.ParseAddress(a); err == nil && !slices.ContainsFunc(to, func(s string) bool { return strings.EqualFold(s, p.Address) }) {
				to = append(to, p.Address)
			}
		}
	}
	allFailures := n.cfg.Mail.Managers == MailAllFailures
	switch event {
	case EventFailed:
		add(r.Author.Email)
		if transition || allFailures {
			add(n.cfg.Mail.extra(r.Repo, r.Branch)...)
		}
	case EventFixed:
		add(r.Author.Email)
		if first != nil {
			add(first.Author.Email)
		}
		add(n.cfg.Mail.extra(r.Repo, r.Branch)...)
	case EventStillFailing:
		add(r.Author.Email) // the managers heard of the first failure…
		if allFailures {
			add(n.cfg.Mail.extra(r.Repo, r.Branch)...) // …unless they asked for every one
		}
	case EventPassed:
		add(r.Author.Email)
	}
	if len(to) == 0 {
		n.log.Info().Str("job_id", r.JobID).Str("event", event).Msg("no one to mail: the commit's author has no address and no extra recipients match")
		return nil
	}
	d := mailData{Event: event, Repo: r.Repo, Branch: r.Branch, Job: r.Name(), Arch: r.Arch, Commit: r.Commit,
		Short: events.Short(r.Commit), Subject: trimSubject(r.Subject), Author: r.Author, Status: r.Status, ExitCode: r.ExitCode,
		Error: r.Error, Attempt: r.Attempt, URL: n.jobURL(r.JobID), First: first}
	if first != nil {
		d.FirstShort = events.Short(first.Commit)
	}
	if event != EventFixed && event != EventPassed {
		for _, t := range r.Tests {
			if !events.Failing(t.Status) {
				continue
			}
			if len(d.Failing) == maxMailTests {
				d.FailingMore++
				continue
			}
			d.Failing = append(d.Failing, t)
		}
		if s := r.TestSummary; s != nil && s.Failed > len(d.Failing)+d.FailingMore {
			d.FailingMore = s.Failed - len(d.Failing) // not every test travels in the result
		}
		d.Tail = n.logTail(ctx, r, 50)
	}
	word := map[string]string{EventFailed: "FAILED", EventFixed: "FIXED", EventStillFailing: "still failing", EventPassed: "passed"}[event]
	subject := fmt.Sprintf("[jetci] %s: %s %s %s/%s at %s: %s", word, r.Repo, r.Branch, r.Name(), r.Arch, d.Short, d.Subject)
	id := fmt.Sprintf("mail.%s.%s.%d", event, r.JobID, r.Attempt)
	text, html, err := n.render(mailText, mailHTML, d)
	if err != nil {
		n.renderFailed(id, r.JobID, event, err)
		return nil
	}
	return &Notification{ID: id, Event: event, JobID: r.JobID,
		Mail: &MailMessage{To: to, Subject: subject, Text: text, HTML: html}}
}

// executor is a text or HTML template.
type executor interface {
	Execute(w io.Writer, data any) error
}

// render fills a mail's text and HTML templates.
func (n *Notifier) render(text, html executor, d any) (string, string, error) {
	var tb, hb bytes.Buffer
	if err := text.Execute(&tb, d); err != nil {
		return "", "", fmt.Errorf("text template: %w", err)
	}
	if err := html.Execute(&hb, d); err != nil {
		return "", "", fmt.Errorf("HTML template: %w", err)
	}
	return tb.String(), hb.String(), nil
}

// renderFailed reports a mail that could not be rendered: an error in the
// log and an unrenderable notification in the metrics. The same data would fail
// again, so it is not retried.
func (n *Notifier) renderFailed(id, jobID, event string, err error) {
	n.log.Error().Err(err).Str("id", id).Str("job_id", jobID).Str("event", event).Msg("mail not sent: its template failed")
	n.metrics.Notification("mail", "unrenderable")
}

// compose builds the RFC 5322 message: text and HTML alternatives.
func compose(from string, m *MailMessage, id string, now time.Time) []byte {
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	h := func(k, v string) { fmt.Fprintf(&b, "%s: %s\r\n", k, v) }
	h("From", from)
	h("To", strings.Join(m.To, ", "))
	h("Subject", mime.QEncoding.Encode("utf-8", m.Subject))
	h("Date", now.Format(time.RFC1123Z))
	domain := "jetci.invalid"
	if a, err := mail.ParseAddress(from); err == nil {
		if _, d, ok := strings.Cut(a.Address, "@"); ok {
			domain = d
		}
	}
	h("Message-ID", "<"+id+"@"+domain+">")
	h("Auto-Submitted", "auto-generated")
	h("MIME-Version", "1.0")
	h("Content-Type", "multipart/alternative; boundary="+mw.Boundary())
	b.WriteString("\r\n")
	for _, part := range []struct{ typ, body string }{{"text/plain", m.Text}, {"text/html", m.HTML}} {
		w, _ := mw.CreatePart(textproto.MIMEHeader{
			"Content-Type":              {part.typ + "; charset=utf-8"},
			"Content-Transfer-Encoding": {"quoted-printable"},
		})
		qp := quotedprintable.NewWriter(w)
		_, _ = qp.Write([]byte(part.body))
		_ = qp.Close()
	}
	_ = mw.Close()
	return b.Bytes()
}

// send delivers one message over SMTP: implicit TLS, STARTTLS (required, not
// opportunistic) or plain, with PLAIN auth when a username is set.
func (c MailConfig) send(ctx context.Context, from string, to []string, msg []byte) error {
	host, _, err := net.SplitHostPort(c.SMTP)
	if err != nil {
		return err
	}
	tc := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return fmt.Errorf("ca_file: %w", err)
		}
		pool, _ := x509.SystemCertPool()
		if pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("ca_file %s: no certificate in it", c.CAFile)
		}
		tc.RootCAs = pool
	}
	d := net.Dialer{Timeout: 15 * time.Second}
	var conn net.Conn
	if c.TLS == "tls" {
		conn, err = (&tls.Dialer{NetDialer: &d, Config: tc}).DialContext(ctx, "tcp", c.SMTP)
	} else {
		conn, err = d.DialContext(ctx, "tcp", c.SMTP)
	}
	if err != nil {
		return err
	}
	defer conn.Close()
	deadline := time.Now().Add(2 * time.Minute)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = conn.SetDeadline(deadline)
	var cl *smtp.Client
	if c.TLS == "starttls" {
		if cl, err = smtp.NewClientStartTLS(conn, tc); err != nil {
			if strings.Contains(err.Error(), "doesn't support STARTTLS") {
				return errors.New("the server does not offer STARTTLS (set tls: none to send in the clear, or tls: tls for port 465)")
			}
			return fmt.Errorf("starttls: %w", err)
		}
	} else {
		cl = smtp.NewClient(conn)
	}
	defer cl.Close()
	// go-smtp sets a deadline per command; keep the whole exchange within ours.
	cl.CommandTimeout, cl.SubmissionTimeout = time.Until(deadline), time.Until(deadline)
	if c.Username != "" {
		// As net/smtp's PlainAuth did: never send a password in the clear,
		// but to this machine.
		if _, isTLS := cl.TLSConnectionState(); !isTLS && !isLocalhost(host) {
			return errors.New("auth: refusing to send the password over an unencrypted connection (use tls: starttls or tls)")
		}
		if err := cl.Auth(sasl.NewPlainClient("", c.Username, c.Password)); err != nil {
			return fmt.Errorf("auth: %w", err)
		}
	}
	addr := from
	if a, err := mail.ParseAddress(from); err == nil {
		addr = a.Address
	}
	if err := cl.Mail(addr, nil); err != nil {
		return fmt.Errorf("MAIL FROM: %w", err)
	}
	for _, t := range to {
		if err := cl.Rcpt(t, nil); err != nil {
			return fmt.Errorf("RCPT TO %s: %w", t, err)
		}
	}
	w, err := cl.Data()
	if err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	if _, err := w.Write(msg); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("end of DATA: %w", err)
	}
	return cl.Quit()
}

func isLocalhost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// BranchChanged mails the author of the commit that broke a gated branch
// (and the --mail-to recipients) when it becomes broken (fix it before the
// window ends), failed (its second check failed; a re-check is needed) and
// open again (its held commits are released). Other changes send nothing.
func (n *Notifier) BranchChanged(ctx context.Context, st *events.BranchState) error {
	if n.cfg.Mail.SMTP == "" || st.Check != nil {
		return nil
	}
	if st.State == events.BranchOpen {
		return n.branchOpened(ctx, st)
	}
	if st.BrokenBy == nil {
		return nil
	}
	to := n.branchRecipients(st.Author, st.Repo, st.Branch)
	if len(to) == 0 {
		return nil
	}
	b := st.BrokenBy
	var subject, text string
	switch st.State {
	case events.BranchBroken:
		subject = fmt.Sprintf("[jetci] %s %s is broken: fix it by %s", st.Repo, st.Branch, st.WindowEnds.Local().Format("15:04"))
		text = fmt.Sprintf("%s on %s failed at %s, so %s %s is broken and later commits wait.\n\n"+
			"Please fix it before %s: then a second check of the branch head runs. If it passes, the waiting commits\n"+
			"are checked; if it fails, the branch stays closed until someone presses re-check.\n", b.QualifiedJob(), b.Arch, events.Short(b.Commit),
			st.Repo, st.Branch, st.WindowEnds.Local().Format(time.RFC1123))
	case events.BranchFailed:
		subject = fmt.Sprintf("[jetci] %s %s failed its second check: re-check needed", st.Repo, st.Branch)
		text = fmt.Sprintf("%s\n\nNothing runs on %s %s until a full run of its head passes: press Re-check branch, or run\n"+
			"jetci recheck --repo %s --branch %s (or jetci trigger of the head). %d commit(s) wait.\n", st.Reason, st.Repo, st.Branch, st.Repo, st.Branch, st.Held)
	default:
		return nil
	}
	return n.enqueue(ctx, n.branchMail(st, fmt.Sprintf("branch.%s.%s.%d", st.State, events.BranchKey(st.Repo, st.Branch), st.Since.UnixNano()),
		"branch-"+st.State, b.JobID, to, subject, text))
}

// branchOpened mails "open again" once per opening of a broken or failed
// branch (the state is published again as held commits are released; the
// notification's id is the opening's).
func (n *Notifier) branchOpened(ctx context.Context, st *events.BranchState) error {
	if len(st.Fixes) == 0 {
		return nil
	}
	f := st.Fixes[len(st.Fixes)-1]
	if st.Since.Before(f.At) {
		return nil // an older state, published late
	}
	to := n.branchRecipients(f.Author, st.Repo, st.Branch)
	if len(to) == 0 {
		return nil
	}
	subject := fmt.Sprintf("[jetci] %s %s is open again; %d held commit(s) released", st.Repo, st.Branch, f.Released)
	text := fmt.Sprintf("%s is open again; %d held commits released.\n\nIt was broken by %s and is fixed by %s: its %s passed.\n"+
		"The released commits are checked now, oldest first. A failure of one older than %s fails with the break:\n"+
		"it is recorded as \"broken by %s, fixed by %s\", and neither breaks the branch again nor is mailed to its author.\n",
		st.Branch, f.Released, events.Short(f.BrokenBy), events.Short(f.FixedBy), checkWord(f.Kind), events.Short(f.FixedBy),
		events.Short(f.BrokenBy), events.Short(f.FixedBy))
	return n.enqueue(ctx, n.branchMail(st, fmt.Sprintf("branch.open.%s.%d", events.BranchKey(st.Repo, st.Branch), f.At.UnixNano()),
		"branch-open", "", to, subject, text))
}

func checkWord(kind string) string {
	switch kind {
	case "recheck":
		return "re-check"
	case "trigger":
		return "triggered run"
	}
	return "second check"
}

// branchRecipients are the author of the break and the managers.
func (n *Notifier) branchRecipients(author events.Person, repo, branch string) []string {
	var to []string
	for _, a := range append([]string{author.Email}, n.cfg.Mail.extra(repo, branch)...) {
		if p, err := mail.ParseAddress(a); err == nil && !slices.Contains(to, p.Address) {
			to = append(to, p.Address)
		}
	}
	return to
}

func (n *Notifier) branchMail(st *events.BranchState, id, event, jobID string, to []string, subject, text string) *Notification {
	if n.cfg.PublicURL != "" {
		text += "\n" + strings.TrimRight(n.cfg.PublicURL, "/") + "/branch?" + url.Values{"repo": {st.Repo}, "branch": {st.Branch}}.Encode() + "\n"
	}
	return &Notification{ID: id, Event: event, JobID: jobID,
		Mail: &MailMessage{To: to, Subject: subject, Text: text + "\n-- \njetci\n",
			HTML: "<pre style=\"font-family:system-ui,sans-serif;white-space:pre-wrap\">" + htmltemplate.HTMLEscapeString(text) + "</pre>"}}
}
