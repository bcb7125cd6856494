package reporter

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"text/template"

	"github.com/rs/zerolog"
)

// TestMailTemplateErrorsAreReported: a template that fails is an error in the
// log naming the mail, not a mail sent with a truncated body.
func TestMailTemplateErrorsAreReported(t *testing.T) {
	var logs bytes.Buffer
	n := &Notifier{log: zerolog.New(&logs)}
	bad := template.Must(template.New("bad").Parse("{{.NoSuchField}}"))
	if _, _, err := n.render(bad, mailHTML, mailData{}); err == nil || !strings.Contains(err.Error(), "text template") {
		t.Fatalf("render with a failing text template: err %v, want a text template error", err)
	}
	if _, _, err := n.render(mailText, bad, mailData{}); err == nil || !strings.Contains(err.Error(), "HTML template") {
		t.Fatalf("render with a failing HTML template: err %v, want an HTML template error", err)
	}
	text, html, err := n.render(mailText, mailHTML, mailData{Event: EventFailed, Repo: "proj", Branch: "main"})
	if err != nil || !strings.Contains(text, "FAILED on proj main") || !strings.Contains(html, "failed") {
		t.Fatalf("render of the real templates: %v, text %q", err, text)
	}
	// A bisection without its steps (a bug elsewhere) fails the culprit
	// templates: that is reported too.
	if _, _, err := n.render(culpritText, culpritHTML, culpritData{}); err == nil {
		t.Fatalf("render of the culprit templates without a bisection: no error")
	}
	n.renderFailed("mail.failed.x.1", "x", EventFailed, errors.New("boom"))
	if !strings.Contains(logs.String(), `"level":"error"`) || !strings.Contains(logs.String(), "mail.failed.x.1") {
		t.Errorf("renderFailed logged %q, want an error naming the mail", logs.String())
	}
}
