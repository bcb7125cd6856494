package observer

import (
	"fmt"
	"slices"
	"unicode/utf8"

	"github.com/jetci/jetci/events"
)

// Bounds on what a commit event carries of free text, whatever the payload
// limit: a 1 MB commit subject must not become a 1 MB job, result and page.
const (
	subjectMax = 1000 // bytes of the commit subject
	personMax  = 200  // bytes of the author's name and of the email
	// payloadSlack is kept free of the max payload for the message headers
	// (Nats-Msg-Id and what the client adds) besides the Msg-Id itself.
	payloadSlack = 512
)

// fitEvent cuts ev until its encoding fits in max bytes: first the free text
// (always: subject and author), then the changed paths, the probe, the dead
// module globs, the pipeline file and the parents beyond the first. Every cut
// is named in ev.Truncated. It returns the encoding, or an error when even the
// smallest event is too large (a max payload of a few hundred bytes).
func fitEvent(ev *events.CommitDetected, max int) ([]byte, error) {
	cut := func(field string) {
		if !slices.Contains(ev.Truncated, field) {
			ev.Truncated = append(ev.Truncated, field)
		}
	}
	if s, ok := clip(ev.Subject, subjectMax); ok {
		ev.Subject = s
		cut("subject")
	}
	n, nok := clip(ev.Author.Name, personMax)
	e, eok := clip(ev.Author.Email, personMax)
	if nok || eok {
		ev.Author.Name, ev.Author.Email = n, e
		cut("author")
	}
	data, err := events.Encode(ev)
	if err != nil || len(data) <= max {
		return data, err
	}
	// Each step removes something and re-encodes; the lists shrink by at least
	// half (or to the size that should fit) so a 100,000-path list takes a few
	// rounds, not thousands.
	steps := []func() bool{
		func() bool { // changed paths: the dispatcher then runs every module
			if len(ev.Changed) == 0 {
				return false
			}
			ev.Changed = ev.Changed[:shrink(len(ev.Changed), len(data), max)]
			ev.ChangedCut = true
			cut("changed_paths")
			return true
		},
		func() bool {
			if ev.Probe.Makefile == "" {
				return false
			}
			ev.Probe.Makefile = ""
			cut("probe")
			return true
		},
		func() bool {
			if len(ev.Probe.Root)+len(ev.Probe.Tests) == 0 {
				return false
			}
			ev.Probe.Root = ev.Probe.Root[:shrink(len(ev.Probe.Root), len(data), max)]
			ev.Probe.Tests = ev.Probe.Tests[:shrink(len(ev.Probe.Tests), len(data), max)]
			cut("probe")
			return true
		},
		func() bool {
			g := ev.ModuleGlobs
			if g == nil || len(g.Dead) == 0 {
				return false
			}
			if g.DeadAll == 0 {
				g.DeadAll = len(g.Dead)
			}
			g.Dead = g.Dead[:shrink(len(g.Dead), len(data), max)]
			cut("module_globs")
			return true
		},
		func() bool {
			if ev.Pipeline == "" {
				return false
			}
			ev.PipelineErr = fmt.Sprintf("%s is %d bytes: with the rest of the commit event it does not fit the NATS server's max payload of %d bytes (raise max_payload, or make the file smaller)", ev.PipelinePath, len(ev.Pipeline), max+payloadSlack)
			ev.Pipeline, ev.ModuleGlobs = "", nil
			cut("pipeline")
			return true
		},
		func() bool {
			if len(ev.Parents) <= 1 {
				return false
			}
			ev.Parents = ev.Parents[:max1(shrink(len(ev.Parents), len(data), max), 1)]
			cut("parents")
			return true
		},
	}
	for _, step := range steps {
		for len(data) > max && step() {
			if data, err = events.Encode(ev); err != nil {
				return nil, err
			}
		}
	}
	if len(data) > max {
		return nil, fmt.Errorf("commit event of %d bytes does not fit the server's max payload (%d bytes for the event) even cut down", len(data), max)
	}
	return data, nil
}

// shrink is how many of n items to keep of a list in an encoding of size
// bytes that must come down to max: at most half, and about the share that fits.
func shrink(n, size, max int) int {
	keep := n / 2
	if size > 0 {
		if k := int(int64(n) * int64(max) / int64(size) * 9 / 10); k < keep {
			keep = k
		}
	}
	return keep
}

func max1(a, b int) int {
	if a > b {
		return a
	}
	return b
}

// clip cuts s to at most n bytes on a rune boundary, marked with "…"; ok says
// it was cut.
func clip(s string, n int) (string, bool) {
	if len(s) <= n {
		return s, false
	}
	const mark = "…"
	i := n - len(mark)
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + mark, true
}
