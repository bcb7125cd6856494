package runner

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jetci/jetci/events"
)

// collect feeds output to a collector in awkward pieces (lines split across
// writes, as a pipe delivers them) and returns the tests by name.
func collect(t *testing.T, out string) (map[string]events.TestResult, *testCollector) {
	t.Helper()
	c := newTestCollector()
	for i := 0; i < len(out); i += 7 {
		c.Write([]byte(out[i:min(i+7, len(out))]))
	}
	c.Flush()
	got := map[string]events.TestResult{}
	for _, r := range c.results {
		got[r.Name] = r
	}
	return got, c
}

func wantStatuses(t *testing.T, got map[string]events.TestResult, want map[string]string) {
	t.Helper()
	for name, st := range want {
		r, ok := got[name]
		if !ok {
			t.Errorf("test %s not found; got %v", name, got)
			continue
		}
		if r.Status != st {
			t.Errorf("test %s: status %q, want %q", name, r.Status, st)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %d tests, want %d: %v", len(got), len(want), got)
	}
}

// realGoTestJSON runs `go test -json` on a small module made here and returns
// its combined output, as a job's log would hold it.
func realGoTestJSON(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go on PATH")
	}
	dir := t.TempDir()
	files := map[string]string{
		"go.mod": "module example.com/m\n\ngo 1.21\n",
		"a/a_test.go": `package a

import (
	"testing"
	"time"
)

func TestPass(t *testing.T) {}
func TestFail(t *testing.T) { t.Fatal("boom") }
func TestSkip(t *testing.T) { t.Skip("later") }
func TestSlow(t *testing.T) { time.Sleep(60 * time.Millisecond) }
func TestSub(t *testing.T) {
	t.Run("ok", func(t *testing.T) {})
	t.Run("bad", func(t *testing.T) { t.Error("no") })
}
func TestPrints(t *testing.T) { t.Log("test_x (m.C.test_x) ... FAIL") }
`,
		"b/b_test.go": "package b\n\nimport \"testing\"\n\nfunc TestBroken(t *testing.T) { undefined() }\n",
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", "test", "-json", "-count=1", "./...")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=", "GOTOOLCHAIN=local")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("go test passed; want failures:\n%s", out)
	}
	return string(out)
}

func TestParseRealGoTestJSON(t *testing.T) {
	out := realGoTestJSON(t)
	got, c := collect(t, out)
	wantStatuses(t, got, map[string]string{
		"example.com/m/a.TestPass":    events.TestPassed,
		"example.com/m/a.TestFail":    events.TestFailed,
		"example.com/m/a.TestSkip":    events.TestSkipped,
		"example.com/m/a.TestSlow":    events.TestPassed,
		"example.com/m/a.TestSub":     events.TestFailed,
		"example.com/m/a.TestSub/ok":  events.TestPassed,
		"example.com/m/a.TestSub/bad": events.TestFailed,
		"example.com/m/a.TestPrints":  events.TestPassed, // its output is inside JSON: not a unittest line
		"example.com/m/b":             events.TestFailed, // the build failed: the package is the failure
	})
	if d := got["example.com/m/a.TestSlow"].DurationMs; d < 60 {
		t.Errorf("TestSlow took %d ms; it sleeps 60 ms", d)
	}
	// A failing test carries its own output lines, without go test's
	// framing; a passing one carries none.
	for name, want := range map[string]string{"example.com/m/a.TestFail": "boom", "example.com/m/a.TestSub/bad": "no"} {
		m := got[name].Message
		if !strings.Contains(m, "a_test.go:") || !strings.HasSuffix(m, ": "+want) || strings.Contains(m, "=== RUN") || strings.Contains(m, "--- FAIL") {
			t.Errorf("%s: message %q", name, m)
		}
	}
	if m := got["example.com/m/a.TestPrints"].Message; m != "" {
		t.Errorf("a passing test has a message %q", m)
	}
	tests, sum := c.finish(nil)
	if sum.Total != 9 || sum.Failed != 4 || sum.Skipped != 1 || sum.Passed != 4 || sum.Truncated ||
		strings.Join(sum.Sources, ",") != "go-test-json" {
		t.Fatalf("summary %+v", sum)
	}
	for i, r := range tests[:4] {
		if !events.Failing(r.Status) {
			t.Fatalf("test %d is %+v: failures come first", i, r)
		}
	}
	if tests[4].Name != "example.com/m/a.TestSlow" {
		t.Fatalf("after the failures the slowest comes first; got %+v", tests[4])
	}
}

// realUnittest runs `python3 -m unittest -v` on a suite made here.
func realUnittest(t *testing.T, extra ...string) string {
	t.Helper()
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("no python3 on PATH")
	}
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "tests"), 0o755)
	os.WriteFile(filepath.Join(dir, "tests", "__init__.py"), nil, 0o644)
	src := `import unittest

class TestC(unittest.TestCase):
    def test_ok(self): pass
    def test_slow(self):
        import time; time.sleep(0.06)
    def test_fail(self): self.assertEqual(1, 2)
    def test_error(self): raise RuntimeError("x")
    @unittest.skip("why")
    def test_skip(self): pass
    @unittest.expectedFailure
    def test_expected(self): self.assertEqual(1, 2)
    @unittest.expectedFailure
    def test_unexpected(self): pass
    def test_doc(self):
        """A docstring line."""
    def test_prints(self):
        print("some output")
    def test_sub(self):
        for i in range(3):
            with self.subTest(i=i):
                self.assertNotEqual(i, 1)
    def test_sub_ok(self):
        for i in range(3):
            with self.subTest(i=i):
                pass

class TestD(unittest.TestCase):
    def test_other(self): pass
`
	os.WriteFile(filepath.Join(dir, "tests", "test_mod.py"), []byte(src), 0o644)
	args := append([]string{"-m", "unittest"}, extra...)
	cmd := exec.Command("python3", args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("unittest passed; want failures:\n%s", out)
	}
	return string(out)
}

func TestParseRealUnittest(t *testing.T) {
	for _, args := range [][]string{{"discover", "-v", "-s", ".", "-p", "test_*.py"}, {"-v", "-b", "tests.test_mod"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			out := realUnittest(t, args...)
			got, c := collect(t, out)
			p := "tests.test_mod.TestC."
			wantStatuses(t, got, map[string]string{
				p + "test_ok":                     events.TestPassed,
				p + "test_slow":                   events.TestPassed,
				p + "test_fail":                   events.TestFailed,
				p + "test_error":                  events.TestError,
				p + "test_skip":                   events.TestSkipped,
				p + "test_expected":               events.TestPassed,
				p + "test_unexpected":             events.TestFailed,
				p + "test_doc":                    events.TestPassed,
				p + "test_prints":                 events.TestPassed,
				p + "test_sub":                    events.TestFailed,
				p + "test_sub_ok":                 events.TestPassed,
				"tests.test_mod.TestD.test_other": events.TestPassed,
			})
			if _, sum := c.finish(nil); sum == nil || sum.Sources[0] != "unittest" || sum.Failed != 4 {
				t.Fatalf("summary %+v\n%s", sum, out)
			}
			// Durations, from when the lines came (collect writes at once,
			// so only the sleeping test is told apart here).
			if d := got[p+"test_slow"].DurationMs; d != 0 {
				t.Logf("test_slow %d ms (written at once: 0 expected)", d)
			}
			// Failures carry their traceback's last lines.
			for name, want := range map[string]string{p + "test_fail": "AssertionError: 1 != 2", p + "test_error": "RuntimeError: x",
				p + "test_sub": "AssertionError: 1 == 1"} {
				m := got[name].Message
				if !strings.HasSuffix(m, want) || len(m) > events.MaxTestMessage {
					t.Errorf("%s: message %q, want it to end %q", name, m, want)
				}
			}
			if m := got[p+"test_ok"].Message; m != "" {
				t.Errorf("test_ok has a message %q", m)
			}
		})
	}
}

// Python before 3.11 printed the class only in the parenthesis.
func TestParseOldUnittestLines(t *testing.T) {
	got, _ := collect(t, "test_a (tests.test_mod.TestC) ... ok\ntest_b (tests.test_mod.TestC) ... FAIL\n"+
		"test_c (tests.test_mod.TestC)\nDoc line. ... skipped 'x'\nsee (docs.here)\nok\n")
	wantStatuses(t, got, map[string]string{
		"tests.test_mod.TestC.test_a": events.TestPassed,
		"tests.test_mod.TestC.test_b": events.TestFailed,
		"tests.test_mod.TestC.test_c": events.TestSkipped,
	})
}

const junitDoc = `<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="all" tests="5" failures="1" errors="1" time="1.5">
  <testsuite name="pkg" tests="4" time="1.2">
    <properties><property name="go.version" value="go1.26"/></properties>
    <testcase classname="pkg.Suite" name="test_ok" time="0.250"/>
    <testcase classname="pkg.Suite" name="test_fail" time="1,234.5"><failure message="boom" type="AssertionError">trace</failure><system-out>out</system-out></testcase>
    <testcase classname="pkg.Suite" name="test_err" time="x"><error message="oops"/></testcase>
    <testcase classname="pkg.Suite" name="test_skip"><skipped message="later"/></testcase>
    <testsuite name="nested"><testcase name="bare" time="0.001"/></testsuite>
  </testsuite>
</testsuites>`

func TestParseJUnit(t *testing.T) {
	for name, doc := range map[string]string{
		"testsuites root": junitDoc,
		"testsuite root": `<testsuite name="pkg"><testcase classname="pkg.Suite" name="test_ok" time="0.250"/>
<testcase classname="pkg.Suite" name="test_fail" time="1234.5"><failure/></testcase>
<testcase classname="pkg.Suite" name="test_err"><error/></testcase>
<testcase classname="pkg.Suite" name="test_skip"><skipped/></testcase><testcase name="bare"/></testsuite>`,
	} {
		t.Run(name, func(t *testing.T) {
			c := newTestCollector()
			n, err := parseJUnit(strings.NewReader(doc), func(r events.TestResult) { c.add("junit", r) })
			if err != nil || n != 5 {
				t.Fatalf("parsed %d cases, %v", n, err)
			}
			got := map[string]events.TestResult{}
			for _, r := range c.results {
				got[r.Name] = r
			}
			wantStatuses(t, got, map[string]string{
				"pkg.Suite.test_ok": events.TestPassed, "pkg.Suite.test_fail": events.TestFailed,
				"pkg.Suite.test_err": events.TestError, "pkg.Suite.test_skip": events.TestSkipped, "bare": events.TestPassed,
			})
			if got["pkg.Suite.test_ok"].DurationMs != 250 || got["pkg.Suite.test_fail"].DurationMs != 1234500 {
				t.Fatalf("durations: %+v", got)
			}
		})
	}
	// A cut file keeps what came before the cut, and says so.
	c := newTestCollector()
	n, err := parseJUnit(strings.NewReader(junitDoc[:strings.Index(junitDoc, "<testcase classname=\"pkg.Suite\" name=\"test_err\"")+20]),
		func(r events.TestResult) { c.add("junit", r) })
	if err == nil || n != 2 {
		t.Fatalf("cut file: %d cases, %v", n, err)
	}
	if _, err := parseJUnit(strings.NewReader("not xml at all"), func(events.TestResult) {}); err == nil {
		t.Fatal("plain text parsed as a report")
	}
}

// Reports are found with the artifact rules: a glob inside the workspace,
// nothing outside it.
func TestReadReports(t *testing.T) {
	ws, outside := t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(ws, "out", "unit"), 0o755)
	os.WriteFile(filepath.Join(ws, "out", "unit", "a.xml"), []byte(junitDoc), 0o644)
	os.WriteFile(filepath.Join(ws, "out", "bad.xml"), []byte("<testsuite><testcase name="), 0o644)
	os.WriteFile(filepath.Join(outside, "evil.xml"), []byte(`<testsuite><testcase name="evil"/></testsuite>`), 0o644)
	os.Symlink(filepath.Join(outside, "evil.xml"), filepath.Join(ws, "out", "evil.xml"))
	c := newTestCollector()
	notes := readReports(ws, []string{"out/**/*.xml", "../*.xml", "none/*.xml"}, c)
	if len(c.results) != 5 {
		t.Fatalf("got %d tests, want the 5 of a.xml: %+v", len(c.results), c.results)
	}
	all := strings.Join(notes, "\n")
	for _, want := range []string{"out/bad.xml: 0 test case(s) read", "out/evil.xml: it points outside", "leaves the workspace", `"none/*.xml" matched no file`} {
		if !strings.Contains(all, want) {
			t.Errorf("notes %q lack %q", all, want)
		}
	}
}

// A JobFinished carries at most MaxTests tests: every failure, then the
// slowest; the summary counts all; names are cut to MaxTestName bytes.
func TestCollectorCapsTheTests(t *testing.T) {
	c := newTestCollector()
	for i := range 2000 {
		st := events.TestPassed
		if i%100 == 0 {
			st = events.TestFailed
		}
		c.add("junit", events.TestResult{Name: fmt.Sprintf("t%04d", i), Status: st, DurationMs: int64(i)})
	}
	c.add("junit", events.TestResult{Name: strings.Repeat("é", 300), Status: events.TestPassed, DurationMs: 5000})
	tests, sum := c.finish(map[string]bool{"t0001": true, "t0100": true})
	if len(tests) != events.MaxTests || !sum.Truncated || sum.Total != 2001 || sum.Failed != 20 || sum.Passed != 1981 || sum.Flaky != 1 {
		t.Fatalf("%d tests, summary %+v", len(tests), sum)
	}
	for _, r := range tests[:20] {
		if r.Status != events.TestFailed {
			t.Fatalf("failures first: %+v", r)
		}
	}
	if r := tests[20]; r.Name != "t0001" || !r.Flaky {
		t.Fatalf("a flaky test (failed before, passes now) comes next: %+v", r)
	}
	if n := tests[21].Name; len(n) > events.MaxTestName || !strings.HasSuffix(n, "…") {
		t.Fatalf("then the slowest, its name cut: %q (%d bytes)", n, len(n))
	}
	if tests[22].DurationMs != 1999 {
		t.Fatalf("then the slowest: %+v", tests[22])
	}
	data, _ := events.Encode(&events.JobFinished{JobRef: events.JobRef{JobID: "x", Repo: "r", Branch: "b", Commit: "c", Job: "j", Arch: "a"},
		Status: events.StatusPassed, Tests: tests, TestSummary: sum})
	if len(data) > 256<<10 {
		t.Fatalf("a JobFinished with %d tests is %d bytes", len(tests), len(data))
	}
}

// Reports as pytest (--junitxml), Maven Surefire and go-junit-report write them.
func TestParseJUnitFormats(t *testing.T) {
	for file, want := range map[string]map[string]string{
		"pytest.xml": {"tests.test_mod.test_ok": events.TestPassed, "tests.test_mod.test_fail": events.TestFailed,
			"tests.test_mod.test_error": events.TestError, "tests.test_mod.test_skip": events.TestSkipped},
		"surefire.xml": {"com.example.AppTest.testOk": events.TestPassed, "com.example.AppTest.testFail": events.TestFailed,
			"com.example.AppTest.testSkip": events.TestSkipped},
		"go-junit.xml": {"example.com/m/a.TestPass": events.TestPassed, "example.com/m/a.TestFail": events.TestFailed,
			"example.com/m/a.TestSub/bad": events.TestFailed, "example.com/m/a.TestSkip": events.TestSkipped},
	} {
		c := newTestCollector()
		if _, err := readReport(filepath.Join("testdata", "junit", file), c); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		got := map[string]events.TestResult{}
		for _, r := range c.results {
			got[r.Name] = r
		}
		wantStatuses(t, got, want)
	}
}

// TestParseJUnitFailureMessages: a failing case keeps its message (the
// message attribute, else the start of the text), bounded, for the mail.
func TestParseJUnitFailureMessages(t *testing.T) {
	doc := `<testsuite><testcase classname="s" name="attr"><failure message="expected 2, got 3">trace</failure></testcase>
<testcase classname="s" name="text"><error>  boom
at line 4</error></testcase>
<testcase classname="s" name="long"><failure message="` + strings.Repeat("x", 2*events.MaxTestMessage) + `"/></testcase>
<testcase classname="s" name="ok"/></testsuite>`
	c := newTestCollector()
	if _, err := parseJUnit(strings.NewReader(doc), func(r events.TestResult) { c.add("junit", r) }); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, r := range c.results {
		got[r.Name] = r.Message
	}
	if got["s.attr"] != "expected 2, got 3" || got["s.text"] != "boom\nat line 4" || got["s.ok"] != "" {
		t.Errorf("messages %q", got)
	}
	if l := len(got["s.long"]); l > events.MaxTestMessage+len("…") || l < events.MaxTestMessage {
		t.Errorf("a long message kept %d bytes", l)
	}
}

// TestUnittestDurationsAsLinesCome feeds unittest's output as a pipe
// delivers it, with a clock: a test's duration is from its header to its
// verdict.
func TestUnittestDurationsAsLinesCome(t *testing.T) {
	c := newTestCollector()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c.clock = func() time.Time { return now }
	step := func(s string, d time.Duration) { c.Write([]byte(s)); now = now.Add(d) }
	step("test_a (m.C.test_a) ... ", 250*time.Millisecond)
	step("ok\n", 0)
	step("test_b (m.C.test_b) ... ", 1500*time.Millisecond)
	step("FAIL\n", 0)
	step("test_c (m.C.test_c) ... ok\n", 0)
	c.Flush()
	got := map[string]int64{}
	for _, r := range c.results {
		got[r.Name] = r.DurationMs
	}
	if got["m.C.test_a"] != 250 || got["m.C.test_b"] != 1500 || got["m.C.test_c"] != 0 {
		t.Fatalf("durations %v", got)
	}
}
