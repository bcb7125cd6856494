package reporter

import (
	"testing"
	"time"

	"github.com/jetci/jetci/events"
)

func TestModuleGrid(t *testing.T) {
	v := testView(t)
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	add := func(branch, commit, module, arch string, st events.Status, at time.Duration) {
		id := events.JobID("proj", branch, commit, events.QualifiedJob(module, "test"), arch)
		putRecords(t, v, &Record{JobID: id, Repo: "proj", Branch: branch, Commit: commit, Job: "test", Module: module, Arch: arch,
			Status: st, QueuedAt: t0.Add(at)})
	}
	add("main", "c1", "core", "amd64", events.StatusPassed, 0)
	add("main", "c1", "net", "amd64", events.StatusFailed, 0)
	add("main", "c2", "net", "amd64", events.StatusPassed, time.Minute) // net fixed at c2
	add("main", "c2", "app", "amd64", events.StatusFailed, time.Minute)
	add("dev", "c3", "core", "arm64", events.StatusQueued, 2*time.Minute)
	add("main", "c1", "", "amd64", events.StatusPassed, 0) // a job of the whole repo: not a module row

	g := v.Modules("proj", "")
	if g == nil || len(g.Columns) != 2 || g.Columns[0] != (ModuleColumn{"main", "amd64"}) || g.Columns[1] != (ModuleColumn{"dev", "arm64"}) {
		t.Fatalf("columns %+v", g)
	}
	var order []string
	for _, r := range g.Rows {
		order = append(order, r.Module+":"+string(r.Status))
	}
	// core waits on dev for an arm64 runner no one runs: no-runner, not queued.
	if got := order; len(got) != 3 || got[0] != "app:failed" || got[1] != "core:no-runner" || got[2] != "net:passed" {
		t.Fatalf("rows %v: want failing first, then by name, net's latest check (passed) counting", got)
	}
	if c, ok := g.Rows[2].Cell(ModuleColumn{"main", "amd64"}); !ok || c.Commit != "c2" {
		t.Fatalf("net on main: %+v", c)
	}
	if g := v.Modules("proj", "dev"); g == nil || len(g.Rows) != 1 || len(g.Columns) != 1 {
		t.Fatalf("dev only: %+v", g)
	}
	repos := v.Repos("proj")
	if len(repos) != 1 || !repos[0].Modules || len(repos[0].Columns) != 1 {
		t.Fatalf("overview: %+v", repos)
	}
	for _, b := range repos[0].Branches {
		if b.Branch == "main" && (b.Modules == nil || b.Modules.Jobs != 3 || b.Modules.Passed != 2 || b.Modules.Failing != 1 ||
			b.Modules.Status != events.StatusFailed || b.Modules.Text() != "1 failing") {
			t.Fatalf("main's module count %+v", b.Modules)
		}
		if b.Branch == "main" && (b.Modules.FailingSince == nil || b.Modules.FailingSince.Commit != "c2" || b.FailingSince == nil) {
			t.Fatalf("main's modules fail since c2 (app): %+v", b.Modules.FailingSince)
		}
		if b.Branch == "dev" && (b.Modules == nil || b.Modules.NoRunner != 1 || b.Modules.Status != StatusNoRunner || b.Modules.Text() != "1 without runner") {
			t.Fatalf("dev's module count %+v", b.Modules)
		}
	}
	if v.Modules("other", "") != nil {
		t.Fatal("a repo without modules has a grid")
	}
}
