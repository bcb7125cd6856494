package runner

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/jetci/jetci/events"
)

// checkCollected holds for whatever a job prints or a report file holds:
// names are valid UTF-8 within MaxTestName, statuses are known, durations
// are not negative, and what a JobFinished carries is bounded and encodes.
func checkCollected(t *testing.T, c *testCollector) {
	t.Helper()
	for _, r := range c.results {
		if r.Name == "" || len(r.Name) > events.MaxTestName || !utf8.ValidString(r.Name) {
			t.Fatalf("bad name %q", r.Name)
		}
		if len(r.Message) > events.MaxTestMessage || !utf8.ValidString(r.Message) {
			t.Fatalf("bad message %q", r.Message)
		}
		if rank(r.Status) == 0 || r.DurationMs < 0 {
			t.Fatalf("bad result %+v", r)
		}
	}
	tests, sum := c.finish(map[string]bool{})
	if len(tests) > events.MaxTests || (sum == nil) != (len(c.results) == 0) {
		t.Fatalf("%d tests, summary %+v", len(tests), sum)
	}
	if sum != nil && sum.Passed+sum.Failed+sum.Skipped != sum.Total {
		t.Fatalf("summary does not add up: %+v", sum)
	}
	if _, err := events.Encode(&events.JobFinished{Tests: tests, TestSummary: sum}); err != nil {
		t.Fatal(err)
	}
}

// FuzzTestOutput: the log parsers (go test -json, unittest -v) on any output,
// in any split into writes.
func FuzzTestOutput(f *testing.F) {
	for _, s := range []string{
		`{"Time":"2026-12-01T10:00:00Z","Action":"pass","Package":"example.com/m/a","Test":"TestX","Elapsed":0.01}` + "\n",
		`{"Action":"fail","Package":"example.com/m/b","Elapsed":-1e308}` + "\n" + `{"Action":"skip","Test":"T"}`,
		"test_x (tests.test_mod.TestC.test_x) ... ok\ntest_y (tests.test_mod.TestC.test_y) ... FAIL\n",
		"test_d (m.C.test_d)\nDoc. ... skipped 'x'\ntest_p (m.C) ... out\nERROR\n  test_s (m.C.test_s) (i=1) ... FAIL\r\n",
		"{\"Action\":\"pass\",\"Test\":\"\xff\xfe\"}\n", "{", "... ok", "a (b) ... ",
		`{"Time":"2026-12-01T10:00:00Z","Action":"run","Package":"p","Test":"T"}` + "\n" +
			`{"Action":"output","Package":"p","Test":"T","Output":"    t_test.go:3: \xff boom\n"}` + "\n" +
			`{"Time":"2026-12-01T10:00:01Z","Action":"fail","Package":"p","Test":"T","Elapsed":0}` + "\n",
		strings.Repeat("=", 70) + "\nFAIL: test_y (m.C.test_y)\n" + strings.Repeat("-", 70) + "\nTraceback:\nAssertionError: 1 != 2\n\n" +
			strings.Repeat("-", 70) + "\nRan 1 test\n",
		strings.Repeat("=", 70) + "\nERROR: test_z (m.C) (i=1)\nDoc line\n" + strings.Repeat("-", 70) + "\n" + strings.Repeat("x", 400),
	} {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, data []byte, split uint8) {
		c := newTestCollector()
		step := int(split) + 1
		for i := 0; i < len(data); i += step {
			c.Write(data[i:min(i+step, len(data))])
		}
		c.Flush()
		checkCollected(t, c)
		// The split never matters.
		whole := newTestCollector()
		whole.Write(data)
		whole.Flush()
		if len(whole.results) != len(c.results) {
			t.Fatalf("%d results in one write, %d in pieces of %d", len(whole.results), len(c.results), step)
		}
	})
}

// FuzzJUnit: a JUnit XML report of any shape.
func FuzzJUnit(f *testing.F) {
	for _, s := range []string{junitDoc,
		`<testsuite><testcase classname="a" name="b" time="NaN"><failure/><error/><skipped/></testcase></testsuite>`,
		`<?xml version="1.0" encoding="ISO-8859-1"?><testsuites><testcase name="caf` + "\xe9" + `" time="1e400"/></testsuites>`,
		`<!DOCTYPE x [<!ENTITY a "aaaa">]><testsuite><testcase name="&a;"/></testsuite>`,
		"<testsuite><testcase name=", "", "<a><testcase/></a>",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c := newTestCollector()
		n, _ := parseJUnit(bytes.NewReader(data), func(r events.TestResult) { c.add("junit", r) })
		if n < len(c.results) {
			t.Fatalf("%d cases reported, %d kept", n, len(c.results))
		}
		checkCollected(t, c)
	})
}
