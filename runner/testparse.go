package runner

import (
	"encoding/json"
	"math"
	"regexp"
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

var (
	// name (id) [subtest description] ... rest
	pyHeadRE = regexp.MustCompile(`^\s*([A-Za-z_][A-Za-z0-9_]*) \(([A-Za-z_][A-Za-z0-9_.]*)\)(?: .*?)? \.\.\.(?: (.*))?$`)
	// name (id) alone: a docstring line follows
	pyDocRE = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*) \(([A-Za-z_][A-Za-z0-9_.]*)\)$`)
)

func (p *unittestParser) line(s string) {
	doc := p.doc
	p.doc = false
	if !strings.Contains(s, "...") {
		if m := pyDocRE.FindStringSubmatch(s); m != nil {
			p.pending, p.doc = pyName(m[1], m[2]), true
			return
		}
		if doc {
			p.pending = "" // not a test header after all
			return
		}
		if p.pending != "" {
			if st, ok := pyStatus(s); ok {
				p.emit(st)
			}
		}
		return
	}
	if m := pyHeadRE.FindStringSubmatch(s); m != nil {
		p.pending = pyName(m[1], m[2])
		if st, ok := pyStatus(m[3]); ok {
			p.emit(st)
		}
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
