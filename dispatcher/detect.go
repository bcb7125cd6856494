package dispatcher

import (
	"errors"
	"regexp"
	"slices"
	"strings"

	"github.com/jetci/jetci/events"
)

// ErrNoPipeline is the error of a commit with neither a pipeline file nor a test
// command jetci recognises.
var ErrNoPipeline = errors.New("no pipeline: add .jetci.yml (no tests/ with Python files, no go.mod, no Makefile with a test target)")

// Detect picks a test command for a commit without a pipeline file, from what the
// observer saw of its tree: a tests/ folder with Python files runs unittest (the
// 500-lines convention), a go.mod runs go test, a Makefile with a test target runs
// make test. The result is one job named "test".
func Detect(p events.Probe) (*Pipeline, error) {
	var step string
	switch {
	case slices.Contains(p.Root, "tests/") && slices.ContainsFunc(p.Tests, func(s string) bool { return strings.HasSuffix(s, ".py") }):
		step = "python3 -m unittest discover -s tests -v"
	case slices.Contains(p.Root, "go.mod"):
		step = "go test ./..."
	case makeHasTest(p.Makefile):
		step = "make test"
	default:
		return nil, ErrNoPipeline
	}
	return &Pipeline{Path: "(detected)", Jobs: []Job{{Name: "test", Steps: []string{step}}}}, nil
}

// ruleRE matches a make rule line: targets, then ':' (or '::'), not ':=' / '::='.
var ruleRE = regexp.MustCompile(`^([^\t#:=][^:=#]*?)\s*::?(?:[^=:]|$)`)

func makeHasTest(makefile string) bool {
	makefile = strings.ReplaceAll(makefile, "\r\n", "\n")
	makefile = strings.ReplaceAll(makefile, "\\\n", " ") // a continued line is one line
	for _, line := range strings.Split(makefile, "\n") {
		m := ruleRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		if slices.Contains(strings.Fields(m[1]), "test") {
			return true
		}
	}
	return false
}
