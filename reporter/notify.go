package reporter

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/metrics"
)

// Notification events.
const (
	EventFailed       = "failed"        // a branch × job × arch went from passing (or unknown) to failing
	EventFixed        = "fixed"         // … and back to passing
	EventStillFailing = "still-failing" // a later commit fails on a branch already broken
	EventFinished     = "finished"      // any finished job (webhooks only)
	EventPassed       = "passed"        // a passing result that changes nothing (mail with results: all)
)

// TypeNotification is the version of the outbox's messages.
const TypeNotification = "jetci.notification.v1"

// Notification is one message in the outbox (JETCI_NOTIFY): a rendered mail or
// a webhook body, with the id that keeps it from going out twice.
type Notification struct {
	Type    string           `json:"type"`
	ID      string           `json:"id"`
	Event   string           `json:"event"`
	JobID   string           `json:"job_id"`
	Mail    *MailMessage     `json:"mail,omitempty"`
	Webhook *WebhookDelivery `json:"webhook,omitempty"`
	Status  *StatusDelivery  `json:"status,omitempty"` // a commit status for a forge (forgestatus.go)
}

// MailMessage is a rendered mail.
type MailMessage struct {
	To      []string `json:"to"`
	Subject string   `json:"subject"`
	Text    string   `json:"text"`
	HTML    string   `json:"html"`
}

// WebhookDelivery is one POST to one URL.
type WebhookDelivery struct {
	URL  string          `json:"url"`
	Body json.RawMessage `json:"body"`
}

// branchState is what the notifier remembers of one repo × branch × job × arch,
// in the jetci-notify bucket: whether it passes, the newest result it has
// seen, and the first failing commit while it fails.
type branchState struct {
	Status    string    `json:"status"` // passing or failing
	Order     uint64    `json:"order"`  // the commit's first queue sequence: later commits are higher
	JobID     string    `json:"job_id"`
	Attempt   uint64    `json:"attempt"`
	Commit    string    `json:"commit"`
	FirstFail *failRef  `json:"first_fail,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

type failRef struct {
	Commit  string        `json:"commit"`
	JobID   string        `json:"job_id"`
	Attempt uint64        `json:"attempt"`
	Author  events.Person `json:"author"`
	Subject string        `json:"subject"`
}

// Notifier turns final results into notifications (Observe) and delivers them
// from the outbox (RunOutbox). Both halves keep their state in JetStream, so
// any number of reporters may run them, and a restart loses and doubles
// nothing: a notification is put in the outbox with a Msg-Id before the state
// moves on, and a sender claims its id in jetci-sent before it sends.
type Notifier struct {
	cfg     NotifyConfig
	js      jetstream.JetStream
	state   jetstream.KeyValue
	sent    jetstream.KeyValue
	gates   jetstream.KeyValue // the broken-build flow's branch states; nil: none
	logs    jetstream.ObjectStore
	log     zerolog.Logger
	metrics *metrics.Metrics
	client  *http.Client
	forges  forgeStates
	// sendMail delivers one mail; SMTP unless a test replaces it.
	sendMail func(ctx context.Context, from string, to []string, msg []byte) error
	now      func() time.Time
}

// NewNotifier opens the buckets; cfg must be resolved (NotifyConfig.Resolve).
func NewNotifier(ctx context.Context, cfg NotifyConfig, js jetstream.JetStream, m *metrics.Metrics, log zerolog.Logger) (*Notifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := &Notifier{cfg: cfg, js: js, log: log, metrics: m, now: time.Now,
		client: &http.Client{Timeout: 30 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	var err error
	if n.state, err = js.KeyValue(ctx, events.BucketNotify); err != nil {
		return nil, fmt.Errorf("open %s: %w", events.BucketNotify, err)
	}
	if n.sent, err = js.KeyValue(ctx, events.BucketSent); err != nil {
		return nil, fmt.Errorf("open %s: %w", events.BucketSent, err)
	}
	if n.logs, err = js.ObjectStore(ctx, events.BucketLogs); err != nil {
		return nil, fmt.Errorf("open %s: %w", events.BucketLogs, err)
	}
	if n.gates, err = js.KeyValue(ctx, events.BucketBranches); err != nil {
		n.gates = nil // no broken-build flow on this system
	}
	n.sendMail = cfg.Mail.send
	return n, nil
}

func stateKey(r *Record) string {
	return events.Token(r.Repo) + "." + events.Token(r.Branch) + "." + events.Token(events.QualifiedJob(r.Module, r.Job)) + "." + events.Token(r.Arch)
}

// order places a record's commit in its branch's history: the queue sequence
// of the job's first run, so a re-check of an old commit stays old.
func order(r *Record) uint64 {
	if len(r.Attempts) > 0 && r.Dropped == 0 {
		return r.Attempts[0].QueueSeq
	}
	return r.QueueSeq
}

func failing(s events.Status) bool { return s == events.StatusFailed || s == events.StatusError }

// decide folds a final record into the state. It returns the new state, the
// transition event ("" for none) and whether the state changed.
func decide(st *branchState, r *Record, now time.Time) (*branchState, string, bool) {
	o := order(r)
	if st != nil {
		if o < st.Order {
			return st, "", false // an older commit's result: the branch has moved on
		}
		if st.JobID == r.JobID && r.Attempt <= st.Attempt {
			return st, "", false // seen already (a redelivered result)
		}
	}
	next := &branchState{Order: o, JobID: r.JobID, Attempt: r.Attempt, Commit: r.Commit, UpdatedAt: now}
	was := ""
	if st != nil {
		was = st.Status
	}
	if failing(r.Status) {
		next.Status = "failing"
		if was == "failing" {
			next.FirstFail = st.FirstFail
			if st.Commit != r.Commit {
				return next, EventStillFailing, true
			}
			return next, "", true // the same commit failed again (a re-check)
		}
		next.FirstFail = &failRef{Commit: r.Commit, JobID: r.JobID, Attempt: r.Attempt, Author: r.Author, Subject: r.Subject}
		return next, EventFailed, true
	}
	next.Status = "passing"
	if was == "failing" {
		next.FirstFail = st.FirstFail // kept for the fixed mail, dropped with the next write
		return next, EventFixed, true
	}
	return next, "", true
}

// Observe handles a job's record after a finished event was folded in. It is
// called again for a redelivered event and must then do nothing new.
func (n *Notifier) Observe(ctx context.Context, r *Record) error {
	if r.Status.Final() && r.Class != events.ClassBisect {
		if note := n.finalStatus(r); note != nil {
			if err := n.enqueueStatus(ctx, note, r.Branch); err != nil {
				return err
			}
		}
	}
	if !r.Status.Final() || r.Status == events.StatusCancelled || !n.cfg.Enabled() {
		return nil
	}
	if failing(r.Status) {
		if fix := n.coveredBy(ctx, r); fix != nil {
			// A commit released by the broken-build flow, older than the
			// commit whose check opened the branch: it fails with the
			// break. Its author is not blamed, and the branch's state here
			// does not move (the fix was mailed already).
			n.log.Info().Str("job_id", r.JobID).Str("broken_by", events.Short(fix.BrokenBy)).Str("fixed_by", events.Short(fix.FixedBy)).
				Msg("a released commit older than the fix fails with the break: no mail")
			for _, w := range n.cfg.Webhooks {
				if w.Events == "finished" { // every finished job, this one too; no transition
					if err := n.enqueue(ctx, n.webhook(r, w.URL, EventFinished, "", nil)); err != nil {
						return err
					}
				}
			}
			return nil
		}
	}
	key := stateKey(r)
	for {
		var st *branchState
		var rev uint64
		e, err := n.state.Get(ctx, key)
		switch {
		case err == nil:
			st = &branchState{}
			if json.Unmarshal(e.Value(), st) != nil {
				st = nil // unreadable: start over rather than stop notifying
			}
			rev = e.Revision()
		case errors.Is(err, jetstream.ErrKeyNotFound):
		default:
			return fmt.Errorf("notification state %s: %w", key, err)
		}
		next, event, changed := decide(st, r, n.now().UTC())
		all := n.cfg.Mail.Results == MailAll && n.cfg.Mail.SMTP != ""
		if !changed {
			if all && st != nil && !(st.JobID == r.JobID && r.Attempt <= st.Attempt) {
				// Every result goes to its author: one of an older commit
				// too. A redelivered one has the same id, and goes once.
				if m := n.mail(ctx, r, resultEvent(r), nil, false); m != nil {
					return n.enqueue(ctx, m)
				}
			}
			return nil
		}
		var notes []*Notification
		if n.cfg.Mail.SMTP != "" {
			mailEvent, first := event, next.FirstFail
			if mailEvent == "" && all {
				mailEvent, first = resultEvent(r), nil
			}
			if mailEvent != "" {
				if m := n.mail(ctx, r, mailEvent, first, event != ""); m != nil {
					notes = append(notes, m)
				}
			}
		}
		for _, w := range n.cfg.Webhooks {
			if w.Events == "transitions" && event == "" {
				continue
			}
			ev := event
			if w.Events == "finished" {
				ev = EventFinished
			}
			notes = append(notes, n.webhook(r, w.URL, ev, event, next.FirstFail))
		}
		for _, note := range notes {
			if err := n.enqueue(ctx, note); err != nil {
				return err
			}
		}
		data, _ := json.Marshal(next)
		if rev == 0 {
			_, err = n.state.Create(ctx, key, data)
		} else {
			_, err = n.state.Update(ctx, key, data, rev)
		}
		if err == nil {
			return nil
		}
		if !isConflict(err) {
			return fmt.Errorf("notification state %s: %w", key, err)
		}
		// Another reporter moved the state: decide again on what it wrote.
	}
}

// enqueue puts a notification in the outbox. Its Msg-Id makes a second put of
// the same notification (a redelivered result) a no-op. A full outbox refuses
// it: that is logged and counted, and result processing goes on.
func (n *Notifier) enqueue(ctx context.Context, note *Notification) error {
	note.Type = TypeNotification
	data, err := json.Marshal(note)
	if err != nil {
		return err
	}
	subject := events.SubjectNotify + "." + kindOf(note)
	_, err = n.js.Publish(ctx, subject, data, jetstream.WithMsgID(note.ID))
	if err != nil && strings.Contains(err.Error(), "maximum messages exceeded") {
		n.log.Error().Err(err).Str("id", note.ID).Msg("notification outbox is full: notification dropped")
		n.metrics.Notification(kindOf(note), "dropped")
		return nil
	}
	if err != nil {
		return fmt.Errorf("queue notification %s: %w", note.ID, err)
	}
	n.log.Debug().Str("id", note.ID).Str("event", note.Event).Msg("notification queued")
	return nil
}

// resultEvent names a result that is no transition, for mail with results: all.
func resultEvent(r *Record) string {
	if failing(r.Status) {
		return EventFailed
	}
	return EventPassed
}

// coveredBy returns the broken-build fix whose break a failing record's
// commit carries (see events.BranchFix), or nil.
func (n *Notifier) coveredBy(ctx context.Context, r *Record) *events.BranchFix {
	if n.gates == nil {
		return nil
	}
	e, err := n.gates.Get(ctx, events.BranchKey(r.Repo, r.Branch))
	if err != nil {
		return nil
	}
	st, err := events.DecodeAs[events.BranchState](e.Value())
	if err != nil {
		return nil
	}
	return st.CoveredBy(r.Commit)
}

func kindOf(note *Notification) string {
	switch {
	case note.Webhook != nil:
		return "webhook"
	case note.Status != nil:
		return "status"
	}
	return "mail"
}

func (n *Notifier) jobURL(jobID string) string {
	if n.cfg.PublicURL == "" {
		return ""
	}
	return strings.TrimRight(n.cfg.PublicURL, "/") + "/job/" + jobID
}

// logTail returns the last lines of an attempt's stored log.
func (n *Notifier) logTail(ctx context.Context, r *Record, lines int) string {
	if r.Log == "" {
		return ""
	}
	text, _, err := (&Reporter{logs: n.logs}).storedLog(ctx, r.Log, 64<<10)
	if err != nil {
		n.log.Warn().Err(err).Str("job_id", r.JobID).Msg("log for a notification")
		return ""
	}
	text = strings.TrimRight(text, "\n")
	ls := strings.Split(text, "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

func shortHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:6])
}
