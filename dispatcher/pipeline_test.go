package dispatcher

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jetci/jetci/events"
)

func TestParsePipelineGood(t *testing.T) {
	src := `# a full file
arch: [amd64, arm64]
pool: default
jobs:
  lint:
    steps: go vet ./...
  test:
    steps:
      - go build ./...
      - go test ./...
    arch: [amd64]
    timeout: 10m
    env: {GOFLAGS: -mod=mod, N: 3, ON: true, EMPTY: }
    artifacts: ["bin/*"]
    pool: big
`
	pl, err := ParsePipeline(".jetci.yml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	want := []Job{
		{Name: "lint", Steps: []string{"go vet ./..."}, Arch: []string{"amd64", "arm64"}, Pool: "default"},
		{Name: "test", Steps: []string{"go build ./...", "go test ./..."}, Arch: []string{"amd64"}, Pool: "big",
			Timeout: 10 * time.Minute, Env: map[string]string{"GOFLAGS": "-mod=mod", "N": "3", "ON": "true", "EMPTY": ""}, Artifacts: []string{"bin/*"}},
	}
	if !reflect.DeepEqual(pl.Jobs, want) {
		t.Fatalf("got %+v\nwant %+v", pl.Jobs, want)
	}
	// Minimal file: no arch, no pool.
	pl, err = ParsePipeline(".jetci.yml", []byte("jobs:\n  t:\n    steps: [\"make\"]\n"))
	if err != nil || len(pl.Jobs) != 1 || pl.Jobs[0].Arch != nil || pl.Jobs[0].Pool != "" {
		t.Fatalf("minimal: %+v, %v", pl, err)
	}
}

func TestParsePipelineBad(t *testing.T) {
	tests := []struct {
		name, src string
		line      int
		reason    string
	}{
		{"empty", "", 0, "empty"},
		{"only a comment", "# nothing\n", 0, "empty"},
		{"syntax", "jobs:\n  test:\n    steps: [a\n", 2, "invalid YAML"},
		{"tab indentation", "jobs:\n\ttest:\n", 2, "invalid YAML"},
		{"not a mapping", "- a\n- b\n", 1, "mapping"},
		{"no jobs", "arch: [amd64]\n", 1, "no jobs"},
		{"jobs empty", "jobs:\n", 1, "at least one"},
		{"jobs a list", "jobs:\n  - test\n", 2, "at least one"},
		{"unknown top key", "jobz:\n  t:\n    steps: x\n", 1, `unknown field "jobz"`},
		{"typo in job", "jobs:\n  test:\n    stesp: [true]\n", 3, `unknown field "stesp" in job "test"`},
		{"no steps", "jobs:\n  test:\n    arch: [amd64]\n", 2, "has no steps"},
		{"empty steps", "jobs:\n  test:\n    steps: []\n", 3, "has no steps"},
		{"empty step", "jobs:\n  test:\n    steps:\n      - make\n      - \"\"\n", 5, "empty"},
		{"steps a map", "jobs:\n  test:\n    steps: {a: b}\n", 3, "list of strings"},
		{"null step", "jobs:\n  test:\n    steps:\n      -\n", 4, "must be a string"},
		{"job not a map", "jobs:\n  test: make\n", 2, "must be a mapping"},
		{"bad job name", "jobs:\n  \"te st\":\n    steps: x\n", 2, "invalid job name"},
		{"duplicate job", "jobs:\n  t:\n    steps: x\n  t:\n    steps: y\n", 4, "given twice"},
		{"bad duration", "jobs:\n  t:\n    steps: x\n    timeout: soon\n", 4, "not a duration"},
		{"negative duration", "jobs:\n  t:\n    steps: x\n    timeout: -1m\n", 4, "out of range"},
		{"too long", "jobs:\n  t:\n    steps: x\n    timeout: 48h\n", 4, "out of range"},
		{"bad arch", "jobs:\n  t:\n    steps: x\n    arch: [amd64, \"x86 64\"]\n", 4, "invalid arch"},
		{"bad top arch", "arch: AMD64\njobs:\n  t:\n    steps: x\n", 1, "invalid arch"},
		{"bad pool", "pool: [a]\njobs:\n  t:\n    steps: x\n", 1, "want a name"},
		{"bad env name", "jobs:\n  t:\n    steps: x\n    env: {\"A-B\": 1}\n", 4, "not a valid variable"},
		{"env list", "jobs:\n  t:\n    steps: x\n    env: [a]\n", 4, "mapping"},
		{"env nested", "jobs:\n  t:\n    steps: x\n    env:\n      A: {b: c}\n", 5, "want a string"},
		{"alias step", "x: &a [1]\njobs:\n  t:\n    steps: *a\n", 1, "unknown field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParsePipeline(".jetci.yml", []byte(tt.src))
			var pe *PipelineError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v (%T), want a *PipelineError", err, err)
			}
			if pe.Line != tt.line || !strings.Contains(err.Error(), tt.reason) {
				t.Fatalf("got %q (line %d), want line %d and %q", err, pe.Line, tt.line, tt.reason)
			}
			if pe.Line > 0 && !strings.Contains(err.Error(), ".jetci.yml:") {
				t.Fatalf("error %q does not name the file and line", err)
			}
		})
	}
}

func TestPipelineErrorQuotesTheLine(t *testing.T) {
	_, err := ParsePipeline(".jetci.yml", []byte("jobs:\n  test:\n    stesp: [true]\n"))
	want := ".jetci.yml:3: unknown field \"stesp\" in job \"test\" (want steps, arch, pool, timeout, env, artifacts)\n    3 |     stesp: [true]"
	if err == nil || err.Error() != want {
		t.Fatalf("got\n%v\nwant\n%s", err, want)
	}
}

func FuzzParsePipeline(f *testing.F) {
	for _, s := range []string{
		"jobs:\n  test:\n    steps: [a, b]\n    timeout: 1m\n",
		"arch: [amd64]\njobs:\n  t:\n    steps: x\n    env: {A: 1}\n",
		"jobs:\n  t: {steps: [x], arch: arm64}\n", "- a", "{", "jobs: &a\n  t: *a\n", "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		pl, err := ParsePipeline(".jetci.yml", data)
		if err != nil {
			var pe *PipelineError
			if !errors.As(err, &pe) || pe.Line < 0 {
				t.Fatalf("error %v is not a *PipelineError with a line", err)
			}
			return
		}
		if len(pl.Jobs) == 0 {
			t.Fatal("no error and no jobs")
		}
		for _, j := range pl.Jobs {
			if len(j.Steps) == 0 {
				t.Fatalf("job %q without steps", j.Name)
			}
			for _, a := range j.Arch {
				if events.ValidName("arch", a) != nil {
					t.Fatalf("invalid arch %q accepted", a)
				}
			}
		}
	})
}

func TestDetect(t *testing.T) {
	tests := []struct {
		name  string
		probe events.Probe
		step  string
	}{
		{"python tests", events.Probe{Root: []string{"tests/", "README"}, Tests: []string{"test_a.py"}}, "python3 -m unittest discover -s tests -v"},
		{"tests without python", events.Probe{Root: []string{"tests/", "go.mod"}, Tests: []string{"a.txt"}}, "go test ./..."},
		{"a tests file is no folder", events.Probe{Root: []string{"tests"}, Tests: nil}, ""},
		{"go module", events.Probe{Root: []string{"go.mod", "main.go"}}, "go test ./..."},
		{"makefile test", events.Probe{Root: []string{"Makefile"}, Makefile: "all: build\n\ntest: all\n\tgo test\n"}, "make test"},
		{"makefile multi-target", events.Probe{Root: []string{"Makefile"}, Makefile: "check test: deps\n\t./run\n"}, "make test"},
		{"makefile double colon", events.Probe{Root: []string{"Makefile"}, Makefile: "test::\n\t./run\n"}, "make test"},
		{"makefile variable", events.Probe{Root: []string{"Makefile"}, Makefile: "test := 1\ntest = 2\ntest ::= 3\n"}, ""},
		{"makefile phony only", events.Probe{Root: []string{"Makefile"}, Makefile: ".PHONY: test\nbuild:\n\techo test: x\n"}, ""},
		{"makefile tests target", events.Probe{Root: []string{"Makefile"}, Makefile: "tests:\n\tx\n"}, ""},
		{"nothing", events.Probe{Root: []string{"README"}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pl, err := Detect(tt.probe)
			if tt.step == "" {
				if !errors.Is(err, ErrNoPipeline) {
					t.Fatalf("got %+v, %v; want ErrNoPipeline", pl, err)
				}
				return
			}
			if err != nil || len(pl.Jobs) != 1 || pl.Jobs[0].Name != "test" || pl.Jobs[0].Steps[0] != tt.step {
				t.Fatalf("got %+v, %v; want one job test running %q", pl, err, tt.step)
			}
		})
	}
}
