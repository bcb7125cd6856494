package reporter

import (
	"strings"
	"testing"

	"github.com/jetci/jetci/events"
)

// TestKilledAttemptIsMarkedLost: an attempt whose runner died (its started
// event, and nothing after) becomes lost, naming its runner, as soon as a later
// attempt or run of the job shows up — in any order of the events — and a late
// result of its own still replaces that.
func TestKilledAttemptIsMarkedLost(t *testing.T) {
	cases := []struct {
		name string
		evs  []any
		want []events.Status
	}{
		{"redelivered", []any{queued(5), started(5, 1, "a"), started(5, 2, "b"), finished(5, 2, "b", events.StatusPassed)},
			[]events.Status{events.StatusLost, events.StatusPassed}},
		{"while the next one runs", []any{queued(5), started(5, 1, "a"), started(5, 2, "b")},
			[]events.Status{events.StatusLost, events.StatusRunning}},
		{"its start arrives last", []any{queued(5), finished(5, 2, "b", events.StatusPassed), started(5, 1, "a")},
			[]events.Status{events.StatusLost, events.StatusPassed}},
		{"a re-check followed", []any{queued(5), started(5, 1, "a"), queued(9), started(9, 1, "b"), finished(9, 1, "b", events.StatusFailed)},
			[]events.Status{events.StatusLost, events.StatusFailed}},
		{"it reports late after all", []any{queued(5), started(5, 1, "a"), started(5, 2, "b"), finished(5, 2, "b", events.StatusPassed), finished(5, 1, "a", events.StatusFailed)},
			[]events.Status{events.StatusFailed, events.StatusPassed}},
		{"alone it is running", []any{queued(5), started(5, 1, "a")}, []events.Status{events.StatusRunning}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var r Record
			for _, ev := range tc.evs {
				r.Apply(ev)
			}
			if len(r.Attempts) != len(tc.want) {
				t.Fatalf("%d attempts, want %d: %+v", len(r.Attempts), len(tc.want), r.Attempts)
			}
			for i, a := range r.Attempts {
				if a.Status != tc.want[i] {
					t.Errorf("attempt %d: %s, want %s", a.N, a.Status, tc.want[i])
				}
				if a.Status == events.StatusLost && (!strings.Contains(a.Error, "runner a") || !strings.Contains(a.Error, "stopped answering")) {
					t.Errorf("attempt %d lost without saying why: %q", a.N, a.Error)
				}
			}
		})
	}
}
