package reporter

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/jetci/jetci/events"
)

// TypeWebhook versions the webhook payload. Fields are only ever added to v1.
const TypeWebhook = "jetci.webhook.v1"

// WebhookPayload is the JSON body POSTed to webhooks (see docs/notifications.md, "Webhooks").
type WebhookPayload struct {
	Type       string        `json:"type"`
	Event      string        `json:"event"`                // finished, failed, fixed or still-failing
	Transition string        `json:"transition,omitempty"` // for "finished": failed, fixed or still-failing if this result was one
	DeliveryID string        `json:"delivery_id"`
	JobID      string        `json:"job_id"`
	Repo       string        `json:"repo"`
	Branch     string        `json:"branch"`
	Commit     string        `json:"commit"`
	Job        string        `json:"job"`
	Module     string        `json:"module,omitempty"`
	Arch       string        `json:"arch"`
	Status     events.Status `json:"status"`
	Attempt    uint64        `json:"attempt"`
	ExitCode   int           `json:"exit_code"`
	Error      string        `json:"error,omitempty"`
	DurationMs int64         `json:"duration_ms"`
	Runner     string        `json:"runner,omitempty"`
	Author     events.Person `json:"author"`
	Subject    string        `json:"subject"`
	FinishedAt time.Time     `json:"finished_at"`
	JobURL     string        `json:"job_url,omitempty"`
	LogURL     string        `json:"log_url,omitempty"`
	// FirstFailingCommit is the commit that broke the branch, for failed,
	// still-failing and fixed.
	FirstFailingCommit string `json:"first_failing_commit,omitempty"`
	// Flaky: passed only on a retry (retry:); TestSummary counts the tests.
	Flaky       bool                `json:"flaky,omitempty"`
	TestSummary *events.TestSummary `json:"test_summary,omitempty"`
}

func (n *Notifier) webhook(r *Record, url, event, transition string, first *failRef) *Notification {
	id := fmt.Sprintf("hook.%s.%s.%s.%d", shortHash(url), event, r.JobID, r.Attempt)
	p := WebhookPayload{Type: TypeWebhook, Event: event, DeliveryID: id, JobID: r.JobID, Repo: r.Repo, Branch: r.Branch,
		Commit: r.Commit, Job: r.Job, Module: r.Module, Arch: r.Arch, Status: r.Status, Attempt: r.Attempt, ExitCode: r.ExitCode, Error: r.Error,
		DurationMs: r.DurationMs, Runner: r.Runner, Author: r.Author, Subject: trimSubject(r.Subject), FinishedAt: r.FinishedAt,
		JobURL: n.jobURL(r.JobID), Flaky: r.Flaky, TestSummary: r.TestSummary}
	if event == EventFinished {
		p.Transition = transition
	}
	if p.JobURL != "" && r.Log != "" {
		p.LogURL = fmt.Sprintf("%s/api/v1/jobs/%s/log?attempt=%d", strings.TrimRight(n.cfg.PublicURL, "/"), r.JobID, r.Attempt)
	}
	if first != nil && (transition != "" || event != EventFinished) {
		p.FirstFailingCommit = first.Commit
	}
	body, _ := json.Marshal(p)
	return &Notification{ID: id, Event: event, JobID: r.JobID, Webhook: &WebhookDelivery{URL: url, Body: body}}
}

// Sign is the X-Jetci-Signature-256 header value of a body: "sha256=" and the
// hex HMAC-SHA256 of the body with the webhook's secret. Receivers compute the
// same over the raw body and compare in constant time.
func Sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// deliver POSTs one webhook. Any 2xx is success; anything else is retried.
func (n *Notifier) deliver(ctx context.Context, note *Notification) error {
	var secret string
	found := false
	for _, w := range n.cfg.Webhooks {
		if w.URL == note.Webhook.URL {
			secret, found = w.Secret, true
		}
	}
	if !found {
		return errNoLongerConfigured
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, note.Webhook.URL, bytes.NewReader(note.Webhook.Body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "jetci-webhook/1")
	req.Header.Set("X-Jetci-Event", note.Event)
	req.Header.Set("X-Jetci-Delivery", note.ID)
	req.Header.Set("X-Jetci-Signature-256", Sign(secret, note.Webhook.Body))
	resp, err := n.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s answered %s", note.Webhook.URL, resp.Status)
	}
	return nil
}
