package pool

import "testing"

// The end-to-end test of the pool, with real runner processes, is
// TestPoolFollowsTheLoad in cmd/jetci.

func TestWanted(t *testing.T) {
	for _, tt := range []struct {
		name                string
		live, starting      int
		waiting             uint64
		slots, lo, hi, want int
	}{
		{"idle, none kept", 0, 0, 0, 1, 0, 3, 0},
		{"idle, min kept", 0, 0, 0, 1, 2, 3, 2},
		{"a burst, one slot each", 0, 0, 9, 1, 0, 3, 3},
		{"a burst under max", 1, 0, 1, 1, 0, 3, 2},
		{"two slots each: half the runners", 0, 0, 3, 2, 0, 5, 2},
		{"starting runners take their share", 2, 2, 2, 1, 0, 5, 2},
		{"starting runners, more waits", 2, 2, 3, 1, 0, 5, 3},
		{"never above max", 5, 0, 100, 1, 0, 5, 5},
		{"above max already: down to max", 6, 0, 0, 1, 0, 5, 5},
		{"nothing waits: the live ones stay", 3, 0, 0, 1, 0, 5, 3},
	} {
		if got := wanted(tt.live, tt.starting, tt.waiting, tt.slots, tt.lo, tt.hi); got != tt.want {
			t.Errorf("%s: wanted(live %d, starting %d, waiting %d, slots %d, %d..%d) = %d, want %d",
				tt.name, tt.live, tt.starting, tt.waiting, tt.slots, tt.lo, tt.hi, got, tt.want)
		}
	}
}
