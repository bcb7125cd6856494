package observer

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing/object"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

func headTree(t testing.TB, dir string) *object.Tree {
	t.Helper()
	r, err := git.PlainOpen(dir)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := r.Head()
	if err != nil {
		t.Fatal(err)
	}
	c, err := r.CommitObject(ref.Hash())
	if err != nil {
		t.Fatal(err)
	}
	tree, err := c.Tree()
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

func TestModuleGlobs(t *testing.T) {
	repo := newGitRepo(t)
	repo.commit("tree", map[string]string{
		"core/a.go": "x", "core/sub/b.go": "x", "net/n.c": "x", "apps/app/main.go": "x", "proto/app/a.proto": "x",
		"tools": "a file", "deep/x/y/z.proto": "x",
	})
	tree := headTree(t, repo.dir)
	pipeline := `modules:
  core: {paths: [core/**, core]}
  net:  {paths: ["net/*.c", "net/*.go"]}
  app:  {paths: [apps/app/**, "proto/app/*.proto", "proto/other/*.proto"]}
  tool: {paths: tools}
  gone: {paths: [gone/**]}
  any:  {paths: ["**/*.proto", "**/*.rs", "deep/**/z.proto", "core/*/b.go", "core/*/c.go"]}
  file: {paths: [tools/x]}
`
	c := moduleGlobs(pipeline, tree)
	want := []string{"**/*.rs", "core/*/c.go", "gone/**", "net/*.go", "proto/other/*.proto", "tools/x"}
	if c == nil || c.Error != "" || c.Checked != 15 || !slices.Equal(c.Dead, want) {
		t.Fatalf("got %+v, want dead %q of 15", c, want)
	}
	for _, text := range []string{"jobs: {t: {steps: x}}\n", "modules: [a, b]\n", "{", ""} {
		if c := moduleGlobs(text, tree); c != nil {
			t.Errorf("%q: got %+v, want no check", text, c)
		}
	}
}

// TestNewBranchAndGlobsInTheEvent: the event of a new branch's head says its
// changed paths are relative to nothing checked there; later commits do not.
func TestNewBranchAndGlobsInTheEvent(t *testing.T) {
	s := brokertest.Run(t)
	c := collect(t, s)
	repo := newGitRepo(t)
	o := newObserver(t, s, testConfig(t.TempDir(), Repo{Name: "proj", URL: repo.dir}))
	pipeline := ".jetci.yml"
	repo.commit("root", map[string]string{pipeline: "module_jobs: {t: {steps: x}}\nmodules:\n  a: {paths: [a]}\n  b: {paths: [b]}\n", "a/x": "1"})
	e := pollAndWait(t, s, o, c, "proj", 1)[0]
	if e.NewBranch || len(e.Parents) != 0 || e.ModuleGlobs == nil || !slices.Equal(e.ModuleGlobs.Dead, []string{"b"}) {
		t.Fatalf("root: new branch %v parents %v globs %+v", e.NewBranch, e.Parents, e.ModuleGlobs)
	}
	repo.commit("two", map[string]string{"b/y": "1"})
	repo.commit("three", map[string]string{"b/y": "2"})
	for _, e := range pollAndWait(t, s, o, c, "proj", 2) {
		if e.NewBranch || e.ModuleGlobs == nil || len(e.ModuleGlobs.Dead) != 0 {
			t.Fatalf("%s: new branch %v globs %+v", e.Subject, e.NewBranch, e.ModuleGlobs)
		}
	}
	repo.git("checkout", "-q", "-b", "topic")
	repo.commit("four", map[string]string{"b/y": "3"})
	repo.commit("five", map[string]string{"b/y": "4"})
	// Both of the new branch's own commits: the first is new on the branch, the
	// second's parent was just checked there.
	evs := pollAndWait(t, s, o, c, "proj", 2)
	if e = evs[0]; e.Branch != "topic" || e.Subject != "four" || !e.NewBranch {
		t.Fatalf("new branch's first commit: %s %s new branch %v", e.Branch, e.Subject, e.NewBranch)
	}
	if e = evs[1]; e.Branch != "topic" || e.Subject != "five" || e.NewBranch {
		t.Fatalf("new branch's second commit: %s %s new branch %v", e.Branch, e.Subject, e.NewBranch)
	}
	repo.commit("six", map[string]string{"b/y": "5"})
	if e = pollAndWait(t, s, o, c, "proj", 1)[0]; e.NewBranch {
		t.Fatalf("second commit seen on topic is marked new branch")
	}
	// A rebase onto main: topic gets main's seven, whose parent was never
	// checked on topic, then its own commits again on top of it.
	repo.git("checkout", "-q", "main")
	repo.commit("seven", map[string]string{"a/z": "1"})
	repo.git("checkout", "-q", "topic")
	repo.git("-c", "core.editor=true", "rebase", "-q", "main")
	got := pollAndWait(t, s, o, c, "proj", 5)
	var flags []string
	for _, e := range got {
		flags = append(flags, fmt.Sprintf("%s:%s:%v", e.Branch, e.Subject, e.NewBranch))
	}
	if strings.Join(flags, " ") != "main:seven:false topic:seven:true topic:four:false topic:five:false topic:six:false" {
		t.Fatalf("after a rebase: %s", flags)
	}
}

// BenchmarkModuleGlobs10kFiles checks 500 module globs ("<dir>/**") and a few
// wildcard ones against a 10,000-file tree, as the observer does per commit.
// The tree is opened fresh each time: the observer reads a new commit's tree.
func BenchmarkModuleGlobs10kFiles(b *testing.B) {
	repo := newGitRepo(b)
	var pl strings.Builder
	pl.WriteString("module_jobs: {t: {steps: x}}\nmodules:\n")
	for m := range 500 {
		dir := fmt.Sprintf("mods/l%d/m%03d", m%5, m)
		for f := range 20 {
			p := filepath.Join(repo.dir, dir, fmt.Sprintf("pkg%d/f%d.go", f%4, f))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				b.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(p), 0o644); err != nil {
				b.Fatal(err)
			}
		}
		fmt.Fprintf(&pl, "  m%03d: {paths: [\"%s/**\"]}\n", m, dir)
	}
	for _, tc := range []struct{ name, extra string }{
		{"500-folders", ""},
		{"500-folders+wildcards", "  w: {paths: [\"mods/*/m499/pkg3/*.go\", \"**/f19.go\", \"mods/**/pkg2\"]}\n"},
		{"500-folders+3-dead-wildcards", "  w: {paths: [\"**/*.proto\", \"mods/*/*/*.rs\", \"mods/**/pkg9\"]}\n"},
	} {
		text := pl.String() + tc.extra
		if err := os.WriteFile(filepath.Join(repo.dir, ".jetci.yml"), []byte(text), 0o644); err != nil {
			b.Fatal(err)
		}
		repo.git("add", "-A")
		repo.git("-c", "gc.auto=0", "commit", "-q", "-m", tc.name)
		repo.git("repack", "-adq") // as in the observer's cache, which fetches packs
		tree := headTree(b, repo.dir)
		b.Run(tc.name, func(b *testing.B) {
			var c *events.GlobCheck
			for b.Loop() {
				c = moduleGlobs(text, tree)
				b.StopTimer()
				tree = headTree(b, repo.dir)
				b.StartTimer()
			}
			if c == nil || c.Error != "" || c.Checked < 500 {
				b.Fatalf("got %+v", c)
			}
			b.ReportMetric(float64(len(c.Dead)), "dead")
		})
	}
}
