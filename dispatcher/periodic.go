package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/robfig/cron/v3"

	"github.com/jetci/jetci/events"
)

// cronParser takes standard 5-field cron lines, an optional leading seconds
// field, and descriptors such as @nightly or @every 6h.
var cronParser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// ParseSchedule checks a periodic full check's schedule.
func ParseSchedule(s string) (cron.Schedule, error) {
	sched, err := cronParser.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("schedule %q: %w (want cron syntax, e.g. \"0 2 * * *\" or @nightly)", s, err)
	}
	return sched, nil
}

// scheduleState is the periodic check's memory in jetci-schedule: when it
// last fired and under which schedule.
type scheduleState struct {
	Schedule string    `json:"schedule"`
	Last     time.Time `json:"last"`
}

const scheduleKey = "periodic"

// runPeriodic queues a full check (every watched branch head × job × arch, at
// the periodic class) on the schedule. The time of the last check is claimed
// with a compare-and-swap in jetci-schedule, so restarts and several
// dispatchers fire each time once; a check missed while no dispatcher ran is
// made up once at start, not once per missed time.
func (d *Dispatcher) runPeriodic(ctx context.Context) error {
	if d.cfg.Periodic == "" {
		return nil
	}
	sched, err := ParseSchedule(d.cfg.Periodic)
	if err != nil {
		return fmt.Errorf("periodic check: %w", err)
	}
	kv, err := d.js.KeyValue(ctx, events.BucketSchedule)
	if err != nil {
		return fmt.Errorf("periodic check: %w", err)
	}
	t := time.NewTicker(d.cfg.PeriodicTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		since, fire, err := d.claimPeriodic(ctx, kv, sched)
		if err != nil {
			d.log.Warn().Err(err).Msg("periodic check")
			continue
		}
		if fire {
			d.fullCheck(ctx, since)
		}
	}
}

// claimPeriodic reports whether this dispatcher is to fire now, and the time
// of the previous check.
func (d *Dispatcher) claimPeriodic(ctx context.Context, kv jetstream.KeyValue, sched cron.Schedule) (time.Time, bool, error) {
	now := d.now().UTC()
	e, err := kv.Get(ctx, scheduleKey)
	var st scheduleState
	var rev uint64
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return time.Time{}, false, err
	default:
		rev = e.Revision()
		_ = json.Unmarshal(e.Value(), &st)
	}
	if rev == 0 || st.Schedule != d.cfg.Periodic {
		// First start, or a new schedule: count from now.
		data, _ := json.Marshal(scheduleState{Schedule: d.cfg.Periodic, Last: now})
		if rev == 0 {
			_, err = kv.Create(ctx, scheduleKey, data)
		} else {
			_, err = kv.Update(ctx, scheduleKey, data, rev)
		}
		if err != nil && !isConflict(err) {
			return time.Time{}, false, err
		}
		d.log.Info().Str("schedule", d.cfg.Periodic).Time("next", sched.Next(now)).Msg("periodic full check scheduled")
		return time.Time{}, false, nil
	}
	if now.Before(sched.Next(st.Last)) {
		return time.Time{}, false, nil
	}
	data, _ := json.Marshal(scheduleState{Schedule: d.cfg.Periodic, Last: now})
	if _, err := kv.Update(ctx, scheduleKey, data, rev); err != nil {
		if isConflict(err) {
			return time.Time{}, false, nil // another dispatcher fired
		}
		return time.Time{}, false, err
	}
	return st.Last, true, nil
}

// fullCheck asks the observers to queue every watched branch head at the
// periodic class, skipping heads that passed since the last check when so
// configured.
func (d *Dispatcher) fullCheck(ctx context.Context, since time.Time) {
	heads, err := d.js.KeyValue(ctx, events.BucketHeads)
	if err != nil {
		d.log.Warn().Err(err).Msg("periodic check: heads")
		return
	}
	w, err := heads.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		d.log.Warn().Err(err).Msg("periodic check: heads")
		return
	}
	type head struct{ Repo, Branch, Commit string }
	var all []head
	for e := range w.Updates() {
		if e == nil {
			break
		}
		var h head
		if json.Unmarshal(e.Value(), &h) == nil && h.Repo != "" && h.Branch != "" && h.Commit != "" {
			all = append(all, h)
		}
	}
	_ = w.Stop()
	queued, skipped := 0, 0
	for _, h := range all {
		if d.gate != nil && d.gated(h.Repo, h.Branch) {
			if st, _, err := d.branchState(ctx, h.Repo, h.Branch); err == nil && st.State != events.BranchOpen {
				skipped++ // a broken or failed branch runs nothing automatically
				continue
			}
		}
		if d.cfg.PeriodicSkipPassed && d.passedSince(ctx, h.Repo, h.Branch, h.Commit, since) {
			skipped++
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		_, err := events.RequestTrigger(rctx, d.js.Conn(), &events.TriggerRequest{Repo: h.Repo, Branch: h.Branch, Commit: h.Commit, Class: events.ClassPeriodic})
		cancel()
		if err != nil {
			d.log.Warn().Err(err).Str("repo", h.Repo).Str("branch", h.Branch).Msg("periodic check of a branch")
			continue
		}
		queued++
	}
	d.log.Info().Int("branches", queued).Int("skipped", skipped).Msg("periodic full check queued")
}

// passedSince reports whether every job of a commit on a branch passed after t.
func (d *Dispatcher) passedSince(ctx context.Context, repo, branch, commit string, t time.Time) bool {
	kv, err := d.js.KeyValue(ctx, events.BucketResults)
	if err != nil {
		return false
	}
	w, err := kv.Watch(ctx, events.BranchKey(repo, branch)+".*", jetstream.IgnoreDeletes())
	if err != nil {
		return false
	}
	defer w.Stop()
	type record struct {
		Commit     string        `json:"commit"`
		Job        string        `json:"job"`
		Arch       string        `json:"arch"`
		Module     string        `json:"module"`
		Status     events.Status `json:"status"`
		FinishedAt time.Time     `json:"finished_at"`
		Class      events.Class  `json:"class"`
	}
	// A commit checks only the modules it affects, so the head's records do
	// not speak for the other modules: for those, the latest check of each
	// module job on the branch must have passed since t.
	latest := map[string]record{}
	found := false
	for e := range w.Updates() {
		if e == nil {
			break
		}
		var rec record
		if json.Unmarshal(e.Value(), &rec) != nil {
			continue
		}
		if rec.Module != "" {
			if !rec.Status.Final() {
				return false // a check under way
			}
			key := events.QualifiedJob(rec.Module, rec.Job) + "\x00" + rec.Arch
			// A culprit search's run of an old commit is not the module's
			// latest check, however recently it finished.
			if rec.Class == events.ClassBisect {
				continue
			}
			if l, ok := latest[key]; !ok || rec.FinishedAt.After(l.FinishedAt) {
				latest[key] = rec
			}
		}
		if rec.Commit != commit {
			continue
		}
		if rec.Status != events.StatusPassed || rec.FinishedAt.Before(t) {
			return false
		}
		found = true
	}
	for _, rec := range latest {
		if rec.Status != events.StatusPassed || rec.FinishedAt.Before(t) {
			return false
		}
	}
	return found
}
