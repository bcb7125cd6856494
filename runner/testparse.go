package runner

import (
	"encoding/json"
	"math"
	"strings"
	"time"

	"github.com/jetci/jetci/events"
)

// goTestParser reads `go test -json` lines (test2json events): a pass, fail
// or skip of a test is one result named <package>.<Test>, with its Elapsed
// seconds. A package that fails with no failed test (a build failure, a
// panic in init or TestMain) is one failed result named after the package.
//
// A test's own output lines (its t.Error and t.Log lines, a panic) are kept,
// up to events.MaxTestMessage bytes, and a failing test carries them as its
// message. Its duration is the larger of Elapsed (hundredths of a second)
// and the time between its run and end events (test2json's Time).
type goTestParser struct {
	add       func(events.TestResult)
	pkgFailed map[string]bool // packages with a failed test
	running   map[string]*goTestRun
}

// goTestRun is what a running test has shown so far.
type goTestRun struct {
	start time.Time
	out   []byte // its output lines, at most maxTestOutput bytes
}

// maxTestOutput bounds a running test's output kept for its message.
const maxTestOutput = 2 * events.MaxTestMessage

type goTestEvent struct {
	Time    time.Time `json:"Time"`
	Action  string    `json:"Action"`
	Package string    `json:"Package"`
	Test    string    `json:"Test"`
	Elapsed *float64  `json:"Elapsed"`
	Output  string    `json:"Output"`
}

// rawField is the string value of "key" in a compact JSON object line, when
// it holds no escape (false otherwise, or when absent: then decode).
func rawField(s, key string) (string, bool) {
	i := strings.Index(s, `"`+key+`":"`)
	if i < 0 {
		return "", false
	}
	v := s[i+len(key)+4:]
	j := strings.IndexByte(v, '"')
	if j < 0 || strings.IndexByte(v[:j], '\\') >= 0 {
		return "", false
	}
	return v[:j], true
}

func (p *goTestParser) run(key string) *goTestRun {
	r := p.running[key]
	if r == nil && len(p.running) < maxCollected {
		if p.running == nil {
			p.running = map[string]*goTestRun{}
		}
		r = &goTestRun{}
		p.running[key] = r
	}
	return r
}

// testOutput says whether a line of a test's output is its own (not
// go test's === RUN / --- FAIL framing).
func testOutput(s string) bool {
	t := strings.TrimLeft(s, " ")
	for _, p := range []string{"=== RUN", "=== PAUSE", "=== CONT", "=== NAME", "--- PASS", "--- FAIL", "--- SKIP"} {
		if strings.HasPrefix(t, p) {
			return false
		}
	}
	return strings.TrimSpace(s) != ""
}

// message makes a test's kept output its message: at most
// events.MaxTestMessage bytes, whole lines, the common indent dropped.
func message(out []byte) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	indent := -1
	for _, l := range lines {
		n := len(l) - len(strings.TrimLeft(l, " \t"))
		if indent < 0 || n < indent {
			indent = n
		}
	}
	var b strings.Builder
	for _, l := range lines {
		l = l[max(indent, 0):]
		if b.Len() > 0 && b.Len()+1+len(l) > events.MaxTestMessage {
			break
		}
		if b.Len() > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(l)
	}
	s := strings.ToValidUTF8(b.String(), "\uFFFD")
	if len(s) > events.MaxTestMessage {
		s = strings.ToValidUTF8(s[:events.MaxTestMessage-len("…")], "") + "…"
	}
	return s
}

func (p *goTestParser) line(s string) {
	// Most events are output, run, pause, cont: skip them without decoding.
	// test2json writes "Action":"x" compact; any other spelling is decoded.
	if !strings.Contains(s, `"Action"`) {
		return
	}
	if i := strings.Index(s, `"Action":"`); i >= 0 {
		a := s[i+len(`"Action":"`):]
		if j := strings.IndexByte(a, '"'); j >= 0 {
			switch a[:j] {
			case "run":
				// One per test: read its three fields without decoding.
				pkg, ok1 := rawField(s, "Package")
				test, ok2 := rawField(s, "Test")
				at, ok3 := rawField(s, "Time")
				if ok1 && ok2 && ok3 {
					if t, err := time.Parse(time.RFC3339Nano, at); err == nil && test != "" {
						if r := p.run(pkg + "\x00" + test); r != nil {
							r.start = t
						}
						return
					}
				}
			case "pass", "fail", "skip":
			case "output":
				if !strings.Contains(s, `"Test":"`) {
					return // the package's output
				}
				// go test's own framing (=== RUN, --- PASS...) is most of
				// the output events: skip it without decoding.
				if k := strings.Index(s, `"Output":"`); k >= 0 && !testOutput(s[k+len(`"Output":"`):]) {
					return
				}
			default:
				return
			}
		}
	}
	var ev goTestEvent
	if json.Unmarshal([]byte(s), &ev) != nil {
		return
	}
	key := ev.Package + "\x00" + ev.Test
	var status string
	switch ev.Action {
	case "run":
		if r := p.run(key); ev.Test != "" && r != nil {
			r.start = ev.Time
		}
		return
	case "output":
		if r := p.run(key); ev.Test != "" && r != nil && len(r.out) < maxTestOutput && testOutput(ev.Output) {
			r.out = append(r.out, ev.Output[:min(len(ev.Output), maxTestOutput-len(r.out))]...)
		}
		return
	case "pass":
		status = events.TestPassed
	case "fail":
		status = events.TestFailed
	case "skip":
		status = events.TestSkipped
	default:
		return
	}
	if ev.Test == "" {
		// The package's own result: only a failure nothing explains is news.
		if status != events.TestFailed || ev.Package == "" || p.pkgFailed[ev.Package] {
			return
		}
		p.add(events.TestResult{Name: ev.Package, Status: status, DurationMs: seconds(ev.Elapsed)})
		return
	}
	if status == events.TestFailed {
		if p.pkgFailed == nil {
			p.pkgFailed = map[string]bool{}
		}
		if len(p.pkgFailed) < maxCollected {
			p.pkgFailed[ev.Package] = true
		}
	}
	name := ev.Test
	if ev.Package != "" {
		name = ev.Package + "." + ev.Test
	}
	res := events.TestResult{Name: name, Status: status, DurationMs: seconds(ev.Elapsed)}
	if r := p.running[key]; r != nil {
		delete(p.running, key)
		if !r.start.IsZero() && !ev.Time.IsZero() {
			res.DurationMs = max(res.DurationMs, min(ev.Time.Sub(r.start).Milliseconds(), int64(1e12)))
		}
		if status == events.TestFailed && len(r.out) > 0 {
			res.Message = message(r.out)
		}
	}
	p.add(res)
}

// seconds turns a duration in seconds (maybe absent, negative or absurd)
// into milliseconds.
func seconds(f *float64) int64 {
	if f == nil {
		return 0
	}
	return secondsToMs(*f)
}

func secondsToMs(v float64) int64 {
	if math.IsNaN(v) || v <= 0 {
		return 0
	}
	const limit = 1e9 // ~31 years: anything above is nonsense
	if v > limit {
		v = limit
	}
	return int64(math.Round(v * 1000))
}

// unittestParser reads the lines Python's `unittest -v` prints per test:
//
//	test_x (tests.test_mod.TestC.test_x) ... ok
//	test_y (tests.test_mod.TestC.test_y) ... FAIL
//	test_z (tests.test_mod.TestC.test_z) ... skipped 'reason'
//	test_d (tests.test_mod.TestC.test_d)        a test with a docstring:
//	Its first line. ... ERROR                   the result follows it
//	test_p (tests.test_mod.TestC.test_p) ... printed output
//	ok                                          output before the result
//	  test_s (tests.test_mod.TestC.test_s) (i=1) ... FAIL   a failed subtest
//
// Before Python 3.11 the parenthesis holds the class only (tests.test_mod.TestC);
// the name is then completed with the method. unittest prints no durations.
//
// unittest prints no durations: a test's is the time from its header line
// to its verdict, as the lines arrive (now and lineStart, set by the
// collector). After the run, the report of each failure and error
// ("FAIL: test_y (tests.test_mod.TestC.test_y)", a rule, the traceback)
// becomes the test's message: the traceback's last lines, which name the
// assertion.
type unittestParser struct {
	add     func(events.TestResult)
	pending string // a test whose result is still to come
	doc     bool   // pending was named alone: the next line is its docstring's
	started time.Time

	now, lineStart time.Time

	// The failure reports: report is the test of the one being read
	// (state 1: its header read; 2: its rule read, the traceback follows).
	state  int
	report events.TestResult
	tb     []string
	tbLen  int
}

var (
	pyRuleEq   = strings.Repeat("=", 70)
	pyRuleDash = strings.Repeat("-", 70)
)

// reportLine reads the failure reports after a unittest run; it says
// whether the line was one of theirs.
func (p *unittestParser) reportLine(s string) bool {
	switch {
	case s == pyRuleEq:
		p.endReport()
		p.state = 1
		return true
	case p.state == 1:
		kind, rest, ok := strings.Cut(s, ": ")
		if ok && (kind == "FAIL" || kind == "ERROR") {
			if method, id, _, _, ok := pyHeader(rest + " ..."); ok {
				st := events.TestFailed
				if kind == "ERROR" {
					st = events.TestError
				}
				p.report = events.TestResult{Name: pyName(method, id), Status: st}
				p.state = 2
				return true
			}
		}
		p.state = 0
		return false
	case p.state == 2 && p.tb == nil && s == pyRuleDash:
		p.tb = []string{}
		return true
	case p.state == 2 && p.tb == nil:
		return true // a docstring's line under the header
	case p.state == 2 && s == pyRuleDash:
		p.endReport() // the rule before "Ran N tests"
		return true
	case p.state == 2:
		if p.tbLen < 64<<10 {
			p.tb = append(p.tb, s)
			p.tbLen += len(s) + 1
		}
		return true
	}
	return false
}

// endReport gives the test of the report read its traceback's last lines.
func (p *unittestParser) endReport() {
	if p.state == 2 && p.report.Name != "" {
		tb := p.tb
		for len(tb) > 0 && strings.TrimSpace(tb[len(tb)-1]) == "" {
			tb = tb[:len(tb)-1]
		}
		i := len(tb)
		for n := 0; i > 0 && n+len(tb[i-1])+1 <= events.MaxTestMessage; i-- {
			n += len(tb[i-1]) + 1
		}
		if i == len(tb) && len(tb) > 0 { // one line longer than the bound
			last := tb[len(tb)-1]
			tb = []string{strings.ToValidUTF8(last[:events.MaxTestMessage-len("…")], "") + "…"}
			i = 0
		}
		p.report.Message = strings.ToValidUTF8(strings.Join(tb[i:], "\n"), "\uFFFD")
		if len(p.report.Message) > events.MaxTestMessage { // replacements grew it
			p.report.Message = strings.ToValidUTF8(p.report.Message[:events.MaxTestMessage-len("…")], "") + "…"
		}
		p.add(p.report)
	}
	p.state, p.report, p.tb, p.tbLen = 0, events.TestResult{}, nil, 0
}

// pyHeader splits a unittest line "name (id)[ description] ...[ rest]"
// (dots true) or "name (id)" (a docstring line follows; dots false).
// Leading blanks (a subtest's line is indented) are skipped.
func pyHeader(s string) (method, id, rest string, dots, ok bool) {
	t := strings.TrimLeft(s, " \t")
	i := identLen(t, false)
	if i == 0 || !strings.HasPrefix(t[i:], " (") {
		return
	}
	method, t = t[:i], t[i+2:]
	j := identLen(t, true)
	if j == 0 || j >= len(t) || t[j] != ')' {
		return
	}
	id, t = t[:j], t[j+1:]
	if t == "" {
		return method, id, "", false, s[0] != ' ' && s[0] != '\t' // a docstring's test is never indented
	}
	if t[0] != ' ' {
		return
	}
	for k := 0; ; {
		n := strings.Index(t[k:], " ...")
		if n < 0 {
			return
		}
		after := t[k+n+4:]
		if after == "" || after[0] == ' ' {
			return method, id, strings.TrimPrefix(after, " "), true, true
		}
		k += n + 1
	}
}

// identLen is the length of the Python identifier (or, dotted, the dotted
// name) that s starts with.
func identLen(s string, dotted bool) int {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z':
		case i > 0 && ('0' <= c && c <= '9' || dotted && c == '.'):
		default:
			return i
		}
	}
	return len(s)
}

func (p *unittestParser) line(s string) {
	if p.reportLine(s) {
		return
	}
	doc := p.doc
	p.doc = false
	method, id, rest, dots, ok := pyHeader(s)
	if ok && !dots {
		p.pending, p.doc, p.started = pyName(method, id), true, p.lineStart
		return
	}
	if ok {
		p.pending, p.started = pyName(method, id), p.lineStart
		if st, ok := pyStatus(rest); ok {
			p.emit(st)
		}
		return
	}
	if doc && !strings.Contains(s, " ...") {
		p.pending = "" // not a test header after all
		return
	}
	if p.pending == "" {
		return
	}
	// A docstring's line ends with " ... <result>"; output may also end so.
	if i := strings.LastIndex(s, " ... "); i >= 0 {
		if st, ok := pyStatus(s[i+5:]); ok {
			p.emit(st)
		}
	} else if st, ok := pyStatus(s); ok {
		p.emit(st)
	}
}

func (p *unittestParser) emit(status string) {
	r := events.TestResult{Name: p.pending, Status: status}
	if !p.started.IsZero() && !p.now.IsZero() {
		r.DurationMs = max(0, p.now.Sub(p.started).Milliseconds())
	}
	p.add(r)
	p.pending = ""
}

// pyName is the test's full id: Python 3.11+ prints it whole; older ones
// print the class, to which the method is added.
func pyName(method, id string) string {
	if id == method || strings.HasSuffix(id, "."+method) {
		return id
	}
	return id + "." + method
}

// pyStatus reads unittest's verdict on a test.
func pyStatus(s string) (string, bool) {
	s = strings.TrimSpace(s)
	switch {
	case s == "ok" || s == "expected failure":
		return events.TestPassed, true
	case s == "FAIL" || s == "unexpected success":
		return events.TestFailed, true
	case s == "ERROR":
		return events.TestError, true
	case s == "skipped" || strings.HasPrefix(s, "skipped "):
		return events.TestSkipped, true
	}
	return "", false
}
