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
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"net/smtp"
	"net/textproto"
	"net/url"
	"os"
	"slices"
	"strings"
	"text/template"
	"time"

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
}

var mailText = template.Must(template.New("text").Parse(`{{if eq .Event "failed"}}{{.Job}} on {{.Arch}} FAILED on {{.Repo}} {{.Branch}}.
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
{{end}}{{end}}{{with .Tail}}
Last lines of the log:

{{.}}
{{end}}
-- 
jetci
`))

var mailHTML = htmltemplate.Must(htmltemplate.New("html").Parse(`<!doctype html><html><body style="font-family:system-ui,sans-serif;font-size:14px">
<p>{{if eq .Event "failed"}}<b style="color:#c62828">{{.Job}} on {{.Arch}} failed</b> on {{.Repo}} {{.Branch}}.{{else if eq .Event "fixed"}}<b style="color:#1a7f37">{{.Job}} on {{.Arch}} passes again</b> on {{.Repo}} {{.Branch}}.{{else}}<b style="color:#c62828">{{.Job}} on {{.Arch}} fails</b> on {{.Repo}} {{.Branch}}, which was already broken.{{end}}</p>
<table style="border-collapse:collapse">
<tr><td style="color:#666;padding-right:1em">Commit</td><td><code>{{.Commit}}</code></td></tr>
<tr><td style="color:#666;padding-right:1em">Author</td><td>{{.Author.Name}} &lt;{{.Author.Email}}&gt;</td></tr>
<tr><td style="color:#666;padding-right:1em">Subject</td><td>{{.Subject}}</td></tr>
<tr><td style="color:#666;padding-right:1em">Result</td><td>{{.Status}}{{if .Error}}: {{.Error}}{{else if ne .Status "passed"}}, exit code {{.ExitCode}}{{end}} (attempt {{.Attempt}})</td></tr>
</table>
{{with .URL}}<p><a href="{{.}}">Open the job</a></p>{{end}}
{{with .First}}{{if eq $.Event "fixed"}}<p>It had been broken since <code>{{$.FirstShort}}</code> by {{.Author.Name}}: {{.Subject}}</p>{{else if eq $.Event "still-failing"}}<p>The branch was already broken by <code>{{$.FirstShort}}</code> ({{.Author.Name}}: {{.Subject}}); this mail is only for you, the author of a later commit that fails too.</p>{{end}}{{end}}
{{with .Tail}}<p>Last lines of the log:</p><pre style="background:#111;color:#eee;padding:.6em;white-space:pre-wrap">{{.}}</pre>{{end}}
</body></html>
`))

// mail renders the mail for a transition, or nil when it has no recipient.
func (n *Notifier) mail(ctx context.Context, r *Record, event string, first *failRef) *Notification {
	var to []string
	add := func(addrs ...string) {
		for _, a := range addrs {
			if p, err := mail.ParseAddress(a); err == nil && !slices.ContainsFunc(to, func(s string) bool { return strings.EqualFold(s, p.Address) }) {
				to = append(to, p.Address)
			}
		}
	}
	switch event {
	case EventFailed:
		add(r.Author.Email)
		add(n.cfg.Mail.extra(r.Repo, r.Branch)...)
	case EventFixed:
		add(r.Author.Email)
		if first != nil {
			add(first.Author.Email)
		}
		add(n.cfg.Mail.extra(r.Repo, r.Branch)...)
	case EventStillFailing:
		add(r.Author.Email) // the managers heard of the first failure
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
	if event != EventFixed {
		d.Tail = n.logTail(ctx, r, 50)
	}
	word := map[string]string{EventFailed: "FAILED", EventFixed: "FIXED", EventStillFailing: "still failing"}[event]
	subject := fmt.Sprintf("[jetci] %s: %s %s %s/%s at %s: %s", word, r.Repo, r.Branch, r.Name(), r.Arch, d.Short, d.Subject)
	var text, html bytes.Buffer
	_ = mailText.Execute(&text, d)
	_ = mailHTML.Execute(&html, d)
	return &Notification{ID: fmt.Sprintf("mail.%s.%s.%d", event, r.JobID, r.Attempt), Event: event, JobID: r.JobID,
		Mail: &MailMessage{To: to, Subject: subject, Text: text.String(), HTML: html.String()}}
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
	cl, err := smtp.NewClient(conn, host)
	if err != nil {
		return err
	}
	defer cl.Close()
	if c.TLS == "starttls" {
		if ok, _ := cl.Extension("STARTTLS"); !ok {
			return errors.New("the server does not offer STARTTLS (set tls: none to send in the clear, or tls: tls for port 465)")
		}
		if err := cl.StartTLS(tc); err != nil {
			return fmt.Errorf("starttls: %w", err)
		}
	}
	if c.Username != "" {
		if err := cl.Auth(smtp.PlainAuth("", c.Username, c.Password, host)); err != nil {
			return fmt.Errorf("auth: %w", err)
		}
	}
	addr := from
	if a, err := mail.ParseAddress(from); err == nil {
		addr = a.Address
	}
	if err := cl.Mail(addr); err != nil {
		return fmt.Errorf("MAIL FROM: %w", err)
	}
	for _, t := range to {
		if err := cl.Rcpt(t); err != nil {
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

func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// BranchChanged mails the author of the commit that broke a gated branch when
// it becomes broken (fix it before the window ends) or failed (its second
// check failed; a re-check is needed). Other changes send nothing.
func (n *Notifier) BranchChanged(ctx context.Context, st *events.BranchState) error {
	if n.cfg.Mail.SMTP == "" || st.BrokenBy == nil || st.State == events.BranchOpen || st.Check != nil {
		return nil
	}
	var to []string
	for _, a := range append([]string{st.Author.Email}, n.cfg.Mail.extra(st.Repo, st.Branch)...) {
		if p, err := mail.ParseAddress(a); err == nil && !slices.Contains(to, p.Address) {
			to = append(to, p.Address)
		}
	}
	if len(to) == 0 {
		return nil
	}
	b := st.BrokenBy
	link := ""
	if n.cfg.PublicURL != "" {
		link = strings.TrimRight(n.cfg.PublicURL, "/") + "/branch?" + url.Values{"repo": {st.Repo}, "branch": {st.Branch}}.Encode()
	}
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
		text = fmt.Sprintf("%s\n\nNothing runs on %s %s until someone re-checks it (jetci recheck --repo %s --branch %s, or the\n"+
			"Re-check branch button). %d commit(s) wait.\n", st.Reason, st.Repo, st.Branch, st.Repo, st.Branch, st.Held)
	default:
		return nil
	}
	if link != "" {
		text += "\n" + link + "\n"
	}
	note := &Notification{ID: fmt.Sprintf("branch.%s.%s.%d", st.State, events.BranchKey(st.Repo, st.Branch), st.Since.UnixNano()),
		Event: "branch-" + st.State, JobID: b.JobID,
		Mail: &MailMessage{To: to, Subject: subject, Text: text + "\n-- \njetci\n",
			HTML: "<pre style=\"font-family:system-ui,sans-serif;white-space:pre-wrap\">" + htmltemplate.HTMLEscapeString(text) + "</pre>"}}
	return n.enqueue(ctx, note)
}
