package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/events"
)

// Culprit finding. When a job fails on a bisected branch and the commits
// since its last pass there were not each tested (superseded, held, or never
// queued for that job), the dispatcher tests the commit in the middle of that
// range at the bisect class, halves it, and so on until one commit fails
// whose parent passes; then it runs both once more. Both as before: the
// culprit is named (state found, and the reporter mails its author); a re-run
// that disagrees: the failure is flaky and nobody is blamed.
//
// Everything lives in the jetci-bisect bucket, so a restarted dispatcher goes
// on where it stopped and any number of dispatchers share the work:
//
//	c.<repo>.<branch>.<sha>    a commit of the branch: its first parent, author, subject
//	o.<repo>.<branch>.<job-id> the newest queued or final status of a job (a repo × branch × commit × job × arch)
//	p.<repo>.<branch>.<job-id> a failure that may need a bisection, until it is decided
//	b.<repo>.<branch>.<job-id> a bisection, named by the failure that started it (events.Bisection)
//	since                      when bisecting was first turned on: older failures start none
//
// A bisection is created with a compare-and-swap Create and moves on with
// compare-and-swap updates; a run is asked for with a trigger id that names
// the bisection and the step, so asking twice queues it once (the commit's and
// the job's Msg-Ids carry the trigger id).

// MaxBisectCommits bounds the range a bisection walks back over.
const MaxBisectCommits = 5000

// bisectReask is how long a step may go unqueued before it is asked for again
// (the dispatcher that asked died, or no observer answered).
const bisectReask = 10 * time.Second

// bisectWaitUnknown is how long a failure waits for its commits to be indexed
// before it is dropped (a branch whose history starts with it).
const bisectWaitUnknown = time.Minute

func matchRule(rules []GateRule, repo, branch string) bool {
	for _, r := range rules {
		if r.Repo != "*" && r.Repo != repo {
			continue
		}
		if ok, _ := path.Match(r.Branch, branch); r.Branch == "" || ok {
			return true
		}
	}
	return false
}

func (d *Dispatcher) bisected(repo, branch string) bool { return matchRule(d.cfg.Bisect, repo, branch) }

type bisector struct {
	kv    jetstream.KeyValue
	since time.Time

	mu     sync.Mutex
	active map[string]bool // keys of bisections not done yet
}

// commitInfo is a commit's entry (c.…).
type commitInfo struct {
	Parents []string      `json:"parents,omitempty"`
	Author  events.Person `json:"author"`
	Subject string        `json:"subject,omitempty"`
}

// outcome is a job's entry (o.…): the status of its newest run.
type outcome struct {
	Status events.Status `json:"status"`
	Seq    uint64        `json:"seq,omitempty"`
}

// pending is a failure waiting to be decided (p.…).
type pending struct {
	Repo   string    `json:"repo"`
	Branch string    `json:"branch"`
	Commit string    `json:"commit"`
	Job    string    `json:"job"`
	Module string    `json:"module,omitempty"`
	Arch   string    `json:"arch"`
	JobID  string    `json:"job_id"`
	Since  time.Time `json:"since"`
}

func branchKey(prefix, repo, branch, id string) string {
	return prefix + "." + events.Token(repo) + "." + events.Token(branch) + "." + id
}

var shaRE = regexp.MustCompile(`^[0-9a-f]{4,64}$`)

// RunBisect runs culprit finding until ctx ends: it indexes the commits and
// job outcomes of bisected branches, notes failures, and drives bisections.
func (d *Dispatcher) RunBisect(ctx context.Context) error {
	if len(d.cfg.Bisect) == 0 {
		return nil
	}
	kv, err := d.js.KeyValue(ctx, events.BucketBisect)
	if err != nil {
		return fmt.Errorf("open %s: %w", events.BucketBisect, err)
	}
	b := &bisector{kv: kv, active: map[string]bool{}}
	now := []byte(d.now().UTC().Format(time.RFC3339Nano))
	if _, err := kv.Create(ctx, "since", now); err != nil && !isConflict(err) {
		return fmt.Errorf("bisect: %w", err)
	}
	e, err := kv.Get(ctx, "since")
	if err != nil {
		return fmt.Errorf("bisect: %w", err)
	}
	if b.since, err = time.Parse(time.RFC3339Nano, string(e.Value())); err != nil {
		return fmt.Errorf("bisect: bad since %q: %w", e.Value(), err)
	}
	d.bisect = b
	// Its helpers are the culprit search's own: they end with it and it waits
	// for them, so a restarted search never runs beside the last one's.
	ctx, stop := context.WithCancel(ctx)
	var helpers sync.WaitGroup
	defer func() { stop(); helpers.Wait() }()
	helpers.Go(func() { d.indexCommits(ctx) })
	helpers.Go(func() { d.watchBisections(ctx) })
	helpers.Go(func() { d.bisectTimer(ctx) })
	cfg := jetstream.ConsumerConfig{
		Durable:     events.ConsumerBisect,
		Description: "culprit finding: queued and finished jobs of bisected branches",
		FilterSubjects: []string{events.SubjectResults + ".*.*." + events.KindQueued,
			events.SubjectResults + ".*.*." + events.KindFinished},
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       30 * time.Second,
	}
	return events.Consume(ctx, d.js, events.StreamResults, cfg, 64, d.log, func(m jetstream.Msg) {
		ev, err := events.Decode(m.Data())
		if err != nil || !d.signed(ctx, m, ev) {
			_ = m.Term()
			return
		}
		if err := d.onBisectEvent(ctx, ev); err != nil {
			if ctx.Err() != nil {
				return // stopping: redelivered to the next dispatcher
			}
			d.log.Warn().Err(err).Msg("culprit finding: a result; will retry")
			_ = m.NakWithDelay(time.Second)
			return
		}
		_ = m.Ack()
	})
}

// indexCommits keeps the commits of bisected branches, so a failure can walk
// back its first-parent chain.
func (d *Dispatcher) indexCommits(ctx context.Context) {
	cfg := jetstream.ConsumerConfig{
		Durable:       events.ConsumerBisectCommits,
		Description:   "culprit finding: the history of bisected branches",
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       30 * time.Second,
	}
	err := events.Consume(ctx, d.js, events.StreamCommits, cfg, 256, d.log, func(m jetstream.Msg) {
		ev, err := events.DecodeAs[events.CommitDetected](m.Data())
		if err != nil {
			_ = m.Term()
			return
		}
		if !d.bisected(ev.Repo, ev.Branch) || !shaRE.MatchString(ev.Commit) {
			_ = m.Ack()
			return
		}
		data, _ := json.Marshal(commitInfo{Parents: ev.Parents, Author: ev.Author, Subject: ev.Subject})
		if _, err := d.bisect.kv.Create(ctx, branchKey("c", ev.Repo, ev.Branch, ev.Commit), data); err != nil && !isConflict(err) {
			d.log.Warn().Err(err).Msg("culprit finding: index a commit; will retry")
			_ = m.NakWithDelay(time.Second)
			return
		}
		_ = m.Ack()
	})
	if err != nil {
		d.log.Error().Err(err).Msg("culprit finding: commit index stopped")
	}
}

func (d *Dispatcher) onBisectEvent(ctx context.Context, ev any) error {
	switch v := ev.(type) {
	case *events.JobQueued:
		if !d.bisected(v.Repo, v.Branch) {
			return nil
		}
		o := outcome{Status: events.StatusQueued, Seq: v.QueueSeq}
		if v.Held {
			o = outcome{Status: events.StatusHeld}
		}
		if err := d.noteOutcome(ctx, v.Repo, v.Branch, v.JobID, o); err != nil {
			return err
		}
		if strings.HasPrefix(v.TriggerID, events.BisectTriggerPrefix) && !v.Held {
			return d.stepQueued(ctx, v)
		}
	case *events.JobFinished:
		if !d.bisected(v.Repo, v.Branch) {
			return nil
		}
		if err := d.noteOutcome(ctx, v.Repo, v.Branch, v.JobID, outcome{Status: v.Status, Seq: v.QueueSeq}); err != nil {
			return err
		}
		if strings.HasPrefix(v.TriggerID, events.BisectTriggerPrefix) {
			return d.stepFinished(ctx, v)
		}
		if failing(v.Status) && v.Job != "pipeline" && v.Class != events.ClassBisect && !v.FinishedAt.Before(d.bisect.since) {
			return d.noteFailure(ctx, v)
		}
	}
	return nil
}

// noteOutcome keeps the newest run's status of a job: a higher queue sequence
// wins, and at the same one a final status wins over queued.
func (d *Dispatcher) noteOutcome(ctx context.Context, repo, branch, jobID string, o outcome) error {
	key := branchKey("o", repo, branch, jobID)
	for {
		var old outcome
		e, err := d.bisect.kv.Get(ctx, key)
		var rev uint64
		switch {
		case err == nil:
			rev = e.Revision()
			_ = json.Unmarshal(e.Value(), &old)
			newer := o.Seq > old.Seq || o.Seq == old.Seq && o.Status.Final() && !old.Status.Final()
			if !newer || old == o {
				return nil
			}
		case !errors.Is(err, jetstream.ErrKeyNotFound):
			return err
		}
		data, _ := json.Marshal(o)
		if rev == 0 {
			_, err = d.bisect.kv.Create(ctx, key, data)
		} else {
			_, err = d.bisect.kv.Update(ctx, key, data, rev)
		}
		if err == nil || !isConflict(err) {
			return err
		}
	}
}

func (d *Dispatcher) getOutcome(ctx context.Context, repo, branch, jobID string) (outcome, error) {
	var o outcome
	e, err := d.bisect.kv.Get(ctx, branchKey("o", repo, branch, jobID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return o, nil
	}
	if err != nil {
		return o, err
	}
	_ = json.Unmarshal(e.Value(), &o)
	return o, nil
}

func (d *Dispatcher) getCommit(ctx context.Context, repo, branch, sha string) (*commitInfo, error) {
	e, err := d.bisect.kv.Get(ctx, branchKey("c", repo, branch, sha))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var c commitInfo
	if err := json.Unmarshal(e.Value(), &c); err != nil {
		return nil, err
	}
	return &c, nil
}

// noteFailure records a failure for a decision, and decides at once if it can.
func (d *Dispatcher) noteFailure(ctx context.Context, fin *events.JobFinished) error {
	if _, err := d.bisect.kv.Get(ctx, events.BisectKey(fin.Repo, fin.Branch, fin.JobID)); err == nil {
		return nil // bisected already (a re-check that failed again)
	}
	p := &pending{Repo: fin.Repo, Branch: fin.Branch, Commit: fin.Commit, Job: fin.Job, Module: fin.Module, Arch: fin.Arch, JobID: fin.JobID, Since: d.now().UTC()}
	data, _ := json.Marshal(p)
	key := branchKey("p", fin.Repo, fin.Branch, fin.JobID)
	if _, err := d.bisect.kv.Create(ctx, key, data); err != nil && !isConflict(err) {
		return err
	}
	return d.decide(ctx, key, p)
}

// decide looks at a pending failure: it starts a bisection, drops the
// failure (its parent was tested, or failed too, or nothing before it passed),
// or leaves it for the next look (a commit of the range is still queued, or
// not indexed yet).
func (d *Dispatcher) decide(ctx context.Context, key string, p *pending) error {
	b, wait, why, err := d.walk(ctx, p)
	if err != nil {
		return err
	}
	if wait {
		if d.now().Sub(p.Since) < bisectWaitUnknown || why == "" {
			return nil
		}
	}
	log := d.log.With().Str("repo", p.Repo).Str("branch", p.Branch).Str("commit", events.Short(p.Commit)).Str("job", p.Job).Str("arch", p.Arch).Logger()
	if b != nil {
		asks := d.advance(b)
		data, err := events.Encode(b)
		if err != nil {
			return err
		}
		bkey := events.BisectKey(p.Repo, p.Branch, b.ID)
		rev, err := d.bisect.kv.Create(ctx, bkey, data)
		switch {
		case isConflict(err): // another dispatcher started it
		case err != nil:
			return err
		default:
			d.publishBisection(ctx, bkey, rev, data)
			log.Info().Str("good", events.Short(b.Good)).Int("commits", len(b.Commits)).Msg("bisecting: the commits since the last pass were not each tested")
			d.ask(ctx, b, asks)
		}
	} else if why != "" {
		log.Debug().Str("why", why).Msg("no bisection")
	}
	return d.bisect.kv.Delete(ctx, key)
}

// walk follows a failure's first parents back to the last commit where the
// job passed. It returns the bisection to start; or wait (with why, if it
// should be dropped after waiting long enough); or neither (with why).
func (d *Dispatcher) walk(ctx context.Context, p *pending) (*events.Bisection, bool, string, error) {
	head, err := d.getCommit(ctx, p.Repo, p.Branch, p.Commit)
	if err != nil {
		return nil, false, "", err
	}
	if head == nil {
		return nil, true, "the failing commit is not indexed", nil
	}
	chain := []events.BisectCommit{{Commit: p.Commit, Author: head.Author, Subject: head.Subject, Status: events.StatusFailed}}
	x := head
	for {
		if len(x.Parents) == 0 {
			return nil, false, "no earlier commit passed", nil
		}
		sha := x.Parents[0]
		c, err := d.getCommit(ctx, p.Repo, p.Branch, sha)
		if err != nil {
			return nil, false, "", err
		}
		if c == nil {
			return nil, true, "commit " + events.Short(sha) + " is not indexed", nil
		}
		o, err := d.getOutcome(ctx, p.Repo, p.Branch, events.JobID(p.Repo, p.Branch, sha, events.QualifiedJob(p.Module, p.Job), p.Arch))
		if err != nil {
			return nil, false, "", err
		}
		bc := events.BisectCommit{Commit: sha, Author: c.Author, Subject: c.Subject}
		switch o.Status {
		case events.StatusPassed:
			bc.Status = events.StatusPassed
			chain = append(chain, bc)
			if len(chain) == 2 {
				return nil, false, "its parent passed", nil
			}
			slices.Reverse(chain)
			now := d.now().UTC()
			return &events.Bisection{ID: p.JobID, Repo: p.Repo, Branch: p.Branch, Job: p.Job, Module: p.Module, Arch: p.Arch, State: events.BisectRunning,
				Good: sha, Bad: p.Commit, Commits: chain, Steps: []events.BisectStep{}, StartedAt: now, UpdatedAt: now}, false, "", nil
		case events.StatusFailed, events.StatusError:
			return nil, false, "an earlier commit failed too", nil
		case events.StatusQueued, events.StatusRunning:
			return nil, true, "", nil // its run will tell
		}
		chain = append(chain, bc) // untested: superseded, held, or never queued
		if len(chain) > MaxBisectCommits {
			return nil, false, fmt.Sprintf("no pass within %d commits", MaxBisectCommits), nil
		}
		x = c
	}
}
