package reporter

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/jetci/jetci/events"
)

// browserFor starts a headless Chromium for a test, or skips it saying how
// to get one (a failure when JETCI_REQUIRE_BROWSER is set, as in CI).
func browserFor(t *testing.T) context.Context {
	t.Helper()
	bin := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			bin = p
			break
		}
	}
	if bin == "" {
		if os.Getenv("JETCI_REQUIRE_BROWSER") != "" {
			t.Fatal("no Chromium on PATH, and JETCI_REQUIRE_BROWSER is set")
		}
		t.Skip("no Chromium on PATH: install Debian's chromium package to run the browser tests (.ci/run does)")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true), chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1200, 800),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	ctx, cancelT := context.WithTimeout(ctx, 2*time.Minute)
	t.Cleanup(func() { _ = chromedp.Cancel(ctx); cancelT(); cancel(); cancelAlloc() })
	return ctx
}

// js evaluates expr in the page, failing the test on an error.
func js[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	var v T
	if err := chromedp.Run(ctx, chromedp.Evaluate(expr, &v)); err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

func navigate(t *testing.T, ctx context.Context, url, sel string) {
	t.Helper()
	if err := chromedp.Run(ctx, chromedp.Navigate(url), chromedp.WaitReady(sel, chromedp.ByQuery)); err != nil {
		t.Fatalf("open %s: %v", url, err)
	}
}

// TestBrowserWhoBrokeItAndWhyItFailed looks at issue 18's facts as a user
// does, in Chromium: the modules chip and who broke the branch on the
// overview, the failing jobs first on the commit page with their tests'
// messages, the no-runner state, and the log viewer.
func TestBrowserWhoBrokeItAndWhyItFailed(t *testing.T) {
	ctx := browserFor(t)
	f := newWebFixture(t, "")
	_, atC := f.seedBreak()
	// A long log for the job at c: 3000 numbered lines in two steps.
	var log strings.Builder
	log.WriteString("[jetci] proj main job storage/test\n$ make build\n")
	for i := 3; i <= 1500; i++ {
		fmt.Fprintf(&log, "build line %d\n", i)
	}
	log.WriteString("$ make test\n")
	for i := 1502; i <= 3000; i++ {
		fmt.Fprintf(&log, "test line %d\n", i)
	}
	object := events.LogObject(atC.JobID, 25, 1)
	if _, err := f.rep.logs.PutString(f.ctx, object, log.String()); err != nil {
		t.Fatal(err)
	}
	f.runAs(atC, 25, events.StatusFailed, cy, "docs: typo", t0.Add(2*time.Minute), func(e *events.JobFinished) {
		e.Log = object
		e.Tests = []events.TestResult{{Name: "example.com/storage.TestIndex", Status: events.TestFailed, Message: "index_test.go:42: got 3 keys, want 4"}}
		e.TestSummary = &events.TestSummary{Total: 1, Failed: 1}
	})
	f.waitFor(atC.JobID, func(r Record) bool { return r.Log == object })
	riscv := jref("proj", "main", sha('c'), "test", "riscv64")
	f.runAs(riscv, 40, events.StatusQueued, cy, "docs: typo", t0.Add(2*time.Minute), nil)
	f.waitFor(riscv.JobID, func(r Record) bool { return r.Status == events.StatusQueued })

	// The overview: the modules chip counts what needs attention; the
	// branch says since when it fails, and who broke it.
	navigate(t, ctx, f.base+"/", "table.grid")
	chip := js[string](t, ctx, `document.getElementById('modules-main').innerText`)
	color := js[string](t, ctx, `getComputedStyle(document.getElementById('modules-main')).backgroundColor`)
	if chip != "1 failing" || color != "rgb(198, 40, 40)" {
		t.Errorf("modules chip %q in %s, want \"1 failing\" in the failing red", chip, color)
	}
	since := js[string](t, ctx, `document.querySelector('tr[data-branch="main"] .failing-since').innerText`)
	if !strings.Contains(since, "failing since "+events.Short(sha('b'))+" by Bob Breaker, 1 commit ago") {
		t.Errorf("overview says %q", since)
	}
	norunner := js[string](t, ctx, `Array.from(document.querySelectorAll('a.chip.cell.no-runner')).map(a=>a.innerText+' | '+a.title).join()`)
	if !strings.Contains(norunner, "no runner | test on riscv64") || !strings.Contains(norunner, "no runner for riscv64 in pool default") {
		t.Errorf("overview's riscv64 chip %q", norunner)
	}
	// Its colour is its own, not a queued chip's grey.
	if c := js[string](t, ctx, `getComputedStyle(document.querySelector('a.chip.cell.no-runner')).backgroundColor`); c == "rgb(107, 107, 107)" {
		t.Errorf("the no-runner chip is queued grey")
	}
	// Its link goes to the breaking commit.
	// (The live region may be redrawn under a click: follow the href.)
	href := js[string](t, ctx, `document.querySelector('tr[data-branch="main"] .failing-since a').href`)
	navigate(t, ctx, href, "#jobs")
	if h1 := js[string](t, ctx, `document.querySelector('h1').innerText`); !strings.Contains(h1, events.Short(sha('b'))) {
		t.Errorf("the failing-since link leads to %q", h1)
	}

	// The commit page at c: failing jobs first, with the test's message;
	// the commit's status is no-runner (riscv64 would wait forever).
	navigate(t, ctx, f.base+commitURL("proj", "main", sha('c')), "#jobs")
	first := js[string](t, ctx, `document.querySelector('#failing-jobs .failing-job').innerText`)
	for _, want := range []string{"storage/test", "example.com/storage.TestIndex", "index_test.go:42: got 3 keys, want 4", "failing since " + events.Short(sha('b')) + " by Bob Breaker"} {
		if !strings.Contains(first, want) {
			t.Errorf("first failing job %q has no %q", first, want)
		}
	}
	if st := js[string](t, ctx, `Array.from(document.querySelectorAll('#jobs tr')).filter(r=>r.innerText.includes('riscv64')).map(r=>r.innerText).join()`); !strings.Contains(st, "no runner") || !strings.Contains(st, "no runner for riscv64 in pool default") {
		t.Errorf("riscv64's row on the commit page: %q", st)
	}
	if top := js[bool](t, ctx, `document.getElementById('failing-jobs').getBoundingClientRect().top < document.getElementById('jobs').getBoundingClientRect().top`); !top {
		t.Error("the failing jobs are not above the jobs table")
	}

	// The job page of riscv64: the no-runner state, not "queued".
	navigate(t, ctx, f.base+"/job/"+riscv.JobID, "#job-status")
	if st := js[string](t, ctx, `document.getElementById('job-status').innerText`); !strings.Contains(st, "no runner for riscv64 in pool default") || strings.Contains(st, "queued") {
		t.Errorf("job status %q", st)
	}

	// The log viewer: opens at the end, numbered lines with anchors, steps
	// that fold, search.
	navigate(t, ctx, f.base+"/job/"+atC.JobID, "#log .ln")
	if n := js[int](t, ctx, `document.querySelectorAll('#log .ln').length`); n != 3000 {
		t.Errorf("%d numbered lines, want 3000", n)
	}
	atEnd := js[bool](t, ctx, `(function(l){return l.scrollTop>0 && l.scrollTop+l.clientHeight>=l.scrollHeight-2})(document.getElementById('log'))`)
	visible := js[bool](t, ctx, `(function(r){return r.top<innerHeight && r.bottom>0})(document.getElementById('L3000').getBoundingClientRect())`)
	if !atEnd || !visible {
		t.Errorf("the log does not open at its end (scrolled to the end %v, last line in view %v)", atEnd, visible)
	}
	if num := js[string](t, ctx, `document.querySelector('#L1234 a').getAttribute('href')+' '+document.querySelector('#L1234').innerText`); num != "#L1234 1234build line 1234\n" && !strings.HasPrefix(num, "#L1234 1234") {
		t.Errorf("line 1234: %q", num)
	}
	if steps := js[int](t, ctx, `document.querySelectorAll('#log details.step').length`); steps != 2 {
		t.Errorf("%d steps, want 2", steps)
	}
	if err := chromedp.Run(ctx, chromedp.Click("#log-fold", chromedp.ByQuery)); err != nil {
		t.Fatal(err)
	}
	if open := js[int](t, ctx, `document.querySelectorAll('#log details.step[open]').length`); open != 0 {
		t.Errorf("%d steps open after folding", open)
	}
	if err := chromedp.Run(ctx, chromedp.SendKeys("#log-search", "test line 2222\r", chromedp.ByQuery)); err != nil {
		t.Fatal(err)
	}
	hits := js[string](t, ctx, `document.getElementById('log-hits').innerText`)
	shown := js[bool](t, ctx, `(function(l,e){var r=e.getBoundingClientRect(),b=l.getBoundingClientRect();return e.closest('details').open && r.top>=b.top && r.bottom<=b.bottom})(document.getElementById('log'),document.getElementById('L2222'))`)
	if hits != "1 of 1" || !shown {
		t.Errorf("search: %q, line 2222 shown %v", hits, shown)
	}
	// An anchor opens the log at its line.
	navigate(t, ctx, f.base+"/job/"+atC.JobID+"#L100", "#log .ln")
	if at := js[bool](t, ctx, `(function(l,e){var r=e.getBoundingClientRect(),b=l.getBoundingClientRect();return r.top>=b.top && r.bottom<=b.bottom})(document.getElementById('log'),document.getElementById('L100'))`); !at {
		t.Error("#L100 does not show line 100")
	}
}

// TestBrowserTestListsFlagsAndAttempts: in Chromium, a pass whose report
// has failures is flagged on its job page, whose tests' history link keeps
// the job; the flaky list is one row per test with a line per branch; the
// log's heading says the record's attempt.
func TestBrowserTestListsFlagsAndAttempts(t *testing.T) {
	ctx := browserFor(t)
	f := newWebFixture(t, "")
	lint := jref("proj", "main", sha('a'), "lint", "amd64")
	for seq := uint64(1); seq <= 2; seq++ {
		f.runAs(lint, seq, events.StatusPassed, ann, "change", t0.Add(time.Duration(seq)*time.Minute), func(e *events.JobFinished) {
			e.Tests = []events.TestResult{{Name: "lint.MissingDoc", Status: events.TestFailed, Message: "a.go:3: exported A has no comment"}}
			e.TestSummary = &events.TestSummary{Total: 1, Failed: 1}
			e.Log = events.LogObject(lint.JobID, seq, 1)
			if _, err := f.rep.logs.PutString(f.ctx, e.Log, fmt.Sprintf("[jetci] run %d delivery 1 on r1\n", seq)); err != nil {
				t.Fatal(err)
			}
		})
	}
	f.waitFor(lint.JobID, func(r Record) bool { return r.Attempt == 2 && r.Status == events.StatusPassed })
	for _, branch := range []string{"main", "dev"} {
		for i, st := range []string{events.TestFailed, events.TestPassed} {
			e := result("c-"+branch, uint64(10*len(branch)+i), uint64(i+1), map[string]string{"flaky_one": st})
			e.Branch, e.JobID = branch, "job-"+branch
			if err := f.rep.tests.Observe(f.ctx, e); err != nil {
				t.Fatal(err)
			}
		}
	}

	navigate(t, ctx, f.base+"/job/"+lint.JobID, "#report-failures")
	if flag := js[string](t, ctx, `document.getElementById('report-failures').innerText`); !strings.Contains(flag, "1 failing test") ||
		!strings.Contains(flag, "passed, but its test report has failures") {
		t.Errorf("flag %q", flag)
	}
	if head := js[string](t, ctx, `document.getElementById('log-attempt').innerText`); head != "(attempt 2: run 2, delivery 1)" {
		t.Errorf("log heading %q", head)
	}
	if msg := js[string](t, ctx, `document.querySelector('#tests pre.test-message').innerText`); msg != "a.go:3: exported A has no comment" {
		t.Errorf("test message %q", msg)
	}
	href := js[string](t, ctx, `document.getElementById('tests-history').href`)
	navigate(t, ctx, href, "#flaky")
	if h1 := js[string](t, ctx, `document.querySelector('h1').innerText`); h1 != "Tests · proj · main · amd64 · lint" {
		t.Errorf("the history link loses the job: %q (%s)", h1, href)
	}

	navigate(t, ctx, f.base+"/tests?repo=proj", "#flaky")
	groups := js[int](t, ctx, `document.querySelectorAll('#flaky tbody.test-group').length`)
	lines := js[string](t, ctx, `Array.from(document.querySelectorAll('#flaky tr.branch td:first-child')).map(td=>td.innerText).sort().join('|')`)
	if groups != 1 || lines != "dev · amd64|main · amd64" {
		t.Errorf("flaky: %d groups, lines %q", groups, lines)
	}
}

// TestBrowserSearchFindsTestsByName: /search finds a test by part of its
// name, ignoring case, across branches and modules, in the read model's
// trigram index; each place links the cell's latest job and the test
// history of that job; too short a text says so.
func TestBrowserSearchFindsTestsByName(t *testing.T) {
	ctx := browserFor(t)
	f := newWebFixture(t, "")
	tests := func(names ...string) func(*events.JobFinished) {
		return func(e *events.JobFinished) {
			for _, n := range names {
				e.Tests = append(e.Tests, events.TestResult{Name: n, Status: events.TestPassed})
			}
			e.TestSummary = &events.TestSummary{Total: len(names), Passed: len(names)}
		}
	}
	onMain := jref("proj", "main", sha('a'), "test", "amd64")
	onMain.Module, onMain.JobID = "storage", events.JobID("proj", "main", sha('a'), "storage/test", "amd64")
	onDev := jref("proj", "dev", sha('d'), "test", "arm64")
	onDev.Module, onDev.JobID = "storage", events.JobID("proj", "dev", sha('d'), "storage/test", "arm64")
	other := jref("proj", "main", sha('a'), "unit", "amd64")
	f.runAs(onMain, 1, events.StatusPassed, ann, "storage: index", t0, tests("example.com/storage.TestIndexRebuild", "example.com/storage.TestOpen"))
	f.runAs(onDev, 2, events.StatusPassed, ann, "storage: index", t0, tests("example.com/storage.TestIndexRebuild"))
	f.runAs(other, 3, events.StatusPassed, ann, "storage: index", t0, tests("tests.test_index.TestIndexPage"))
	for _, id := range []string{onMain.JobID, onDev.JobID, other.JobID} {
		f.waitFor(id, func(r Record) bool { return r.Status == events.StatusPassed })
	}

	navigate(t, ctx, f.base+"/search?q="+url.QueryEscape("indexrebuild"), "#found-tests")
	items := js[[]string](t, ctx, `Array.from(document.querySelectorAll('#found-tests li')).map(li => li.innerText)`)
	if len(items) != 1 || !strings.Contains(items[0], "example.com/storage.TestIndexRebuild") || !strings.Contains(items[0], "proj · storage/test") ||
		!strings.Contains(items[0], "main amd64") || !strings.Contains(items[0], "dev arm64") {
		t.Fatalf("found tests %q, want storage.TestIndexRebuild of storage/test on main amd64 and dev arm64", items)
	}
	// Each place (the main branch first, as everywhere): the cell's latest
	// job, then its test history.
	links := js[[]string](t, ctx, `Array.from(document.querySelectorAll('#found-tests li a')).map(a => a.getAttribute('href'))`)
	want := []string{"/job/" + onMain.JobID, testsJobURL("proj", "main", "amd64", "storage/test"), "/job/" + onDev.JobID, testsJobURL("proj", "dev", "arm64", "storage/test")}
	if strings.Join(links, " ") != strings.Join(want, " ") {
		t.Errorf("links %q, want %q", links, want)
	}
	navigate(t, ctx, f.base+"/search?q=TestIndex", "#found-tests")
	if n := js[int](t, ctx, `document.querySelectorAll('#found-tests li').length`); n != 2 {
		t.Errorf("TestIndex: %d tests, want 2 (TestIndexRebuild of storage/test, TestIndexPage of unit)", n)
	}
	navigate(t, ctx, f.base+"/search?q=Te", "#no-tests")
	if s := js[string](t, ctx, `document.getElementById('no-tests').innerText`); !strings.Contains(s, "at least 3 characters") {
		t.Errorf("a 2-letter search says %q", s)
	}
}

// TestBrowserHeldCommitsAndBisectionBox drives issue 18's held-commit
// reports in Chromium: the broken branch's banner counts the held commit
// that its paused list names and that the commit list marks paused (not "1
// commit(s) held" beside a page where nothing is); the bisection's box is
// red while storage fails, and goes once storage passes again and the
// branch opens.
func TestBrowserHeldCommitsAndBisectionBox(t *testing.T) {
	ctx := browserFor(t)
	f := newWebFixture(t, "")
	atB, _ := f.seedBreak()
	// A later commit e, held: its jobs are recorded paused.
	heldRef := jref("proj", "main", sha('e'), "test", "amd64")
	heldRef.Module, heldRef.JobID = "storage", events.JobID("proj", "main", sha('e'), "storage/test", "amd64")
	f.publish(&events.JobQueued{JobRef: heldRef, Pool: "default", Class: events.ClassFirst, QueuedAt: t0.Add(4 * time.Minute),
		Author: ann, Subject: "storage: more", Held: true})
	f.waitFor(heldRef.JobID, func(r Record) bool { return r.Status == events.StatusHeld })
	branches, err := f.s.JS.KeyValue(f.ctx, events.BucketBranches)
	if err != nil {
		t.Fatal(err)
	}
	putState := func(st events.BranchState) {
		data, err := events.Encode(&st)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := branches.Put(f.ctx, events.BranchKey("proj", "main"), data); err != nil {
			t.Fatal(err)
		}
	}
	putState(events.BranchState{Repo: "proj", Branch: "main", State: events.BranchBroken, Since: t0,
		Reason: "storage/test failed on amd64", BrokenBy: &atB, Author: bob, Held: 1})
	bis, err := f.s.JS.KeyValue(f.ctx, events.BucketBisect)
	if err != nil {
		t.Fatal(err)
	}
	b := events.Bisection{ID: atB.JobID, Repo: "proj", Branch: "main", Job: "test", Module: "storage", Arch: "amd64",
		State: events.BisectFound, Good: sha('a'), Bad: sha('b'), Commits: []events.BisectCommit{{Commit: sha('a')}, {Commit: sha('b')}},
		Culprit: &events.BisectCommit{Commit: sha('b'), Author: bob}, StartedAt: t0.Add(90 * time.Second)}
	data, err := events.Encode(&b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bis.Put(f.ctx, events.BisectKey("proj", "main", b.ID), data); err != nil {
		t.Fatal(err)
	}
	page := f.base + branchURL("proj", "main")
	box := `document.getElementById('bisect-` + atB.JobID + `')`
	deadline := time.Now().Add(10 * time.Second)
	for {
		navigate(t, ctx, page, "#commits")
		if js[bool](t, ctx, box+` !== null && document.getElementById('held-count') !== null`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no bisection box or held count on the branch page: %s", js[string](t, ctx, `document.body.innerText`))
		}
	}
	held := js[string](t, ctx, `document.getElementById('held-count').innerText`)
	if !strings.Contains(held, "1 commit(s) held until it opens; 1 of them listed below") || strings.Contains(held, "no job here") {
		t.Errorf("held count %q", held)
	}
	if s := js[string](t, ctx, `document.getElementById('paused').innerText`); !strings.Contains(s, events.Short(sha('e'))) {
		t.Errorf("paused list %q does not name the held commit %s", s, events.Short(sha('e')))
	}
	if n := js[int](t, ctx, `document.querySelectorAll('tr[data-commit="`+sha('e')+`"] a.chip.paused').length`); n != 1 {
		t.Errorf("the held commit's row marks %d jobs paused, want 1", n)
	}
	if c := js[string](t, ctx, `getComputedStyle(`+box+`).backgroundColor`); c == "rgba(0, 0, 0, 0)" {
		t.Errorf("the found bisection's box has no colour")
	}
	if !js[bool](t, ctx, box+`.classList.contains('bad')`) {
		t.Errorf("the found bisection's box is not red: %s", js[string](t, ctx, box+`.className`))
	}
	// storage passes at d, the branch opens: the box and the count go.
	fixed := jref("proj", "main", sha('d'), "test", "amd64")
	fixed.Module, fixed.JobID = "storage", events.JobID("proj", "main", sha('d'), "storage/test", "amd64")
	f.runAs(fixed, 200, events.StatusPassed, ann, "storage: fix", t0.Add(5*time.Minute), nil)
	f.waitFor(fixed.JobID, func(r Record) bool { return r.Status == events.StatusPassed })
	putState(events.BranchState{Repo: "proj", Branch: "main", State: events.BranchOpen, Since: t0.Add(6 * time.Minute), Reason: "fixed"})
	deadline = time.Now().Add(10 * time.Second)
	for {
		navigate(t, ctx, page, "#commits")
		if js[bool](t, ctx, box+` === null && document.getElementById('held-count') === null`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the bisection box or the held count stays after the branch went green: %s", js[string](t, ctx, `document.body.innerText`))
		}
	}
}
