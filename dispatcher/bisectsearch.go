package dispatcher

import (
	"fmt"
	"time"

	"github.com/jetci/jetci/events"
)

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
		JobID:     events.JobID(b.Repo, b.Branch, commit, events.QualifiedJob(b.Module, b.Job), b.Arch), AskedAt: now})
	return n
}
