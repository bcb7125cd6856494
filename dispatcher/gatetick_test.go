package dispatcher

import (
	"testing"
	"time"
)

// TestGateTickFollowsTheFixWindow: fix windows are looked at every second,
// or every quarter of a window shorter than a second, so such a window (the
// tests') ends on time without a knob in the command's flags.
func TestGateTickFollowsTheFixWindow(t *testing.T) {
	for _, c := range []struct{ window, tick, want time.Duration }{
		{30 * time.Minute, 0, time.Second},
		{time.Second, 0, time.Second},
		{400 * time.Millisecond, 0, 100 * time.Millisecond},
		{20 * time.Millisecond, 0, 10 * time.Millisecond},
		{30 * time.Minute, 5 * time.Second, 5 * time.Second},
	} {
		cfg := DefaultConfig()
		cfg.FixWindow, cfg.GateTick = c.window, c.tick
		if got := cfg.gateTick(); got != c.want {
			t.Errorf("FixWindow %s, GateTick %s: tick %s, want %s", c.window, c.tick, got, c.want)
		}
	}
}
