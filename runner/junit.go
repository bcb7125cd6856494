package runner

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/jetci/jetci/events"
)

// Limits on the JUnit XML reports of one try.
const (
	maxReportFiles = 100
	maxReportBytes = 32 << 20 // per file; the rest of a larger file is not read
)

// junitCase is a <testcase> of a JUnit XML report.
type junitCase struct {
	Name      string         `xml:"name,attr"`
	ClassName string         `xml:"classname,attr"`
	Time      string         `xml:"time,attr"`
	Failure   []junitFailure `xml:"failure"`
	Error     []junitFailure `xml:"error"`
	Skipped   *xmlAny        `xml:"skipped"`
}

type xmlAny struct{}

// junitFailure is a <failure> or <error>: its message attribute, else the
// start of its text, is the test's message.
type junitFailure struct {
	Message string `xml:"message,attr"`
	Text    string `xml:",chardata"`
}

func failureMessage(fs []junitFailure) string {
	if len(fs) == 0 {
		return ""
	}
	m := strings.TrimSpace(fs[0].Message)
	if m == "" {
		m = strings.TrimSpace(fs[0].Text)
	}
	if len(m) > events.MaxTestMessage {
		m = strings.ToValidUTF8(m[:events.MaxTestMessage], "") + "…"
	}
	return m
}

// parseJUnit reads the <testcase> elements of a JUnit XML document, whatever
// their root (<testsuites>, <testsuite>, nested suites), and hands each to add:
// named <classname>.<name> (or <name> without a class), failed with a
// <failure>, error with an <error>, skipped with <skipped>, else passed, its
// time attribute in seconds. The cases read before a syntax error are kept,
// and the error returned.
func parseJUnit(r io.Reader, add func(events.TestResult)) (int, error) {
	d := xml.NewDecoder(r)
	d.CharsetReader = func(_ string, in io.Reader) (io.Reader, error) { return in, nil } // names stay as bytes
	n := 0
	sawRoot := false
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			if !sawRoot {
				return n, errors.New("not XML: no element")
			}
			return n, nil
		}
		if err != nil {
			return n, err
		}
		se, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		sawRoot = true
		if se.Name.Local != "testcase" {
			continue
		}
		var c junitCase
		if err := d.DecodeElement(&c, &se); err != nil {
			return n, err
		}
		name := strings.TrimSpace(c.Name)
		if cl := strings.TrimSpace(c.ClassName); cl != "" && name != "" {
			name = cl + "." + name
		}
		if name == "" {
			continue
		}
		status, message := events.TestPassed, ""
		switch {
		case len(c.Failure) > 0:
			status, message = events.TestFailed, failureMessage(c.Failure)
		case len(c.Error) > 0:
			status, message = events.TestError, failureMessage(c.Error)
		case c.Skipped != nil:
			status = events.TestSkipped
		}
		add(events.TestResult{Name: name, Status: status, DurationMs: junitTime(c.Time), Message: message})
		n++
	}
}

// junitTime reads a time attribute in seconds ("1.5", "1,234.5"); anything
// else is 0.
func junitTime(s string) int64 {
	s = strings.ReplaceAll(strings.TrimSpace(s), ",", "")
	if s == "" {
		return 0
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0
	}
	return secondsToMs(v)
}

// readReports finds the JUnit XML files the reports globs name in the
// workspace (the same rules as artifacts: relative, no .., symlinks only to
// files inside, .git skipped) and adds their test cases to c. Notes say what
// went wrong; a bad report never changes the job's status.
func readReports(ws string, patterns []string, c *testCollector) []string {
	if len(patterns) == 0 {
		return nil
	}
	files, notes := findArtifacts(ws, patterns)
	for i, f := range files {
		if i == maxReportFiles {
			notes = append(notes, fmt.Sprintf("only %d report files are read; %d more left out", maxReportFiles, len(files)-i))
			break
		}
		n, err := readReport(f.abs, c)
		switch {
		case err != nil:
			notes = append(notes, fmt.Sprintf("%s: %d test case(s) read, then: %v", f.rel, n, err))
		case n == 0:
			notes = append(notes, fmt.Sprintf("%s: no test case", f.rel))
		}
	}
	return notes
}

func readReport(file string, c *testCollector) (int, error) {
	f, err := os.Open(file)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return parseJUnit(io.LimitReader(f, maxReportBytes), func(r events.TestResult) { c.add("junit", r) })
}
