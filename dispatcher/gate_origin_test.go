package dispatcher

import (
	"context"
	"testing"
	"time"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

// TestAgedFirstCheckStillBreaksTheBranch: a first check that waited so long
// that aging moved it to the user class is still the commit's first check: its
// failure breaks a gated branch. A periodic job aged into the first class is
// not a first check, and does not.
func TestAgedFirstCheckStillBreaksTheBranch(t *testing.T) {
	s := brokertest.Run(t)
	ctx := context.Background()
	if err := events.DefaultSetup().Ensure(ctx, s.JS); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Gate = []GateRule{{Repo: "proj"}}
	d, err := New(cfg, s.JS, brokertest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.openGate(ctx); err != nil {
		t.Fatal(err)
	}
	fail := func(branch string, class, origin events.Class) {
		ref := events.JobRef{Repo: "proj", Branch: branch, Commit: "c1", Job: "test", Arch: "amd64"}
		ref.JobID = events.JobID(ref.Repo, ref.Branch, ref.Commit, ref.Job, ref.Arch)
		fin := &events.JobFinished{JobRef: ref, QueueSeq: 7, Attempt: 1, Status: events.StatusFailed, ExitCode: 1,
			FinishedAt: time.Now().UTC(), Class: class, Origin: origin}
		if err := d.onResult(ctx, fin, 0); err != nil {
			t.Fatal(err)
		}
	}
	state := func(branch string) string {
		st, _, err := d.branchState(ctx, "proj", branch)
		if err != nil || st == nil {
			return ""
		}
		return st.State
	}
	fail("aged", events.ClassUser, events.ClassFirst)
	if got := state("aged"); got != events.BranchBroken {
		t.Errorf("a failed first check aged to user: branch %q, want broken", got)
	}
	fail("periodic", events.ClassFirst, events.ClassPeriodic)
	if got := state("periodic"); got == events.BranchBroken {
		t.Errorf("a failed periodic job aged to first broke the branch")
	}
	fail("plain", events.ClassFirst, "")
	if got := state("plain"); got != events.BranchBroken {
		t.Errorf("a failed first check: branch %q, want broken", got)
	}
}
