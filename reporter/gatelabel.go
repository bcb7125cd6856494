package reporter

import "github.com/jetci/jetci/events"

// gateLabel is what a failing job of a gated branch is called, in the seed's
// words, from its branch's broken-build state: "first check failed" (it
// broke the branch), "second check failed" (the branch failed its second
// check), "fixed by <commit>" (a later commit's check opened the branch), or
// "broken by <commit>, fixed by <commit>" (a released commit older than the
// fix, failing with the break). "" for anything else.
func gateLabel(r *Record, st *events.BranchState) string {
	if st == nil || !failing(r.Status) {
		return ""
	}
	if st.State != events.BranchOpen {
		if st.State == events.BranchFailed && r.Commit == st.FailedCheck {
			return "second check failed"
		}
		if st.BrokenBy != nil && r.Commit == st.BrokenBy.Commit {
			if st.State == events.BranchFailed {
				return "second check failed"
			}
			return "first check failed"
		}
	}
	for i := len(st.Fixes) - 1; i >= 0; i-- {
		f := st.Fixes[i]
		if r.Commit == f.BrokenBy {
			return "fixed by " + events.Short(f.FixedBy)
		}
		if f.Covers(r.Commit) {
			return "broken by " + events.Short(f.BrokenBy) + ", fixed by " + events.Short(f.FixedBy)
		}
	}
	return ""
}

// pausedCommits are the commits whose jobs the broken-build flow holds.
func pausedCommits(cs []Commit) []Commit {
	var out []Commit
	for _, c := range cs {
		for _, j := range c.Jobs {
			if j.Status == events.StatusHeld {
				out = append(out, c)
				break
			}
		}
	}
	return out
}
