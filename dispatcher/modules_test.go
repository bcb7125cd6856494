package dispatcher

import (
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/internal/modtest"
)

const exampleModules = `arch: [amd64, arm64]
modules:
  core:   {paths: ["core/**"], jobs: {test: {steps: "make -C core test"}}}
  net:    {paths: ["net/**"], depends: [core]}
  app:
    paths: ["apps/app/**", "proto/app/*.proto"]
    depends: [net]
    dir: apps/app
  tool:   {paths: [tools], depends: [core], jobs: {lint: {steps: "lint ${module}", arch: [amd64]}}}
module_jobs:            # template for modules without their own jobs
  test: {steps: "make -C ${module_dir} test", env: {WHO: "${module}"}}
  vet:  {steps: ["go vet ./${module_dir}/..."], artifacts: ["${module_dir}/out/*"]}
jobs:
  license: {steps: ./check-licenses, arch: [amd64]}
`

func TestParseModules(t *testing.T) {
	pl, err := ParsePipeline(".jetci.yml", []byte(exampleModules))
	if err != nil {
		t.Fatal(err)
	}
	if len(pl.Jobs) != 1 || pl.Jobs[0].Name != "license" {
		t.Fatalf("repo jobs %+v", pl.Jobs)
	}
	var got []string
	for _, m := range pl.Graph.Modules() {
		for _, j := range m.Jobs {
			got = append(got, fmt.Sprintf("%s/%s dir=%s deps=%v steps=%q arch=%v env=%v art=%v", m.Name, j.Name, m.Dir, m.Depends, j.Steps, j.Arch, j.Env, j.Artifacts))
		}
	}
	want := []string{
		`core/test dir=core deps=[] steps=["make -C core test"] arch=[amd64 arm64] env=map[] art=[]`,
		`net/test dir=net deps=[core] steps=["make -C net test"] arch=[amd64 arm64] env=map[WHO:net] art=[]`,
		`net/vet dir=net deps=[core] steps=["go vet ./net/..."] arch=[amd64 arm64] env=map[] art=[net/out/*]`,
		`app/test dir=apps/app deps=[net] steps=["make -C apps/app test"] arch=[amd64 arm64] env=map[WHO:app] art=[]`,
		`app/vet dir=apps/app deps=[net] steps=["go vet ./apps/app/..."] arch=[amd64 arm64] env=map[] art=[apps/app/out/*]`,
		`tool/lint dir=tools deps=[core] steps=["lint tool"] arch=[amd64] env=map[] art=[]`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestParseModulesBad(t *testing.T) {
	tests := []struct {
		name, file string
		line       int
		reason     string
	}{
		{"cycle", "module_jobs: {t: {steps: x}}\nmodules:\n  a: {paths: [a], depends: [c]}\n  b:\n    paths: [b]\n    depends: [a]\n  c:\n    paths: [c]\n    depends:\n      - b\n",
			6, "modules depend on each other in a cycle: a → c → b → a"},
		{"self", "module_jobs: {t: {steps: x}}\nmodules:\n  a: {paths: [a]}\n  b: {paths: [b], depends: [a, b]}\n", 4, "cycle: b → b"},
		{"unknown dependency", "module_jobs: {t: {steps: x}}\nmodules:\n  core: {paths: [core]}\n  net:\n    paths: [net]\n    depends: [Core]\n",
			6, `module "net" depends on "Core", which is not a module of this file (did you mean "core"?)`},
		{"bad glob", "module_jobs: {t: {steps: x}}\nmodules:\n  a:\n    paths:\n      - a/**\n      - /etc\n", 6, `path glob "/etc" is absolute`},
		{"bad glob syntax", "module_jobs: {t: {steps: x}}\nmodules:\n  a: {paths: \"a/[\"}\n", 3, `syntax error in pattern`},
		{"no paths", "module_jobs: {t: {steps: x}}\nmodules:\n  a: {depends: []}\n", 3, `module "a" has no paths`},
		{"no jobs", "modules:\n  a: {paths: [a]}\n", 2, `module "a" has no jobs: give it jobs: or write a module_jobs: template`},
		{"template without modules", "module_jobs: {t: {steps: x}}\njobs: {t: {steps: x}}\n", 1, "there is no modules: section"},
		{"unknown field", "module_jobs: {t: {steps: x}}\nmodules:\n  a:\n    paths: [a]\n    deps: [b]\n", 5, `unknown field "deps" in module "a"`},
		{"twice", "module_jobs: {t: {steps: x}}\nmodules:\n  a: {paths: [a]}\n  b: {paths: [b], depends: [a, a]}\n", 4, `"a" is listed twice`},
		{"bad name", "module_jobs: {t: {steps: x}}\nmodules:\n  a/b: {paths: [a]}\n", 3, `invalid module name "a/b"`},
		{"bad module job", "module_jobs: {t: {stesp: x}}\nmodules:\n  a: {paths: [a]}\n", 1, `unknown field "stesp" in job "t"`},
		{"empty modules", "modules: {}\n", 1, "modules: must map module names to modules"},
		{"dir with a glob", "module_jobs: {t: {steps: x}}\nmodules:\n  a: {paths: [a], dir: \"a/*\"}\n", 3, "is not a folder"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParsePipeline(".jetci.yml", []byte(tt.file))
			var pe *PipelineError
			if !errors.As(err, &pe) {
				t.Fatalf("got %v, want a *PipelineError", err)
			}
			if pe.Line != tt.line || !strings.Contains(pe.Reason, tt.reason) {
				t.Fatalf("got %q, want line %d and %q", err, tt.line, tt.reason)
			}
			lines := strings.Split(tt.file, "\n")
			if want := fmt.Sprintf("%5d | %s", tt.line, lines[tt.line-1]); !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q does not quote line %d (%q)", err, tt.line, want)
			}
		})
	}
}

func names(pl *Pipeline, mods []int) []string {
	out := []string{}
	for _, i := range mods {
		out = append(out, pl.Graph.Modules()[i].Name)
	}
	return out
}

func TestAffected(t *testing.T) {
	pl, err := ParsePipeline(".jetci.yml", []byte(exampleModules))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		changed []string
		want    []string
		shared  string
	}{
		{[]string{"core/a.go"}, []string{"core", "net", "app", "tool"}, ""},
		{[]string{"net/x/y.go"}, []string{"net", "app"}, ""},
		{[]string{"apps/app/main.go"}, []string{"app"}, ""},
		{[]string{"proto/app/a.proto"}, []string{"app"}, ""},
		{[]string{"tools"}, []string{"tool"}, ""},
		{[]string{"tools/x"}, []string{"tool"}, ""},
		{[]string{"apps/app/main.go", "tools/run.sh"}, []string{"app", "tool"}, ""},
		{[]string{"apps/app/main.go", "README.md"}, nil, "README.md"},
		{[]string{"proto/app/sub/a.proto"}, nil, "proto/app/sub/a.proto"},
		{[]string{".jetci.yml"}, nil, ".jetci.yml"},
		{[]string{"core2/a.go"}, nil, "core2/a.go"},
	}
	for _, tt := range tests {
		mods, shared := pl.Graph.Affected(tt.changed)
		if shared != tt.shared || (tt.shared == "" && !slices.Equal(names(pl, mods), tt.want)) {
			t.Errorf("Affected(%q) = %v, %q; want %v, %q", tt.changed, names(pl, mods), shared, tt.want, tt.shared)
		}
	}
}

func TestAffectedLayeredAgainstBFS(t *testing.T) {
	g := modtest.Layered(7, 10, 40, 90, 160, 210)
	pl, err := ParsePipeline(".jetci.yml", []byte(g.Pipeline()))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(pl.Graph.Modules()); n != 510 {
		t.Fatalf("%d modules", n)
	}
	rng := rand.New(rand.NewSource(3))
	for round := range 300 {
		var changed []int
		var paths []string
		for range 1 + rng.Intn(4) {
			m := rng.Intn(len(g.Names))
			changed = append(changed, m)
			paths = append(paths, g.File(m, fmt.Sprintf("f%d.go", round)))
		}
		mods, shared := pl.Graph.Affected(paths)
		got := names(pl, mods)
		sort.Strings(got)
		if want := g.Dependents(changed...); shared != "" || !slices.Equal(got, want) {
			t.Fatalf("changed %q: got %d modules %v (shared %q), want %d %v", paths, len(got), got, shared, len(want), want)
		}
	}
	for _, leaf := range g.Leaves() {
		if mods, _ := pl.Graph.Affected([]string{g.File(leaf, "x")}); len(mods) != 1 || mods[0] != leaf {
			t.Fatalf("leaf %s: got %v", g.Names[leaf], names(pl, mods))
		}
	}
}

func TestExpandModules(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Arch = []string{"amd64"}
	d, err := New(cfg, nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ev := func(changed ...string) *events.CommitDetected {
		e := commit(exampleModules)
		e.Parents, e.Changed = []string{"parent"}, changed
		return e
	}
	all := "app/test/amd64 app/test/arm64 app/vet/amd64 app/vet/arm64 core/test/amd64 core/test/arm64 license/amd64 " +
		"net/test/amd64 net/test/arm64 net/vet/amd64 net/vet/arm64 tool/lint/amd64"
	cut := ev("apps/app/x")
	cut.ChangedCut = true
	root := ev("apps/app/x")
	root.Parents = nil
	newBranch := ev("apps/app/x")
	newBranch.NewBranch = true
	user := ev("apps/app/x")
	user.Class, user.TriggerID = events.ClassUser, "t1"
	one := ev()
	one.Class, one.TriggerID, one.OnlyModule, one.OnlyJob, one.OnlyArch = events.ClassUser, "t2", "net", "vet", "arm64"
	onlyRepoJob := ev()
	onlyRepoJob.Class, onlyRepoJob.TriggerID, onlyRepoJob.OnlyJob = events.ClassUser, "t3", "license"
	tests := []struct {
		name string
		ev   *events.CommitDetected
		want string
	}{
		{"leaf", ev("apps/app/main.go"), "app/test/amd64 app/test/arm64 app/vet/amd64 app/vet/arm64 license/amd64"},
		{"core", ev("core/a.go"), all},
		{"net", ev("net/a.go"), "app/test/amd64 app/test/arm64 app/vet/amd64 app/vet/arm64 license/amd64 net/test/amd64 net/test/arm64 net/vet/amd64 net/vet/arm64"},
		{"shared file", ev("apps/app/main.go", ".jetci.yml"), all},
		{"cut list", cut, all},
		{"first commit", root, all},
		{"new branch", newBranch, all},
		{"nothing changed", ev(), all},
		{"user trigger", user, all},
		{"re-check one module job", one, "net/vet/arm64"},
		{"re-check a repo job", onlyRepoJob, "license/amd64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			jobs, fail := d.Expand(tt.ev)
			if fail != nil {
				t.Fatal(fail.Error)
			}
			var got []string
			ids := map[string]bool{}
			for _, j := range jobs {
				got = append(got, j.QualifiedJob()+"/"+j.Arch)
				if j.JobID != events.JobID(j.Repo, j.Branch, j.Commit, events.QualifiedJob(j.Module, j.Job), j.Arch) || ids[j.JobID] {
					t.Errorf("job %s/%s: job id %s is wrong or shared", j.QualifiedJob(), j.Arch, j.JobID)
				}
				ids[j.JobID] = true
				if _, err := events.DecodeAs[events.JobQueued](mustEncode(t, j)); err != nil {
					t.Fatal(err)
				}
			}
			sort.Strings(got)
			if strings.Join(got, " ") != tt.want {
				t.Fatalf("got  %s\nwant %s", strings.Join(got, " "), tt.want)
			}
		})
	}
	// A re-check of a module job that is not there says so.
	bad := ev()
	bad.Class, bad.TriggerID, bad.OnlyModule, bad.OnlyJob = events.ClassUser, "t4", "net", "lint"
	if _, fail := d.Expand(bad); fail == nil || !strings.Contains(fail.Error, `no job "lint" of module "net"`) {
		t.Fatalf("got %+v", fail)
	}
}

func TestExpandDeadGlob(t *testing.T) {
	d, err := New(DefaultConfig(), nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ev := commit(exampleModules)
	ev.Parents, ev.Changed = []string{"p"}, []string{"core/a.go"}
	ev.ModuleGlobs = &events.GlobCheck{Checked: 5, Dead: []string{"proto/app/*.proto", "tools"}}
	jobs, fail := d.Expand(ev)
	if jobs != nil || fail == nil {
		t.Fatalf("got %v, %v; want an error result", jobs, fail)
	}
	want := ".jetci.yml:6: path glob \"proto/app/*.proto\" of module \"app\" matches no file at this commit (and 1 more: tools)\n" +
		"    6 |     paths: [\"apps/app/**\", \"proto/app/*.proto\"]"
	if fail.Error != want || fail.Job != "pipeline" || fail.Status != events.StatusError {
		t.Fatalf("got %q\nwant %q", fail.Error, want)
	}
	ev.ModuleGlobs = &events.GlobCheck{Checked: 5}
	if _, fail := d.Expand(ev); fail != nil {
		t.Fatalf("every glob matched, got %s", fail.Error)
	}
}

// BenchmarkAffected500Modules1000Paths is the figure: the affected
// set of a 500-module layered graph for 1,000 changed paths (spread over 50
// modules, none shared), graph already parsed. "wildcards" adds 20 globs
// that start with ** (each one is tried on every path).
func BenchmarkAffected500Modules1000Paths(b *testing.B) {
	g := modtest.Layered(1, 10, 40, 100, 150, 200)
	rng := rand.New(rand.NewSource(2))
	var paths []string
	for i := range 1000 {
		m := 50 + rng.Intn(50)*9
		paths = append(paths, g.File(m, fmt.Sprintf("pkg%d/sub/file%d.go", i%7, i)))
	}
	wild := ""
	for i := range 20 {
		wild += fmt.Sprintf("  w%d: {paths: [\"**/gen%d/*.proto\"], depends: [%s]}\n", i, i, g.Names[i])
	}
	for _, tc := range []struct{ name, text string }{{"folders", g.Pipeline()}, {"folders+wildcards", g.Pipeline() + wild}} {
		pl, err := ParsePipeline(".jetci.yml", []byte(tc.text))
		if err != nil {
			b.Fatal(err)
		}
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			var n int
			for b.Loop() {
				mods, shared := pl.Graph.Affected(paths)
				if shared != "" {
					b.Fatal(shared)
				}
				n = len(mods)
			}
			b.ReportMetric(float64(n), "modules")
		})
	}
}

// BenchmarkParse500Modules is the cost of reading the pipeline file of a
// 500-module graph, paid once per commit.
func BenchmarkParse500Modules(b *testing.B) {
	text := []byte(modtest.Layered(1, 10, 40, 100, 150, 200).Pipeline())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParsePipeline(".jetci.yml", text); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(text)), "bytes")
}

// TestExpandJobNamedInRepoAndModules: a re-check (or a culprit search's run)
// of a repo-wide job that shares its name with the modules' jobs runs that
// job alone; naming a job only modules have still runs it in every module.
// A module template's reports: are templated like its artifacts.
func TestExpandJobNamedInRepoAndModules(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Arch = []string{"amd64"}
	d, err := New(cfg, nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	pipeline := "modules:\n  a: {paths: [a]}\n  b: {paths: [b]}\n" +
		"module_jobs:\n  test: {steps: x, reports: [\"${module_dir}/out/*.xml\"]}\n  vet: {steps: y}\n" +
		"jobs:\n  test: {steps: z}\n"
	for _, tt := range []struct{ only, want string }{
		{"test", "test"},
		{"vet", "a/vet b/vet"},
	} {
		ev := commit(pipeline)
		ev.Class, ev.TriggerID, ev.OnlyJob = events.ClassUser, "t-"+tt.only, tt.only
		jobs, fail := d.Expand(ev)
		if fail != nil {
			t.Fatal(fail.Error)
		}
		var got []string
		for _, j := range jobs {
			got = append(got, j.QualifiedJob())
		}
		sort.Strings(got)
		if strings.Join(got, " ") != tt.want {
			t.Errorf("re-check of %q: %v, want %s", tt.only, got, tt.want)
		}
	}
	ev := commit(pipeline)
	jobs, fail := d.Expand(ev)
	if fail != nil {
		t.Fatal(fail.Error)
	}
	for _, j := range jobs {
		if j.Module == "a" && j.Job == "test" && (len(j.Reports) != 1 || j.Reports[0] != "a/out/*.xml") {
			t.Errorf("a/test reports %v, want [a/out/*.xml]", j.Reports)
		}
	}
}
