package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/internal/modtest"
	"github.com/jetci/jetci/reporter"
)

// TestModulesAffectedSet runs jetci up (observer, dispatcher, reporter; no
// runners, so jobs stay queued) on a generated repository of 510 modules in
// five layers, and checks which module jobs each commit queued, per arch,
// against a breadth-first search over the generator's graph: a leaf change
// checks one module, a core change exactly its transitive dependents, a
// shared file and a new branch everything; a dead glob, a cycle and an
// unknown dependency are error results quoting the pipeline file.
func TestModulesAffectedSet(t *testing.T) {
	g := modtest.Layered(11, 5, 45, 100, 160, 200)
	if len(g.Names) < 500 {
		t.Fatalf("%d modules", len(g.Names))
	}
	archs := []string{"amd64", "arm64"}
	repo := newGitRepo(t)
	files := g.Files()
	files[".jetci.yml"] = g.Pipeline(archs...)
	root := repo.Commit("all modules", files)

	natsAddr, httpAddr := reserveAddr(t), reserveAddr(t)
	args := []string{"up", "--data", t.TempDir(), "--nats-listen", natsAddr, "--http", httpAddr, "--poll", "50ms", "--runners", "0",
		"--arch", strings.Join(archs, ","), "--log-level", "warn", "--log-format", "json", "--repo", repo.Dir}
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	done := make(chan int, 1)
	go func() { done <- (&Main{Stdout: logs, Stderr: logs}).Run(ctx, args) }()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("jetci up exited %d:\n%s", code, logs.String())
		}
	})
	url := "nats://" + natsAddr

	// queued waits until the commit's records are exactly want (module/job
	// arch), or an error result.
	queued := func(commit string, want []string) []reporter.Record {
		t.Helper()
		var recs []reporter.Record
		brokertest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
			var err error
			if recs, err = resultsJSON(t, url, "--all", "--commit", commit); err != nil {
				return err
			}
			var got []string
			for _, r := range recs {
				got = append(got, r.Name()+" "+r.Arch)
			}
			sort.Strings(got)
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				return fmt.Errorf("commit %s (%s): %d records, want %d (first difference: %s)", commit[:8], repo.Git("log", "-1", "--format=%s", commit), len(got), len(want), firstDiff(got, want))
			}
			return nil
		})
		return recs
	}
	jobsOf := func(mods []string) []string {
		var out []string
		for _, m := range mods {
			for _, a := range archs {
				out = append(out, m+"/test "+a)
			}
		}
		sort.Strings(out)
		return out
	}
	all := jobsOf(g.Dependents(g.All()...))
	if len(all) != 2*len(g.Names) {
		t.Fatalf("%d jobs in all", len(all))
	}

	// The first commit has no parent: everything.
	recs := queued(root, all)
	for _, r := range recs {
		if r.Status != "queued" || r.Module == "" || r.Job != "test" {
			t.Fatalf("record %+v", r)
		}
	}
	checks := []struct {
		name    string
		changed []int
	}{
		{"a leaf", []int{g.Leaves()[0]}},
		{"a core module", []int{0}},
		{"another core module", []int{3}},
		{"two middle modules", []int{60, 170}},
	}
	leaf := g.Names[g.Leaves()[0]]
	leafRuns := 1 // the first commit
	for i, c := range checks {
		files := map[string]string{}
		for _, m := range c.changed {
			files[g.File(m, fmt.Sprintf("change%d.go", i))] = "x"
		}
		sha := repo.Commit(c.name, files)
		want := g.Dependents(c.changed...)
		queued(sha, jobsOf(want))
		if slices.Contains(want, leaf) {
			leafRuns++
		}
		t.Logf("%s: %d modules checked, as the reference says", c.name, len(want))
		if c.name == "a leaf" && len(want) != 1 {
			t.Fatalf("a leaf change checks %d modules", len(want))
		}
	}

	// The module column reads as module/job in the table, and --module filters.
	if recs, err := resultsJSON(t, url, "--all", "--module", leaf); err != nil || len(recs) != 2*leafRuns {
		t.Fatalf("--module %s: %d records, %v; want %d commits on 2 archs", leaf, len(recs), err, leafRuns)
	}

	// A file outside every module: everything.
	queued(repo.Commit("docs", map[string]string{g.Shared: "changed\n"}), all)
	// A new branch: its head's changed paths are relative to a commit never
	// checked there.
	// (The branch is made at its first commit, so that no poll sees it
	// before.)
	repo.Git("checkout", "-q", "--detach")
	topic := repo.Commit("leaf on topic", map[string]string{g.File(g.Leaves()[1], "t.go"): "x"})
	repo.Git("checkout", "-q", "-b", "topic")
	queued(topic, all)
	queued(repo.Commit("leaf again on topic", map[string]string{g.File(g.Leaves()[1], "t.go"): "y"}), jobsOf([]string{g.Names[g.Leaves()[1]]}))
	repo.Git("checkout", "-q", "main")

	// The module grid: module × branch × arch.
	// The grid is paged by rows: read every page.
	var grid reporter.ModuleGrid
	var resp *http.Response
	var err error
	for after := ""; ; {
		resp, err = http.Get("http://" + httpAddr + "/api/v1/modules?repo=proj&limit=200&after=" + after)
		if err != nil {
			t.Fatal(err)
		}
		var page struct {
			reporter.ModuleGrid
			Next string `json:"next"`
		}
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		grid.Columns, grid.Rows = page.Columns, append(grid.Rows, page.Rows...)
		if err != nil || page.Next == "" {
			break
		}
		after = page.Next
	}
	if err != nil || resp.StatusCode != 200 || len(grid.Rows) != len(g.Names) || len(grid.Columns) != 4 ||
		grid.Columns[3] != (reporter.ModuleColumn{Branch: "topic", Arch: "arm64"}) {
		t.Fatalf("GET /api/v1/modules: %d %v: %d rows, columns %v", resp.StatusCode, err, len(grid.Rows), grid.Columns)
	}
	for _, row := range grid.Rows {
		if len(row.Cells) != 4 || row.Job != "test" {
			t.Fatalf("module %s: %d cells, want main and topic on both archs", row.Module, len(row.Cells))
		}
	}
	page, err := http.Get("http://" + httpAddr + "/modules?repo=proj")
	if err != nil {
		t.Fatal(err)
	}
	html, _ := io.ReadAll(page.Body)
	page.Body.Close()
	// The page shows the grid a page of rows at a time, and says of how many.
	if want := fmt.Sprintf("of %d.", len(g.Names)); page.StatusCode != 200 || strings.Count(string(html), "<tr data-module=") != reporter.ModulesPageRows ||
		!strings.Contains(string(html), want) {
		t.Fatalf("GET /modules: %d, %d module rows, want %d and %q", page.StatusCode, strings.Count(string(html), "<tr data-module="), reporter.ModulesPageRows, want)
	}

	over, err := http.Get("http://" + httpAddr + "/")
	if err != nil {
		t.Fatal(err)
	}
	html, _ = io.ReadAll(over.Body)
	over.Body.Close()
	// No runner serves these jobs: the chip counts what needs attention.
	if want := fmt.Sprintf("%d without runner</a>", 2*len(g.Names)); !strings.Contains(string(html), `href="/modules?branch=main&amp;repo=proj"`) || !strings.Contains(string(html), want) {
		t.Fatalf("GET /: no modules cell %q in\n%.2000s", want, html)
	}

	// Errors quote the pipeline file. A module whose only folder is deleted:
	gone := g.Leaves()[2]
	if err := os.RemoveAll(filepath.Join(repo.Dir, g.Dir(gone))); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(files[".jetci.yml"], "\n")
	lineOf := func(text string) int {
		for i, l := range lines {
			if strings.Contains(l, text) {
				return i + 1
			}
		}
		t.Fatalf("no line with %q", text)
		return 0
	}
	pipelineError := func(sha, want string) {
		t.Helper()
		brokertest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
			recs, err := resultsJSON(t, url, "--all", "--commit", sha)
			if err != nil {
				return err
			}
			if len(recs) != 1 || recs[0].Job != "pipeline" || recs[0].Status != "error" {
				return fmt.Errorf("commit %s: %d records, want one pipeline error", sha[:8], len(recs))
			}
			if !strings.Contains(recs[0].Error, want) {
				t.Fatalf("error %q, want %q", recs[0].Error, want)
			}
			return nil
		})
	}
	deadLine := lineOf(`paths: ["` + g.Dir(gone) + `/**"]`)
	pipelineError(repo.Commit("delete a module's files", nil),
		fmt.Sprintf(".jetci.yml:%d: path glob %q of module %q matches no file at this commit\n%5d | %s", deadLine, g.Dir(gone)+"/**", g.Names[gone], deadLine, lines[deadLine-1]))

	// A cycle: core module 0 depends on one of its dependents.
	dependent := g.Dependents(0)[0]
	if dependent == g.Names[0] {
		dependent = g.Dependents(0)[1]
	}
	cyc := strings.Replace(files[".jetci.yml"], "  "+g.Names[0]+":\n    paths: [\""+g.Dir(0)+"/**\"]\n",
		"  "+g.Names[0]+":\n    paths: [\""+g.Dir(0)+"/**\"]\n    depends: ["+dependent+"]\n", 1)
	restored := map[string]string{g.File(gone, "src.txt"): "back\n", ".jetci.yml": cyc}
	sha := repo.Commit("a cycle", restored)
	pipelineError(sha, "modules depend on each other in a cycle: "+g.Names[0]+" → "+dependent)
	recs, _ = resultsJSON(t, url, "--all", "--commit", sha)
	var n int
	var quoted string
	head, _, _ := strings.Cut(recs[0].Error, "\n")
	if _, err := fmt.Sscanf(head, ".jetci.yml:%d:", &n); err != nil || !strings.HasSuffix(head, " → "+g.Names[0]) {
		t.Fatalf("cycle error %q", recs[0].Error)
	}
	quoted = fmt.Sprintf("%5d | %s", n, strings.Split(cyc, "\n")[n-1])
	if !strings.HasSuffix(recs[0].Error, quoted) || !strings.Contains(quoted, g.Names[0]) {
		t.Fatalf("cycle error %q does not quote its line %q", recs[0].Error, quoted)
	}

	// An unknown dependency.
	unknown := strings.Replace(files[".jetci.yml"], "      - "+g.Names[0]+"\n", "      - no-such-module\n", 1)
	unkLine := strings.Count(unknown[:strings.Index(unknown, "      - no-such-module")], "\n") + 1
	pipelineError(repo.Commit("an unknown dependency", map[string]string{".jetci.yml": unknown}),
		fmt.Sprintf(".jetci.yml:%d: module %q depends on \"no-such-module\", which is not a module of this file\n%5d |       - no-such-module", unkLine, moduleAt(unknown, unkLine), unkLine))
}

// moduleAt names the module whose entry holds line n of a generated pipeline.
func moduleAt(text string, n int) string {
	lines := strings.Split(text, "\n")
	for i := n - 1; i >= 0; i-- {
		if l := lines[i]; strings.HasPrefix(l, "  ") && !strings.HasPrefix(l, "   ") && strings.HasSuffix(l, ":") {
			return strings.TrimSuffix(strings.TrimSpace(l), ":")
		}
	}
	return ""
}

func firstDiff(got, want []string) string {
	for i := 0; i < len(got) || i < len(want); i++ {
		switch {
		case i >= len(got):
			return "missing " + want[i]
		case i >= len(want):
			return "extra " + got[i]
		case got[i] != want[i]:
			return fmt.Sprintf("got %s, want %s", got[i], want[i])
		}
	}
	return "none"
}

// TestCoalesceKeepsModulesTheNewCommitDoesNotCheck: on a coalesced branch a
// new commit supersedes only the waiting jobs it runs again; a module it
// does not check keeps its older job.
func TestCoalesceKeepsModulesTheNewCommitDoesNotCheck(t *testing.T) {
	repo := newGitRepo(t)
	pipeline := "module_jobs: {test: {steps: \"true\"}}\nmodules:\n  a: {paths: [a]}\n  b: {paths: [b]}\n"
	repo.Commit("root", map[string]string{".jetci.yml": pipeline, "a/x": "0", "b/x": "0"})
	url, _ := startUpWith(t, t.TempDir(), []string{"--runners", "0", "--coalesce", "proj:main"}, repo.Dir)
	all := func() ([]reporter.Record, error) { return resultsJSON(t, url, "--all", "--branch", "main") }
	one := repo.Commit("a1", map[string]string{"a/x": "1"})
	waitStatus(t, all, one, "queued")
	two := repo.Commit("b1", map[string]string{"b/x": "1"})
	recs := waitStatus(t, all, two, "queued")
	if len(recs) != 1 || recs[0].Module != "b" {
		t.Fatalf("b1 queued %+v, want b's job only", recs)
	}
	three := repo.Commit("a2", map[string]string{"a/x": "2"})
	waitStatus(t, all, three, "queued")
	recs = waitStatus(t, all, one, "cancelled")
	if recs[0].Module != "a" || recs[0].Error != "superseded by "+events.Short(three) {
		t.Fatalf("a1: %+v", recs[0])
	}
	// b1's job is still waiting: a2 does not check b.
	if recs = waitStatus(t, all, two, "queued"); len(recs) != 1 {
		t.Fatalf("b1: %+v", recs)
	}
}
