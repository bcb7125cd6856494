package runner

import (
	"bytes"
	"cmp"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/jetci/jetci/events"
)

// Test results come from three places: `go test -json` lines and Python
// `unittest -v` lines in a job's output (read as the output streams, so the
// log's size cap does not hide them), and JUnit XML files the pipeline's
// reports: globs name. A testCollector gathers one try of a job's steps.

const (
	// maxTestLine bounds the output line the parsers look at; longer lines
	// (which no parser here emits) are skipped.
	maxTestLine = 64 << 10
	// maxCollected bounds the distinct tests one try keeps in memory; more
	// are counted in the summary only as a cut.
	maxCollected = 50000
)

// testCollector is an io.Writer fed with a try's output; it parses complete
// lines and keeps one result per test name.
type testCollector struct {
	line    []byte
	long    bool // the current line passed maxTestLine: skip to its end
	gotest  goTestParser
	py      unittestParser
	byName  map[string]int
	results []events.TestResult
	sources map[string]bool
	cut     bool
	// mask hides the job's secrets in test names, which leave the runner in
	// the result (the log is masked on its own path).
	mask func(string) string
	// clock tells the time output arrives (unittest's durations), read
	// once per write (at): lines that come together share it. lineStart is
	// when the current line's first byte came.
	clock     func() time.Time
	at        time.Time
	lineStart time.Time
}

func newTestCollector() *testCollector {
	c := &testCollector{byName: map[string]int{}, sources: map[string]bool{}, clock: time.Now}
	c.gotest.add = func(r events.TestResult) { c.add("go-test-json", r) }
	c.py.add = func(r events.TestResult) { c.add("unittest", r) }
	return c
}

// Write never fails: test parsing must not disturb the job.
func (c *testCollector) Write(p []byte) (int, error) {
	n := len(p)
	c.at = c.clock()
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			c.appendLine(p)
			break
		}
		c.appendLine(p[:i])
		c.endLine()
		p = p[i+1:]
	}
	return n, nil
}

func (c *testCollector) appendLine(b []byte) {
	if len(c.line) == 0 && !c.long && len(b) > 0 && c.lineStart.IsZero() {
		c.lineStart = c.at
	}
	if c.long {
		return
	}
	if len(c.line)+len(b) > maxTestLine {
		c.long, c.line = true, c.line[:0]
		return
	}
	c.line = append(c.line, b...)
}

func (c *testCollector) endLine() {
	if !c.long {
		now := c.at
		if c.lineStart.IsZero() {
			c.lineStart = now
		}
		c.py.now, c.py.lineStart = now, c.lineStart
		c.parseLine(string(bytes.TrimRight(c.line, "\r")))
	}
	c.line, c.long, c.lineStart = c.line[:0], false, time.Time{}
}

// Flush parses a last line without a newline, and ends a failure report
// unittest left open.
func (c *testCollector) Flush() {
	c.at = c.clock()
	if len(c.line) > 0 || c.long {
		c.endLine()
	}
	c.py.endReport()
}

func (c *testCollector) parseLine(s string) {
	if len(s) > 0 && s[0] == '{' {
		c.gotest.line(s)
		return
	}
	c.py.line(s)
}

// add records a result; a test seen twice (go test -count=2, a report and
// the log) keeps its worst status and its longest duration.
func (c *testCollector) add(source string, r events.TestResult) {
	if c.mask != nil {
		r.Name = c.mask(r.Name)
		if r.Message != "" {
			r.Message = c.mask(r.Message) // a failure message may quote a secret
		}
	}
	r.Name = cutName(r.Name)
	if r.Name == "" {
		return
	}
	if r.DurationMs < 0 {
		r.DurationMs = 0
	}
	c.sources[source] = true
	if i, ok := c.byName[r.Name]; ok {
		old := &c.results[i]
		if rank(r.Status) > rank(old.Status) {
			old.Status = r.Status
		}
		old.DurationMs = max(old.DurationMs, r.DurationMs)
		if old.Message == "" {
			old.Message = r.Message
		}
		return
	}
	if len(c.results) >= maxCollected {
		c.cut = true
		return
	}
	c.byName[r.Name] = len(c.results)
	c.results = append(c.results, r)
}

// rank orders statuses for merging: a failure wins over a pass, a pass over a skip.
func rank(status string) int {
	switch status {
	case events.TestFailed:
		return 4
	case events.TestError:
		return 3
	case events.TestPassed:
		return 2
	case events.TestSkipped:
		return 1
	}
	return 0
}

// cutName makes a name safe to carry: valid UTF-8, at most MaxTestName bytes.
func cutName(s string) string {
	s = string(bytes.ToValidUTF8([]byte(s), []byte("\uFFFD")))
	if len(s) <= events.MaxTestName {
		return s
	}
	const ell = "…"
	n := events.MaxTestName - len(ell)
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + ell
}

// failedNames returns the names of the failing tests, sorted, at most limit.
func (c *testCollector) failedNames(limit int) []string {
	var names []string
	for _, r := range c.results {
		if events.Failing(r.Status) {
			names = append(names, r.Name)
		}
	}
	slices.Sort(names)
	if len(names) > limit {
		names = names[:limit]
	}
	return names
}

// finish returns what a JobFinished carries: at most MaxTests results (every
// failure first, by name, then the slowest others) and the summary of all.
// Tests whose names are in flaky (failed in an earlier try) and passed now
// are marked flaky. It returns nil, nil when no test was found.
func (c *testCollector) finish(flaky map[string]bool) ([]events.TestResult, *events.TestSummary) {
	if len(c.results) == 0 {
		return nil, nil
	}
	sum := &events.TestSummary{Total: len(c.results), Truncated: c.cut}
	var fails, others []events.TestResult
	for _, r := range c.results {
		if r.Status == events.TestPassed && flaky[r.Name] {
			r.Flaky = true
			sum.Flaky++
		}
		switch {
		case events.Failing(r.Status):
			sum.Failed++
			fails = append(fails, r)
		case r.Status == events.TestSkipped:
			sum.Skipped++
			others = append(others, r)
		default:
			sum.Passed++
			others = append(others, r)
		}
		sum.DurationMs += r.DurationMs
	}
	for s := range c.sources {
		sum.Sources = append(sum.Sources, s)
	}
	slices.Sort(sum.Sources)
	slices.SortFunc(fails, func(a, b events.TestResult) int { return cmp.Compare(a.Name, b.Name) })
	// Flaky tests first among the others (they matter), then the slowest.
	slices.SortStableFunc(others, func(a, b events.TestResult) int {
		if a.Flaky != b.Flaky {
			if a.Flaky {
				return -1
			}
			return 1
		}
		if c := cmp.Compare(b.DurationMs, a.DurationMs); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
	out := append(fails, others...)
	if len(out) > events.MaxTests {
		out, sum.Truncated = out[:events.MaxTests], true
	}
	return out, sum
}
