package runner

import (
	"testing"
	"time"

	"github.com/jetci/jetci/events"
)

// A class found empty is skipped until a job of its class is published (or
// a job handed back wakes every class), or the idle poll has passed; a
// wake-up shortly before the empty look (the core message overtaking the
// stored job) does not let it be skipped.
func TestClassHintsSkipEmptyClasses(t *testing.T) {
	idle := time.Second
	t0 := time.Unix(1000, 0)
	var h classHints
	if h.skip(events.ClassUser, t0, idle) {
		t.Fatal("a class never looked at is skipped")
	}
	h.empty(events.ClassUser, t0)
	if !h.skip(events.ClassUser, t0.Add(10*time.Millisecond), idle) {
		t.Fatal("a class just found empty is asked again")
	}
	if h.skip(events.ClassPeriodic, t0.Add(10*time.Millisecond), idle) {
		t.Fatal("another class is skipped")
	}
	if h.skip(events.ClassUser, t0.Add(idle), idle) {
		t.Fatal("a class found empty an idle poll ago is still skipped")
	}
	h.woken(events.ClassUser, t0.Add(20*time.Millisecond))
	if h.skip(events.ClassUser, t0.Add(30*time.Millisecond), idle) {
		t.Fatal("a class with a job published since it was found empty is skipped")
	}
	// Found empty again 50 ms after the wake-up: the job may not be stored
	// yet, so it is not skipped.
	h.empty(events.ClassUser, t0.Add(70*time.Millisecond))
	if h.skip(events.ClassUser, t0.Add(80*time.Millisecond), idle) {
		t.Fatal("a class woken 50 ms before its empty look is skipped")
	}
	h.empty(events.ClassUser, t0.Add(300*time.Millisecond))
	if !h.skip(events.ClassUser, t0.Add(310*time.Millisecond), idle) {
		t.Fatal("a class found empty well after its wake-up is asked again")
	}
	h.woken("", t0.Add(400*time.Millisecond)) // a job handed back
	if h.skip(events.ClassUser, t0.Add(410*time.Millisecond), idle) {
		t.Fatal("a hand-back does not wake every class")
	}
}
