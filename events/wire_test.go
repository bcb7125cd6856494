package events_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/jetci/jetci/events"
)

// TestWireDoc keeps docs/wire.md, the one table of subjects, streams and
// buckets, equal to what package events defines, and checks that every
// Stream*, Bucket*, Subject* and Consumer* constant of the package is in it
// with its value: a new one cannot be left out of the contract.
func TestWireDoc(t *testing.T) {
	const path = "../docs/wire.md"
	want := events.WireDoc()
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("%s is out of date with package events: run 'go test ./events -run TestWireDoc -update'", path)
	}
	lines := strings.Split(want, "\n")
	row := func(name string) string {
		for _, l := range lines {
			if strings.Contains(l, "| "+name+" |") {
				return l
			}
		}
		return ""
	}
	consts := packageConsts(t)
	if len(consts) < 40 {
		t.Fatalf("found %d constants in package events: the parse is wrong", len(consts))
	}
	for name, value := range consts {
		switch {
		case strings.HasPrefix(name, "Consumer"):
			if value != "" && !regexp.MustCompile(`\b`+regexp.QuoteMeta(value)+`\b`).MatchString(want) {
				t.Errorf("consumer %s (%q) is not in %s", name, value, path)
			}
		default:
			r := row(name)
			if r == "" {
				t.Errorf("%s is not in %s", name, path)
			} else if value != "" && !strings.Contains(r, "`"+value) {
				t.Errorf("%s: its row %q does not give its value %q", name, r, value)
			}
		}
	}
	// The facts that were wrong before there was one table.
	for name, transport := range map[string]string{"SubjectLogs": "stream JETCI_LOGS", "SubjectCancel": "core NATS", "SubjectBranch": "stream JETCI_BRANCHES",
		"SubjectRecheck": "core NATS, request/reply", "SubjectMaxDeliveries": "stream JETCI_DEAD"} {
		if !strings.Contains(row(name), "| "+transport+" |") {
			t.Errorf("%s: row %q, want transport %s", name, row(name), transport)
		}
	}
	if r := row("SubjectResults"); !strings.Contains(r, "| dispatcher, runner, reporter, pool | dispatcher, reporter |") {
		t.Errorf("SubjectResults: row %q, want publishers dispatcher, runner, reporter, pool and readers dispatcher, reporter", r)
	}
}

// packageConsts returns the Stream*, Bucket*, Subject* and Consumer*
// constants of package events, with their value when it is a string literal.
func packageConsts(t *testing.T) map[string]string {
	t.Helper()
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, ".", func(fi os.FileInfo) bool { return !strings.HasSuffix(fi.Name(), "_test.go") }, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	name := regexp.MustCompile(`^(Stream|Bucket|Subject|Consumer)[A-Z]`)
	for _, f := range pkgs["events"].Files {
		for _, d := range f.Decls {
			g, ok := d.(*ast.GenDecl)
			if !ok || g.Tok != token.CONST {
				continue
			}
			for _, spec := range g.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, id := range vs.Names {
					if !name.MatchString(id.Name) {
						continue
					}
					out[id.Name] = ""
					if i < len(vs.Values) {
						if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
							out[id.Name], _ = strconv.Unquote(lit.Value)
						}
					}
				}
			}
		}
	}
	return out
}
