package observer

import (
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/jetci/jetci/events"
)

func bigEvent(n int) *events.CommitDetected {
	ev := &events.CommitDetected{
		Repo: "proj", Branch: "main", Commit: strings.Repeat("a", 40), Class: events.ClassFirst,
		Subject:      strings.Repeat("ü", n),
		Author:       events.Person{Name: strings.Repeat("N", n), Email: strings.Repeat("e", n)},
		PipelinePath: ".jetci.yml", Pipeline: strings.Repeat("# pipeline\n", n),
		Probe:       events.Probe{Makefile: strings.Repeat("m", n)},
		ModuleGlobs: &events.GlobCheck{Checked: n},
	}
	for i := range n {
		ev.Changed = append(ev.Changed, strings.Repeat("p", 100)+string(rune('a'+i%26)))
		if i%4 == 0 {
			ev.Probe.Root = append(ev.Probe.Root, strings.Repeat("r", 50))
			ev.ModuleGlobs.Dead = append(ev.ModuleGlobs.Dead, strings.Repeat("g", 50))
		}
	}
	return ev
}

// TestFitEventCutsInOrder: each limit cuts only as much as it must, in the
// documented order, and says what it cut; the result decodes.
func TestFitEventCutsInOrder(t *testing.T) {
	order := []string{"subject", "author", "changed_paths", "probe", "module_globs", "pipeline", "parents"}
	for _, tt := range []struct {
		max     int
		parents int
		want    []string // the first cuts expected; later ones may follow
	}{
		{1 << 30, 1, order[:2]},
		{250 << 10, 1, order[:3]},
		{60 << 10, 1, order[:4]},
		{6 << 10, 1, order[:6]},
		{20 << 10, 5000, order},
	} {
		ev := bigEvent(2000)
		for len(ev.Parents) < tt.parents {
			ev.Parents = append(ev.Parents, strings.Repeat("b", 40))
		}
		data, err := fitEvent(ev, tt.max)
		if err != nil {
			t.Fatalf("max %d: %v", tt.max, err)
		}
		if len(data) > tt.max || len(ev.Truncated) < len(tt.want) || !slices.Equal(ev.Truncated, order[:len(ev.Truncated)]) || (tt.max == 1<<30 && len(ev.Truncated) != 2) {
			t.Fatalf("max %d: %d bytes, truncated %v, want %v", tt.max, len(data), ev.Truncated, tt.want)
		}
		back, err := events.DecodeAs[events.CommitDetected](data)
		if err != nil || !slices.Equal(back.Truncated, ev.Truncated) || len(back.Subject) > subjectMax || !utf8.ValidString(back.Subject) {
			t.Fatalf("max %d: decoded %v, %v", tt.max, err, back.Truncated)
		}
		if slices.Contains(ev.Truncated, "changed_paths") != back.ChangedCut {
			t.Fatalf("max %d: changed_paths_truncated %v", tt.max, back.ChangedCut)
		}
		if slices.Contains(ev.Truncated, "pipeline") && (back.Pipeline != "" || !strings.Contains(back.PipelineErr, "max payload")) {
			t.Fatalf("max %d: pipeline %d bytes, error %q", tt.max, len(back.Pipeline), back.PipelineErr)
		}
		if len(back.Parents) == 0 {
			t.Fatalf("max %d: the first parent was dropped", tt.max)
		}
	}
	if _, err := fitEvent(bigEvent(10), 100); err == nil {
		t.Fatal("a 100-byte max payload: want an error")
	}
}

func FuzzFitEvent(f *testing.F) {
	f.Add("subject", "a/b\x00c", ".jetci.yml", 4096, 3)
	f.Add(strings.Repeat("é", 3000), strings.Repeat("\u2028", 500), "", 2000, 50)
	f.Add("\xff\xfe", "\"\\", "jobs: {}", 800, 1)
	f.Fuzz(func(t *testing.T, subject, path, pipeline string, max, n int) {
		if max < 0 || max > 1<<20 || n < 0 || n > 2000 {
			return
		}
		ev := &events.CommitDetected{Repo: "r", Branch: "b", Commit: strings.Repeat("c", 40), Class: events.ClassFirst, Subject: subject, Pipeline: pipeline, PipelinePath: "p"}
		for range n {
			ev.Changed = append(ev.Changed, path)
			ev.Parents = append(ev.Parents, path)
		}
		data, err := fitEvent(ev, max)
		if err != nil {
			return // too small to carry even the bare event
		}
		if len(data) > max {
			t.Fatalf("%d bytes for a max of %d", len(data), max)
		}
		if _, err := events.DecodeAs[events.CommitDetected](data); err != nil {
			t.Fatal(err)
		}
	})
}
