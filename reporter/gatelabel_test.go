package reporter

import (
	"testing"

	"github.com/jetci/jetci/events"
)

func TestGateLabel(t *testing.T) {
	fail := func(commit string) *Record { return &Record{Commit: commit, Status: events.StatusFailed} }
	broken := &events.BranchState{State: events.BranchBroken, BrokenBy: &events.JobRef{Commit: "b"}}
	failed := &events.BranchState{State: events.BranchFailed, BrokenBy: &events.JobRef{Commit: "b"}, FailedCheck: "h"}
	open := &events.BranchState{State: events.BranchOpen, Fixes: []events.BranchFix{
		{BrokenBy: "old", FixedBy: "oldfix"},
		{BrokenBy: "b", FixedBy: "f", Covered: []string{"n"}},
	}}
	for _, tt := range []struct {
		r    *Record
		st   *events.BranchState
		want string
	}{
		{fail("b"), broken, "first check failed"},
		{fail("b"), failed, "second check failed"},
		{fail("h"), failed, "second check failed"},
		{fail("b"), open, "fixed by f"},
		{fail("old"), open, "fixed by oldfix"},
		{fail("n"), open, "broken by b, fixed by f"},
		{fail("x"), open, ""},
		{&Record{Commit: "b", Status: events.StatusPassed}, broken, ""},
		{fail("b"), nil, ""},
	} {
		if got := gateLabel(tt.r, tt.st); got != tt.want {
			t.Errorf("gateLabel(%s %s, %s) = %q, want %q", tt.r.Commit, tt.r.Status, func() string {
				if tt.st == nil {
					return "nil"
				}
				return tt.st.State
			}(), got, tt.want)
		}
	}
}
