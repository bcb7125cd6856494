package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
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
	go d.indexCommits(ctx)
	go d.watchBisections(ctx)
	go d.bisectTimer(ctx)
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
		if err != nil {
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
	p := &pending{Repo: fin.Repo, Branch: fin.Branch, Commit: fin.Commit, Job: fin.Job, Arch: fin.Arch, JobID: fin.JobID, Since: d.now().UTC()}
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
		o, err := d.getOutcome(ctx, p.Repo, p.Branch, events.JobID(p.Repo, p.Branch, sha, p.Job, p.Arch))
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
			return &events.Bisection{ID: p.JobID, Repo: p.Repo, Branch: p.Branch, Job: p.Job, Arch: p.Arch, State: events.BisectRunning,
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

// bounds returns the first failing commit of a range and the last passing one
// before it.
func bounds(cs []events.BisectCommit) (lo, hi int) {
	hi = len(cs) - 1
	for i, c := range cs {
		if failing(c.Status) {
			hi = i
			break
		}
	}
	lo = -1
	for i := hi - 1; i >= 0; i-- {
		if cs[i].Status == events.StatusPassed {
			lo = i
			break
		}
	}
	return lo, hi
}

// advance moves a bisection on once no step is under way: it adds the next
// step (or the two verification steps), or ends it. It returns the indexes of
// the steps to ask for.
func (d *Dispatcher) advance(b *events.Bisection) []int {
	if b.Done() {
		return nil
	}
	for _, s := range b.Steps {
		if !s.Status.Final() && s.Status != events.StatusSkipped {
			return nil // wait for it
		}
	}
	now := d.now().UTC()
	end := func(state, reason string) []int {
		b.State, b.Reason, b.EndedAt = state, reason, now
		return nil
	}
	switch b.State {
	case events.BisectRunning:
		lo, hi := bounds(b.Commits)
		if lo < 0 {
			return end(events.BisectUnresolved, "no commit of the range passes")
		}
		m, ok := middle(b.Commits, lo, hi)
		if ok {
			b.Runs++
			return []int{d.addStep(b, events.StepBisect, b.Commits[m].Commit, now)}
		}
		culprit, parent := b.Commits[hi], b.Commits[lo]
		b.Culprit, b.LastGood = &culprit, &parent
		if hi-lo > 1 {
			return end(events.BisectUnresolved, fmt.Sprintf("the first failure is one of %d commits after %s, up to %s, which cannot run %s on %s",
				hi-lo, events.Short(parent.Commit), events.Short(culprit.Commit), b.Job, b.Arch))
		}
		b.State = events.BisectVerifying
		b.Reason = fmt.Sprintf("%s fails and its parent %s passes: running both again to rule out a flaky failure",
			events.Short(culprit.Commit), events.Short(parent.Commit))
		return []int{d.addStep(b, events.StepVerifyCulprit, culprit.Commit, now), d.addStep(b, events.StepVerifyParent, parent.Commit, now)}
	case events.BisectVerifying:
		var vc, vp events.Status
		for _, s := range b.Steps {
			switch s.Kind {
			case events.StepVerifyCulprit:
				vc = s.Status
			case events.StepVerifyParent:
				vp = s.Status
			}
		}
		c, p := events.Short(b.Culprit.Commit), events.Short(b.LastGood.Commit)
		switch {
		case failing(vc) && vp == events.StatusPassed:
			return end(events.BisectFound, fmt.Sprintf("%s broke %s on %s: it failed twice, its parent %s passed twice", c, b.Job, b.Arch, p))
		case vc == events.StatusPassed:
			return end(events.BisectFlaky, fmt.Sprintf("%s passed when run again: the failure is flaky, nobody is blamed", c))
		case failing(vp):
			return end(events.BisectFlaky, fmt.Sprintf("the parent %s failed when run again: the job is flaky, nobody is blamed", p))
		}
		return end(events.BisectUnresolved, fmt.Sprintf("the re-runs did not finish (%s: %s, %s: %s)", c, vc, p, vp))
	}
	return nil
}

// middle is the untested commit nearest the middle of (lo, hi).
func middle(cs []events.BisectCommit, lo, hi int) (int, bool) {
	m := (lo + hi) / 2
	for off := 0; m-off > lo || m+off < hi; off++ {
		for _, i := range []int{m - off, m + off} {
			if i > lo && i < hi && cs[i].Status == "" {
				return i, true
			}
		}
	}
	return 0, false
}

func (d *Dispatcher) addStep(b *events.Bisection, kind, commit string, now time.Time) int {
	n := len(b.Steps)
	b.Steps = append(b.Steps, events.BisectStep{Kind: kind, Commit: commit,
		TriggerID: fmt.Sprintf("%s%s-%d", events.BisectTriggerPrefix, b.ID, n),
		JobID:     events.JobID(b.Repo, b.Branch, commit, b.Job, b.Arch), AskedAt: now})
	return n
}

// stepOf finds the bisection key and step a bisection run's trigger id names.
func stepOf(repo, branch, triggerID string) (string, int, bool) {
	rest := strings.TrimPrefix(triggerID, events.BisectTriggerPrefix)
	id, n, ok := strings.Cut(rest, "-")
	i, err := strconv.Atoi(n)
	if !ok || err != nil || i < 0 || !events.ValidJobID(id) {
		return "", 0, false
	}
	return events.BisectKey(repo, branch, id), i, true
}

func (d *Dispatcher) stepQueued(ctx context.Context, q *events.JobQueued) error {
	key, i, ok := stepOf(q.Repo, q.Branch, q.TriggerID)
	if !ok {
		return nil
	}
	_, err := d.updateBisection(ctx, key, func(b *events.Bisection) ([]int, bool) {
		if i >= len(b.Steps) || b.Steps[i].TriggerID != q.TriggerID || b.Steps[i].Status != "" {
			return nil, false
		}
		b.Steps[i].Status, b.Steps[i].QueueSeq = events.StatusQueued, q.QueueSeq
		return nil, true
	})
	return err
}

func (d *Dispatcher) stepFinished(ctx context.Context, fin *events.JobFinished) error {
	key, i, ok := stepOf(fin.Repo, fin.Branch, fin.TriggerID)
	if !ok {
		return nil
	}
	_, err := d.updateBisection(ctx, key, func(b *events.Bisection) ([]int, bool) {
		if i >= len(b.Steps) || b.Steps[i].TriggerID != fin.TriggerID || b.Steps[i].Status.Final() || b.Steps[i].Status == events.StatusSkipped {
			return nil, false
		}
		s := &b.Steps[i]
		s.Status, s.QueueSeq, s.Log, s.Error, s.EndedAt = fin.Status, fin.QueueSeq, fin.Log, fin.Error, d.now().UTC()
		if fin.Job != b.Job || fin.Arch != b.Arch {
			s.Status = events.StatusSkipped // the commit's pipeline could not give the job
		}
		if s.Status == events.StatusCancelled && !b.Done() {
			b.State, b.Reason, b.EndedAt = events.BisectUnresolved, "the run of "+events.Short(s.Commit)+" was cancelled", d.now().UTC()
			return nil, true
		}
		if s.Kind == events.StepBisect {
			for j := range b.Commits {
				if b.Commits[j].Commit == s.Commit {
					b.Commits[j].Status = s.Status
				}
			}
		}
		return d.advance(b), true
	})
	return err
}

// updateBisection applies change until its compare-and-swap wins, publishes
// the new state and asks for the steps change returned.
func (d *Dispatcher) updateBisection(ctx context.Context, key string, change func(*events.Bisection) ([]int, bool)) (*events.Bisection, error) {
	for {
		e, err := d.bisect.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		b, err := events.DecodeAs[events.Bisection](e.Value())
		if err != nil {
			d.log.Error().Err(err).Str("key", key).Msg("culprit finding: an unreadable bisection is left alone")
			return nil, nil
		}
		asks, changed := change(b)
		if !changed {
			return b, nil
		}
		b.UpdatedAt = d.now().UTC()
		data, err := events.Encode(b)
		if err != nil {
			return nil, err
		}
		rev, err := d.bisect.kv.Update(ctx, key, data, e.Revision())
		if isConflict(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		d.publishBisection(ctx, key, rev, data)
		if b.Done() {
			d.log.Info().Str("repo", b.Repo).Str("branch", b.Branch).Str("job", b.Job).Str("arch", b.Arch).Str("state", b.State).
				Int("runs", b.Runs).Str("reason", b.Reason).Msg("bisection ended")
		}
		d.ask(ctx, b, asks)
		return b, nil
	}
}

// publishBisection announces a bisection's new state; the Msg-Id lets the
// watcher publish it again after a crash without doubling it.
func (d *Dispatcher) publishBisection(ctx context.Context, key string, rev uint64, data []byte) {
	b, err := events.DecodeAs[events.Bisection](data)
	if err != nil {
		return
	}
	if _, err := d.js.Publish(ctx, events.BisectSubject(b.Repo, b.Branch), data,
		jetstream.WithMsgID(fmt.Sprintf("bisect:%s:%d", key, rev))); err != nil {
		d.log.Warn().Err(err).Msg("publish a bisection state")
	}
}

// ask requests the runs of the given steps from the observers. A failure is
// logged; the timer asks again.
func (d *Dispatcher) ask(ctx context.Context, b *events.Bisection, steps []int) {
	for _, i := range steps {
		s := b.Steps[i]
		tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := events.RequestTrigger(tctx, d.js.Conn(), &events.TriggerRequest{Repo: b.Repo, Branch: b.Branch, Commit: s.Commit,
			Job: b.Job, Arch: b.Arch, Class: events.ClassBisect, TriggerID: s.TriggerID})
		cancel()
		if err != nil {
			d.log.Warn().Err(err).Str("repo", b.Repo).Str("branch", b.Branch).Str("commit", events.Short(s.Commit)).Msg("bisection run; will ask again")
			continue
		}
		d.log.Info().Str("repo", b.Repo).Str("branch", b.Branch).Str("job", b.Job).Str("arch", b.Arch).Str("commit", events.Short(s.Commit)).
			Str("kind", s.Kind).Msg("bisection run asked for")
	}
}

// watchBisections keeps the set of bisections under way, and publishes the
// latest state of recently changed ones again on start (deduplicated by
// Msg-Id), in case a dispatcher died between a write and its publish.
func (d *Dispatcher) watchBisections(ctx context.Context) {
	for ctx.Err() == nil {
		w, err := d.bisect.kv.Watch(ctx, "b.>")
		if err != nil {
			d.log.Warn().Err(err).Msg("culprit finding: watch bisections")
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		for e := range w.Updates() {
			if e == nil {
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				d.bisect.mu.Lock()
				delete(d.bisect.active, e.Key())
				d.bisect.mu.Unlock()
				continue
			}
			b, err := events.DecodeAs[events.Bisection](e.Value())
			if err != nil {
				continue
			}
			d.bisect.mu.Lock()
			if b.Done() {
				delete(d.bisect.active, e.Key())
			} else {
				d.bisect.active[e.Key()] = true
			}
			d.bisect.mu.Unlock()
			if d.now().Sub(b.UpdatedAt) < DedupWindowGuard {
				d.publishBisection(ctx, e.Key(), e.Revision(), e.Value())
			}
		}
		_ = w.Stop()
	}
}

// DedupWindowGuard is how recent a bisection's change must be for the watcher
// to publish it again: inside the streams' dedup window, so it is not doubled.
const DedupWindowGuard = events.DedupWindow / 2

// bisectTimer decides pending failures and asks again for steps nobody queued.
func (d *Dispatcher) bisectTimer(ctx context.Context) {
	t := time.NewTicker(d.cfg.BisectTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if lister, err := d.bisect.kv.ListKeysFiltered(ctx, "p.>"); err == nil {
			for key := range lister.Keys() {
				e, err := d.bisect.kv.Get(ctx, key)
				if err != nil {
					continue
				}
				var p pending
				if json.Unmarshal(e.Value(), &p) != nil {
					_ = d.bisect.kv.Delete(ctx, key)
					continue
				}
				if err := d.decide(ctx, key, &p); err != nil {
					d.log.Warn().Err(err).Msg("culprit finding: decide a failure; will retry")
				}
			}
		}
		d.bisect.mu.Lock()
		keys := make([]string, 0, len(d.bisect.active))
		for k := range d.bisect.active {
			keys = append(keys, k)
		}
		d.bisect.mu.Unlock()
		for _, key := range keys {
			if _, err := d.updateBisection(ctx, key, func(b *events.Bisection) ([]int, bool) {
				var asks []int
				for i := range b.Steps {
					if s := &b.Steps[i]; s.Status == "" && d.now().Sub(s.AskedAt) >= bisectReask {
						s.AskedAt = d.now().UTC()
						asks = append(asks, i)
					}
				}
				if len(asks) == 0 {
					if more := d.advance(b); len(more) > 0 || b.Done() {
						return more, true // a crash between a result and the next step
					}
				}
				return asks, len(asks) > 0
			}); err != nil {
				d.log.Warn().Err(err).Msg("culprit finding: ask again; will retry")
			}
		}
	}
}
