package runner

import (
	"encoding/json"
	"math"
	"strings"

	"github.com/jetci/jetci/events"
)

// goTestParser reads `go test -json` lines (test2json events): a pass, fail
// or skip of a test is one result named <package>.<Test>, with its Elapsed
// seconds. A package that fails with no failed test (a build failure, a
// panic in init or TestMain) is one failed result named after the package.
type goTestParser struct {
	add       func(events.TestResult)
	pkgFailed map[string]bool // packages with a failed test
}

type goTestEvent struct {
	Action  string   `json:"Action"`
	Package string   `json:"Package"`
	Test    string   `json:"Test"`
	Elapsed *float64 `json:"Elapsed"`
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
			case "pass", "fail", "skip":
			default:
				return
			}
		}
	}
	var ev goTestEvent
	if json.Unmarshal([]byte(s), &ev) != nil {
		return
	}
	var status string
	switch ev.Action {
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
	p.add(events.TestResult{Name: name, Status: status, DurationMs: seconds(ev.Elapsed)})
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
type unittestParser struct {
	add     func(events.TestResult)
	pending string // a test whose result is still to come
	doc     bool   // pending was named alone: the next line is its docstring's
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
	doc := p.doc
	p.doc = false
	method, id, rest, dots, ok := pyHeader(s)
	if ok && !dots {
		p.pending, p.doc = pyName(method, id), true
		return
	}
	if ok {
		p.pending = pyName(method, id)
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
	p.add(events.TestResult{Name: p.pending, Status: status})
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
