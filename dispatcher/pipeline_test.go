package dispatcher

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

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
  deploy:
    steps: ./deploy.sh
    secrets: [DEPLOY_TOKEN, NPM_TOKEN]
    limits: {cpu: 10m, memory: 2GiB, processes: 256}
  contained:
    steps: make
    image: registry.example.com/team/build:1.4
    network: none
`
	pl, err := ParsePipeline(".jetci.yml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	want := []Job{
		{Name: "lint", Steps: []string{"go vet ./..."}, Arch: []string{"amd64", "arm64"}, Pool: "default"},
		{Name: "test", Steps: []string{"go build ./...", "go test ./..."}, Arch: []string{"amd64"}, Pool: "big",
			Timeout: 10 * time.Minute, Env: map[string]string{"GOFLAGS": "-mod=mod", "N": "3", "ON": "true", "EMPTY": ""}, Artifacts: []string{"bin/*"}},
		{Name: "deploy", Steps: []string{"./deploy.sh"}, Arch: []string{"amd64", "arm64"}, Pool: "default",
			Secrets: []string{"DEPLOY_TOKEN", "NPM_TOKEN"}, Limits: events.Limits{CPUMs: 600000, MemoryBytes: 2 << 30, Processes: 256}},
		{Name: "contained", Steps: []string{"make"}, Arch: []string{"amd64", "arm64"}, Pool: "default",
			Image: "registry.example.com/team/build:1.4", Network: "none"},
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
		{"syntax", "jobs:\n  test:\n    steps: [a\n", 3, "invalid YAML"},
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
		{"bad image", "jobs:\n  t:\n    steps: x\n    image: \"Debian 12; rm -rf\"\n", 4, "image of job"},
		{"image a list", "jobs:\n  t:\n    steps: x\n    image: [a]\n", 4, "image of job"},
		{"bad network", "jobs:\n  t:\n    steps: x\n    network: host\n", 4, "want none or default"},
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
		{"alias steps", "jobs:\n  t:\n    steps: *a\n", 3, "unknown anchor 'a'"},
		{"arch twice", "jobs:\n  t:\n    steps: x\n    arch:\n      - amd64\n      - amd64\n", 6, `"amd64" is listed twice`},
		{"bad job arch type", "jobs:\n  t:\n    steps: x\n    arch: {a: b}\n", 4, "list of strings"},
		{"invalid UTF-8", "jobs:\n  t:\n    steps: \xff\n", 3, "UTF-8"},
		{"control character", "jobs:\n  t:\n    steps: a\x01b\n", 3, "control characters"},
		{"CRLF lines", "jobs:\r\n  t:\r\n    stesp: x\r\n", 3, `unknown field "stesp"`},
		{"CR lines", "jobs:\r  t:\r    steps: x\r    pool: Big\r", 4, "invalid pool"},
		{"NEL counts as a line", "jobs:\n  t:\u0085    steps: x\n    pool: Big\n", 4, "invalid pool"},
		{"job name too long", "jobs:\n  " + strings.Repeat("a", 65) + ":\n    steps: x\n", 2, "invalid job name"},
		{"job name a list", "jobs:\n  [a]: {steps: x}\n", 2, "not a plain name"},
		{"timeout a list", "jobs:\n  t:\n    steps: x\n    timeout: [1m]\n", 4, "want a duration"},
		{"zero timeout", "jobs:\n  t:\n    steps: x\n    timeout: 0s\n", 4, "out of range"},
		{"artifacts a map", "jobs:\n  t:\n    steps: x\n    artifacts: {a: b}\n", 4, "artifacts"},
		{"empty top arch", "arch: []\njobs:\n  t:\n    steps: x\n", 1, "the list is empty"},
		{"secret with a value", "jobs:\n  t:\n    steps: x\n    secrets: {TOKEN: abc}\n", 4, "names only"},
		{"bad secret name", "jobs:\n  t:\n    steps: x\n    secrets: [A-B]\n", 4, "not a valid variable"},
		{"secret twice", "jobs:\n  t:\n    steps: x\n    secrets:\n      - A\n      - A\n", 6, "listed twice"},
		{"jetci secret", "jobs:\n  t:\n    steps: x\n    secrets: JETCI_COMMIT\n", 4, "set by jetci"},
		{"secret also in env", "jobs:\n  t:\n    steps: x\n    env: {A: 1}\n    secrets: [A]\n", 2, "both in env and in secrets"},
		{"limits a list", "jobs:\n  t:\n    steps: x\n    limits: [1]\n", 4, "want a mapping"},
		{"unknown limit", "jobs:\n  t:\n    steps: x\n    limits: {disk: 1G}\n", 4, `unknown field "disk" in limits`},
		{"bad cpu", "jobs:\n  t:\n    steps: x\n    limits: {cpu: lots}\n", 4, "cpu \"lots\""},
		{"tiny memory", "jobs:\n  t:\n    steps: x\n    limits: {memory: 10K}\n", 4, "at least 1MiB"},
		{"zero processes", "jobs:\n  t:\n    steps: x\n    limits:\n      processes: 0\n", 5, "processes \"0\""},
		{"null limit", "jobs:\n  t:\n    steps: x\n    limits: {cpu: }\n", 4, "wants a value"},
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

// yaml.v3 numbers the lines of scanner and parser errors differently and leaves
// out line 1; each error must still point at the line it is about.
func TestParsePipelineSyntaxErrorLines(t *testing.T) {
	tests := []struct {
		src  string
		line int
	}{
		{"jobs:\n  t:\n    steps: ]\n", 3},                             // parser error, counted from 0 by yaml.v3
		{"jobs:\n  t:\n    steps: x\n  - y\n", 2},                      // parser error: the mapping that wanted a key
		{"- a\n- b\nc: 1\n", 3},                                        // parser error
		{"]\n", 1},                                                     // parser error on line 1: no line in the message
		{"jobs: x: y\n", 1},                                            // scanner error on line 1: no line in the message
		{"jobs:\n  t:\n    steps: x\n     y: z\n", 4},                  // scanner error
		{"jobs:\n  t:\n    steps: @x\n", 3},                            // scanner error
		{"jobs:\n  t:\n    steps: \"x\\q\"\n", 3},                      // scanner error
		{"jobs:\n  t:\n    steps: x\n\tpool: big\n", 4},                // tab after a plain scalar
		{"jobs:\n  t:\n    steps: x\n    env: {A: 1\n  u:\n", 4},       // unclosed flow mapping
		{"jobs:\n  t:\n    steps: [x, *nope]\n", 3},                    // unknown anchor
		{"jobs:\n  t:\n    steps: x\n    pool: a\x00\n", 4},            // control character
		{"jobs:\r\n  t:\r\n    steps: x\r\n    pool: \xc3\x28\r\n", 4}, // invalid UTF-8
	}
	for _, tt := range tests {
		_, err := ParsePipeline(".jetci.yml", []byte(tt.src))
		var pe *PipelineError
		if !errors.As(err, &pe) || pe.Line != tt.line || !strings.Contains(pe.Reason, "invalid YAML") {
			t.Errorf("%q: got %v, want invalid YAML on line %d", tt.src, err, tt.line)
		}
	}
}

func TestPipelineErrorQuotesTheLine(t *testing.T) {
	_, err := ParsePipeline(".jetci.yml", []byte("jobs:\n  test:\n    stesp: [true]\n"))
	want := ".jetci.yml:3: unknown field \"stesp\" in job \"test\" (want steps, arch, pool, timeout, env, artifacts, reports, retry, secrets, limits, image, network)\n    3 |     stesp: [true]"
	if err == nil || err.Error() != want {
		t.Fatalf("got\n%v\nwant\n%s", err, want)
	}
}

func TestPipelineErrorQuotesSafely(t *testing.T) {
	// The quoted line loses its CR, control characters become U+FFFD and a long
	// line is cut, so the message is safe on a terminal and a web page.
	_, err := ParsePipeline(".jetci.yml", []byte("jobs:\r\n  t:\r\n    stesp: x # \x1b[31m"+strings.Repeat("é", 200)+"\r\n"))
	var pe *PipelineError
	if !errors.As(err, &pe) || pe.Line != 3 {
		t.Fatalf("got %v, want an error on line 3", err)
	}
	if strings.ContainsAny(pe.Text, "\r\x1b") || !utf8.ValidString(pe.Text) || len(pe.Text) > maxQuote+len(" …") ||
		!strings.HasPrefix(pe.Text, "    stesp: x # \uFFFD[31m") || !strings.HasSuffix(pe.Text, "é …") {
		t.Fatalf("quoted text %q", pe.Text)
	}
}

func FuzzParsePipeline(f *testing.F) {
	for _, s := range []string{
		"jobs:\n  test:\n    steps: [a, b]\n    timeout: 1m\n",
		"arch: [amd64]\njobs:\n  t:\n    steps: x\n    env: {A: 1}\n",
		"jobs:\n  t: {steps: [x], arch: arm64}\n", "- a", "{", "jobs: &a\n  t: *a\n", "",
		"arch: [amd64, arm64]\npool: big\njobs:\n  lint:\n    steps: go vet ./...\n  test:\n    steps:\n      - go test ./...\n" +
			"    arch: [amd64]\n    timeout: 10m\n    env: {GOFLAGS: -mod=mod, N: 3}\n    artifacts: [\"bin/*\"]\n    pool: small\n",
		"jobs:\r\n  t:\r    steps: x\u0085    pool: P\u2028", "jobs:\n  t:\n    steps: \xff\x01\n", "jobs:\n  t:\n    steps: *nope\n",
		"jobs:\n  t:\n    steps: |\n      a\n      b\n    env:\n      <<: {A: 1}\n", "--- \njobs: {t: {steps: x}}\n...\n---\nx: 1\n",
		"\ufeffjobs:\n  t:\n    steps: !!binary aGVsbG8=\n    timeout: !!int 5\n",
		"module_jobs: {t: {steps: \"make -C ${module_dir}\"}}\nmodules:\n  a: {paths: [a/**], depends: [b]}\n  b: {paths: [\"b/*.go\", b], dir: b}\n",
		"modules:\n  a: {paths: a, depends: [b], jobs: {t: {steps: x}}}\n  b: {paths: b, depends: a, jobs: {t: {steps: x}}}\n",
		"module_jobs: {t: {steps: x}}\nmodules:\n  a: {paths: [\"**/*.proto\", \"x/[\"]}\njobs: {u: {steps: y}}\n",
		"jobs:\n  t:\n    steps: x\n    secrets: [A, B]\n    limits: {cpu: 1m, memory: 64MiB, processes: 8}\n",
		"jobs:\n  t:\n    steps: x\n    secrets: A\n    env: {A: 1}\n    limits: {memory: 99999999999T}\n",
		"jobs:\n  t:\n    steps: x\n    image: localhost/jetci-busybox:1@sha256:" + strings.Repeat("a", 64) + "\n    network: none\n",
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
			if !utf8.ValidString(pe.Text) || strings.ContainsFunc(pe.Text, func(r rune) bool { return r != '\t' && unicode.IsControl(r) }) {
				t.Fatalf("unsafe quoted text %q", pe.Text)
			}
			return
		}
		if len(pl.Jobs) == 0 && pl.Graph == nil {
			t.Fatal("no error and no jobs")
		}
		if pl.Graph != nil {
			checkGraph(t, pl.Graph)
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
			for _, s := range j.Secrets {
				if _, inEnv := j.Env[s]; inEnv || !envNameRE.MatchString(s) {
					t.Fatalf("job %q: secret %q accepted", j.Name, s)
				}
			}
			if l := j.Limits; l.CPUMs < 0 || l.MemoryBytes < 0 || l.Processes < 0 {
				t.Fatalf("job %q: limits %+v", j.Name, l)
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
		{"makefile no space before colon", events.Probe{Root: []string{"Makefile"}, Makefile: "test:\n"}, "make test"},
		{"makefile spaces around colon", events.Probe{Root: []string{"Makefile"}, Makefile: "test : build ; ./run\n"}, "make test"},
		{"makefile CRLF", events.Probe{Root: []string{"Makefile"}, Makefile: "all:\r\n\ttrue\r\ntest: all\r\n"}, "make test"},
		{"makefile continued targets", events.Probe{Root: []string{"Makefile"}, Makefile: "check \\\n  test: deps\n"}, "make test"},
		{"makefile variable no spaces", events.Probe{Root: []string{"Makefile"}, Makefile: "test:=1\ntest?=2\ntest+=3\ntest:::=4\n"}, ""},
		{"makefile comment", events.Probe{Root: []string{"Makefile"}, Makefile: "# test: run the tests\nall: # test:\n"}, ""},
		{"makefile recipe line", events.Probe{Root: []string{"Makefile"}, Makefile: "all:\n\ttest: x\n"}, ""},
		{"makefile test as a prerequisite", events.Probe{Root: []string{"Makefile"}, Makefile: "all: test\n"}, ""},
		{"python first", events.Probe{Root: []string{"tests/", "go.mod", "Makefile"}, Tests: []string{"helpers/", "test_x.py"}, Makefile: "test:\n"}, "python3 -m unittest discover -s tests -v"},
		{"go before make", events.Probe{Root: []string{"go.mod", "Makefile"}, Makefile: "test:\n"}, "go test ./..."},
		{"makefile not at the root", events.Probe{Root: []string{"src/"}, Makefile: ""}, ""},
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

// checkGraph checks what a parsed module graph promises: every module has
// jobs with steps, depends only on modules of the file, and no cycle; a
// change to a module's folder affects it and only modules that depend on it.
func checkGraph(t *testing.T, g *ModuleGraph) {
	mods := g.Modules()
	index := map[string]int{}
	for i, m := range mods {
		index[m.Name] = i
	}
	state := make([]int, len(mods))
	var visit func(i int)
	visit = func(i int) {
		if state[i] == 1 {
			t.Fatalf("cycle through %q accepted", mods[i].Name)
		}
		if state[i] == 2 {
			return
		}
		state[i] = 1
		for _, d := range mods[i].Depends {
			j, ok := index[d]
			if !ok {
				t.Fatalf("unknown dependency %q accepted", d)
			}
			visit(j)
		}
		state[i] = 2
	}
	for i, m := range mods {
		visit(i)
		if len(m.Jobs) == 0 || len(m.Paths) == 0 {
			t.Fatalf("module %q with no jobs or no paths", m.Name)
		}
		for _, j := range m.Jobs {
			if len(j.Steps) == 0 {
				t.Fatalf("module job %s/%s without steps", m.Name, j.Name)
			}
		}
	}
}
