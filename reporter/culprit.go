package reporter

import (
	"context"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"net/http"
	"net/mail"
	"slices"
	"text/template"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/events"
)

// EventCulprit is the notification a bisection's culprit's author gets.
const EventCulprit = "culprit"

// culpritData is what the culprit mail templates get.
type culpritData struct {
	B                   *events.Bisection
	Culprit, LastGood   events.BisectCommit
	BadURL, GoodURL     string
	BadTail, GoodTail   string
	BadJobID, GoodJobID string
}

var culpritText = template.Must(template.New("text").Parse(`{{.B.Name}} on {{.B.Arch}} broke on {{.B.Repo}} {{.B.Branch}} at your commit {{.Culprit.Commit}}.

jetci bisected the commits that had not been tested one by one ({{.B.Runs}} runs),
then ran the culprit and its parent once more: it failed twice, its parent passed twice.

First bad commit:  {{.Culprit.Commit}}
  Author:          {{.Culprit.Author.Name}} <{{.Culprit.Author.Email}}>
  Subject:         {{.Culprit.Subject}}
{{with .BadURL}}  Job:             {{.}}
{{end}}Last good commit:  {{.LastGood.Commit}}
  Author:          {{.LastGood.Author.Name}} <{{.LastGood.Author.Email}}>
  Subject:         {{.LastGood.Subject}}
{{with .GoodURL}}  Job:             {{.}}
{{end}}
Steps:
{{range .B.Steps}}  {{printf "%-15s" .Kind}} {{.Commit}} {{.Status}}
{{end}}{{with .BadTail}}
Last lines of the log at the first bad commit:
{{.}}
{{end}}{{with .GoodTail}}
Last lines of the log at the last good commit:
{{.}}
{{end}}
-- 
jetci
`))

var culpritHTML = htmltemplate.Must(htmltemplate.New("html").Parse(`<!doctype html><html><body style="font-family:system-ui,sans-serif;font-size:14px">
<p><b style="color:#c62828">{{.B.Name}} on {{.B.Arch}} broke</b> on {{.B.Repo}} {{.B.Branch}} at your commit <code>{{.Culprit.Commit}}</code>.</p>
<p>jetci bisected the commits that had not been tested one by one ({{.B.Runs}} runs), then ran the culprit and its parent once more:
it failed twice, its parent passed twice.</p>
<table style="border-collapse:collapse">
<tr><td style="color:#666;padding-right:1em">First bad commit</td><td><code>{{.Culprit.Commit}}</code> {{.Culprit.Author.Name}}: {{.Culprit.Subject}}{{with .BadURL}} (<a href="{{.}}">job</a>){{end}}</td></tr>
<tr><td style="color:#666;padding-right:1em">Last good commit</td><td><code>{{.LastGood.Commit}}</code> {{.LastGood.Author.Name}}: {{.LastGood.Subject}}{{with .GoodURL}} (<a href="{{.}}">job</a>){{end}}</td></tr>
</table>
<p>Steps:</p><ol>{{range .B.Steps}}<li>{{.Kind}} <code>{{.Commit}}</code>: {{.Status}}</li>{{end}}</ol>
{{with .BadTail}}<p>Last lines of the log at the first bad commit:</p><pre style="background:#111;color:#eee;padding:.6em;white-space:pre-wrap">{{.}}</pre>{{end}}
{{with .GoodTail}}<p>Last lines of the log at the last good commit:</p><pre style="background:#111;color:#eee;padding:.6em;white-space:pre-wrap">{{.}}</pre>{{end}}
</body></html>
`))

// BisectionChanged mails the culprit's author when a bisection names one
// (state found). Flaky and unresolved bisections blame nobody and send
// nothing. The notification's id is the bisection's, so it goes out once.
func (n *Notifier) BisectionChanged(ctx context.Context, b *events.Bisection) error {
	if n.cfg.Mail.SMTP == "" || b.State != events.BisectFound || b.Culprit == nil || b.LastGood == nil {
		return nil
	}
	addr, err := mail.ParseAddress(b.Culprit.Author.Email)
	if err != nil {
		n.log.Info().Str("repo", b.Repo).Str("commit", b.Culprit.Commit).Msg("culprit found, but its author has no address to mail")
		return nil
	}
	d := culpritData{B: b, Culprit: *b.Culprit, LastGood: *b.LastGood,
		BadJobID:  events.JobID(b.Repo, b.Branch, b.Culprit.Commit, b.Name(), b.Arch),
		GoodJobID: events.JobID(b.Repo, b.Branch, b.LastGood.Commit, b.Name(), b.Arch)}
	d.BadURL, d.GoodURL = n.jobURL(d.BadJobID), n.jobURL(d.GoodJobID)
	// The evidence: the logs of the verification runs (the newest of each).
	for _, s := range slices.Backward(b.Steps) {
		switch {
		case s.Kind == events.StepVerifyCulprit && d.BadTail == "":
			d.BadTail = n.objectTail(ctx, s.Log, 30)
		case s.Kind == events.StepVerifyParent && d.GoodTail == "":
			d.GoodTail = n.objectTail(ctx, s.Log, 30)
		}
	}
	subject := fmt.Sprintf("[jetci] CULPRIT: %s %s %s/%s broke at %s: %s", b.Repo, b.Branch, b.Name(), b.Arch,
		events.Short(b.Culprit.Commit), trimSubject(b.Culprit.Subject))
	text, html, err := n.render(culpritText, culpritHTML, d)
	if err != nil {
		n.renderFailed("mail.culprit."+b.ID, d.BadJobID, EventCulprit, err)
		return nil
	}
	return n.enqueue(ctx, &Notification{ID: "mail.culprit." + b.ID, Event: EventCulprit, JobID: d.BadJobID,
		Mail: &MailMessage{To: []string{addr.Address}, Subject: subject, Text: text, HTML: html}})
}

// objectTail is the last lines of a stored log object ("" if there is none).
func (n *Notifier) objectTail(ctx context.Context, object string, lines int) string {
	if object == "" {
		return ""
	}
	return n.logTail(ctx, &Record{Log: object}, lines)
}

// consumeBisections hands every bisection state change to the notifier.
func (r *Reporter) consumeBisections(ctx context.Context) error {
	return consumeForMail(ctx, r, events.StreamBisect, events.ConsumerNotifierBisect, "bisection state changes, for culprit mails",
		"a bisection", r.notifier.BisectionChanged)
}

// Bisections lists the bisections of a repo (and branch, if given), newest
// first, from the jetci-bisect bucket.
func (r *Reporter) Bisections(ctx context.Context, repo, branch string) ([]*events.Bisection, error) {
	kv, err := r.js.KeyValue(ctx, events.BucketBisect)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	filter := "b.>"
	if repo != "" {
		filter = "b." + events.Token(repo) + ".>"
		if branch != "" {
			filter = "b." + events.Token(repo) + "." + events.Token(branch) + ".*"
		}
	}
	lister, err := kv.ListKeysFiltered(ctx, filter)
	if err != nil {
		return nil, err
	}
	var out []*events.Bisection
	for key := range lister.Keys() {
		e, err := kv.Get(ctx, key)
		if err != nil {
			continue
		}
		if b, err := events.DecodeAs[events.Bisection](e.Value()); err == nil {
			out = append(out, b)
		}
	}
	slices.SortFunc(out, func(a, b *events.Bisection) int { return b.StartedAt.Compare(a.StartedAt) })
	return out, nil
}

// apiBisections is GET /api/v1/bisections?repo=R[&branch=B]: every bisection
// with its steps, newest first.
func (r *Reporter) apiBisections(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	repo, branch := q.Get("repo"), q.Get("branch")
	if repo == "" && branch != "" {
		writeError(w, http.StatusBadRequest, "want ?repo=R with &branch=B")
		return
	}
	bs, err := r.Bisections(req.Context(), repo, branch)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"bisections": nonNil(bs)})
}

// branchBisections are the newest bisections of a branch, for its page.
func (r *Reporter) branchBisections(ctx context.Context, repo, branch string) []*events.Bisection {
	bs, err := r.Bisections(ctx, repo, branch)
	if err != nil {
		r.log.Warn().Err(err).Msg("bisections for a branch page")
	}
	return bs[:min(len(bs), 10)]
}
