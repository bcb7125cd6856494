package reporter

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jetci/jetci/events"
)

// These tests are issue 18's "wrong or missing facts" and "finding why it
// failed", checked on the pages' HTML and the API (facts_browser_test.go
// drives the same in Chromium).

// runAs publishes one attempt of a job of commit made by author, first
// queued at at; fin, when set, adjusts its result.
func (f *webFixture) runAs(ref events.JobRef, seq uint64, st events.Status, author events.Person, subject string, at time.Time, fin func(*events.JobFinished)) {
	f.t.Helper()
	f.publish(&events.JobQueued{JobRef: ref, Pool: "default", Class: events.ClassFirst, QueueSeq: seq, QueuedAt: at,
		Author: author, Subject: subject})
	if st == events.StatusQueued {
		return
	}
	f.publish(&events.JobStarted{JobRef: ref, QueueSeq: seq, Attempt: 1, Runner: "r1", StartedAt: at.Add(time.Second)})
	e := &events.JobFinished{JobRef: ref, QueueSeq: seq, Attempt: 1, Runner: "r1", Status: st, DurationMs: 1000,
		StartedAt: at.Add(time.Second), FinishedAt: at.Add(2 * time.Second), Author: author, Subject: subject}
	if st == events.StatusFailed {
		e.ExitCode = 1
	}
	if fin != nil {
		fin(e)
	}
	f.publish(e)
}

var (
	ann = events.Person{Name: "Ann", Email: "ann@example.com"}
	bob = events.Person{Name: "Bob Breaker", Email: "bob@example.com"}
	cy  = events.Person{Name: "Cy Docs", Email: "cy@example.com"}
)

// seedBreak is the example: storage passes at a (Ann), breaks at b
// (Bob), and a docs-only commit c by Cy re-runs it, failing again; docs
// passes throughout. It returns the refs of storage at b and c.
func (f *webFixture) seedBreak() (atB, atC events.JobRef) {
	f.t.Helper()
	for i, c := range []struct {
		sha     string
		who     events.Person
		subject string
		storage events.Status
	}{
		{sha('a'), ann, "storage: faster", events.StatusPassed},
		{sha('b'), bob, "storage: rewrite the index", events.StatusFailed},
		{sha('c'), cy, "docs: typo", events.StatusFailed},
	} {
		at := t0.Add(time.Duration(i) * time.Minute)
		ref := jref("proj", "main", c.sha, "test", "amd64")
		ref.Module = "storage"
		ref.JobID = events.JobID("proj", "main", c.sha, "storage/test", "amd64")
		f.runAs(ref, uint64(10*i+1), c.storage, c.who, c.subject, at, func(e *events.JobFinished) {
			if e.Status == events.StatusFailed {
				e.Tests = []events.TestResult{
					{Name: "example.com/storage.TestIndex", Status: events.TestFailed, DurationMs: 12,
						Message: "index_test.go:42: got 3 keys, want 4"},
					{Name: "example.com/storage.TestOpen", Status: events.TestPassed, DurationMs: 3},
				}
				e.TestSummary = &events.TestSummary{Total: 2, Passed: 1, Failed: 1}
			}
		})
		docs := jref("proj", "main", c.sha, "test", "amd64")
		docs.Module = "docs"
		docs.JobID = events.JobID("proj", "main", c.sha, "docs/test", "amd64")
		f.runAs(docs, uint64(10*i+2), events.StatusPassed, c.who, c.subject, at, nil)
		switch i {
		case 1:
			atB = ref
		case 2:
			atC = ref
		}
	}
	f.waitFor(atC.JobID, func(r Record) bool { return r.Status == events.StatusFailed })
	return atB, atC
}

func TestWhoBrokeIt(t *testing.T) {
	f := newWebFixture(t, "")
	atB, atC := f.seedBreak()

	// The API: the job at the innocent commit names the breaking one.
	var rec Record
	f.getJSON("/api/v1/jobs/"+atC.JobID, &rec)
	fs := rec.FailingSince
	if fs == nil || fs.Commit != sha('b') || fs.Author.Name != "Bob Breaker" || fs.JobID != atB.JobID || fs.CommitsAgo != 1 {
		t.Fatalf("failing_since %+v", fs)
	}
	rec = Record{}
	f.getJSON("/api/v1/jobs/"+atB.JobID, &rec)
	if fs := rec.FailingSince; fs == nil || fs.Commit != sha('b') || fs.CommitsAgo != 1 {
		t.Fatalf("at the break itself: %+v", fs)
	}
	var repos struct{ Repos []RepoSummary }
	f.getJSON("/api/v1/repos", &repos)
	b := repos.Repos[0].Branches[0]
	if b.FailingSince == nil || b.FailingSince.Commit != sha('b') || b.Modules == nil || b.Modules.Failing != 1 ||
		b.Modules.FailingSince == nil || b.Modules.FailingSince.Commit != sha('b') {
		t.Fatalf("branch %+v modules %+v", b.FailingSince, b.Modules)
	}

	for _, tt := range []struct{ path, what string }{
		{"/", "the overview's branch"},
		{"/job/" + atC.JobID, "the job page"},
		{commitURL("proj", "main", sha('c')), "the commit page"},
		{"/modules?repo=proj", "the module grid"},
	} {
		_, body, _ := f.get(tt.path)
		for _, want := range []string{"failing since", "Bob Breaker", "1 commit ago", commitURL("proj", "main", sha('b'))} {
			if !strings.Contains(body, strings.ReplaceAll(want, "&", "&amp;")) {
				t.Errorf("%s: no %q in\n%s", tt.what, want, body)
			}
		}
	}
	// The modules chip counts what needs attention, coloured by the worst cell.
	_, body, _ := f.get("/")
	if !strings.Contains(body, `class="chip cell failed" id="modules-main"`) || !strings.Contains(body, ">1 failing</a>") {
		t.Errorf("modules chip:\n%s", body)
	}
	if strings.Contains(body, "/2 failed") {
		t.Errorf("the modules chip still reads passed/total as failed:\n%s", body)
	}

	// A passing commit ends the streak: d (Ann) fixes it, e (Cy) breaks it
	// again: the blame is e's, 0 commits ago.
	for i, c := range []struct {
		sha string
		who events.Person
		st  events.Status
	}{{sha('d'), ann, events.StatusPassed}, {sha('e'), cy, events.StatusError}} {
		ref := jref("proj", "main", c.sha, "test", "amd64")
		ref.Module = "storage"
		ref.JobID = events.JobID("proj", "main", c.sha, "storage/test", "amd64")
		f.runAs(ref, uint64(100+i), c.st, c.who, "again", t0.Add(time.Duration(10+i)*time.Minute), nil)
		f.waitFor(ref.JobID, func(r Record) bool { return r.Status == c.st })
		if i == 1 {
			rec = Record{}
			f.getJSON("/api/v1/jobs/"+ref.JobID, &rec)
			if fs := rec.FailingSince; fs == nil || fs.Commit != sha('e') || fs.Author.Name != "Cy Docs" || fs.CommitsAgo != 0 {
				t.Fatalf("after a fix and a new break: %+v", fs)
			}
		}
	}
	rec = Record{}
	f.getJSON("/api/v1/jobs/"+atC.JobID, &rec)
	if fs := rec.FailingSince; fs == nil || fs.Commit != sha('b') || fs.CommitsAgo != 3 {
		t.Fatalf("an old failure still names its own break, now 3 commits ago: %+v", fs)
	}
}

func TestCommitPageListsFailingTestsFirst(t *testing.T) {
	f := newWebFixture(t, "")
	_, atC := f.seedBreak()
	// A job that passed although its JUnit report has a failure.
	lint := jref("proj", "main", sha('c'), "lint", "amd64")
	f.runAs(lint, 50, events.StatusPassed, cy, "docs: typo", t0.Add(2*time.Minute), func(e *events.JobFinished) {
		e.Tests = []events.TestResult{{Name: "lint.MissingDoc", Status: events.TestFailed, Message: "pkg/a.go:3: exported A has no comment"}}
		e.TestSummary = &events.TestSummary{Total: 1, Failed: 1}
	})
	f.waitFor(lint.JobID, func(r Record) bool { return r.Status == events.StatusPassed })

	_, body, _ := f.get(commitURL("proj", "main", sha('c')))
	failing := strings.Index(body, `id="failing-jobs"`)
	storage := strings.Index(body, `id="failing-`+atC.JobID+`"`)
	lintAt := strings.Index(body, `id="failing-`+lint.JobID+`"`)
	jobs := strings.Index(body, `id="jobs"`)
	if failing < 0 || storage < failing || lintAt < storage || jobs < lintAt {
		t.Fatalf("want the failing jobs (storage, then the pass with report failures) before the jobs table:\n%s", body)
	}
	for _, want := range []string{"example.com/storage.TestIndex", "index_test.go:42: got 3 keys, want 4",
		"report: 1 failing", "pkg/a.go:3: exported A has no comment"} {
		if !strings.Contains(body, want) {
			t.Errorf("commit page: no %q", want)
		}
	}
	if strings.Contains(body[:jobs], "storage.TestOpen") {
		t.Error("a passing test is listed among the failures")
	}
	// The job page of the pass with failures flags it; its tests' history
	// link keeps the job.
	_, body, _ = f.get("/job/" + lint.JobID)
	if !strings.Contains(body, `id="report-failures"`) || !strings.Contains(body, "passed, but its test report has failures") {
		t.Errorf("job page does not flag the pass:\n%s", body)
	}
	_, body, _ = f.get("/job/" + atC.JobID)
	if !strings.Contains(body, `href="/tests?arch=amd64&amp;branch=main&amp;job=storage%2Ftest&amp;repo=proj"`) {
		t.Errorf("tests history link loses the job:\n%s", body)
	}
	if !strings.Contains(body, "index_test.go:42: got 3 keys, want 4") {
		t.Errorf("job page: no test message")
	}
}

func TestNoRunnerIsAState(t *testing.T) {
	f := newWebFixture(t, "")
	ref := jref("proj", "main", sha('a'), "test", "riscv64")
	f.runAs(ref, 1, events.StatusQueued, ann, "port", t0, nil)
	f.waitFor(ref.JobID, func(r Record) bool { return r.Status == events.StatusQueued })
	const want = "no runner for riscv64 in pool default"

	var rec Record
	f.getJSON("/api/v1/jobs/"+ref.JobID, &rec)
	if rec.NoRunner != want || rec.Status != events.StatusQueued {
		t.Fatalf("job: %q %s", rec.NoRunner, rec.Status)
	}
	var c Commit
	f.getJSON("/api/v1/commits/"+sha('a')+"?repo=proj&branch=main", &c)
	if c.Status != StatusNoRunner {
		t.Fatalf("commit status %s, want %s", c.Status, StatusNoRunner)
	}
	_, body, _ := f.get("/job/" + ref.JobID)
	if !strings.Contains(body, `<span class="chip no-runner"`) || !strings.Contains(body, want) {
		t.Errorf("job page:\n%s", body)
	}
	_, body, _ = f.get(commitURL("proj", "main", sha('a')))
	if !strings.Contains(body, `id="commit-status"><span class="chip no-runner"`) || !strings.Contains(body, want) {
		t.Errorf("commit page:\n%s", body)
	}
	_, body, _ = f.get("/")
	if !strings.Contains(body, `class="chip cell no-runner"`) || !strings.Contains(body, ">no runner</a>") {
		t.Errorf("overview:\n%s", body)
	}
	// A runner for riscv64 connects: the job is queued like any other.
	runners, err := f.s.JS.KeyValue(f.ctx, events.BucketRunners)
	if err != nil {
		t.Fatal(err)
	}
	heartbeat := func() {
		// A lease lives LeaseTTL unless renewed, as a runner does.
		lease, _ := json.Marshal(events.Lease{ID: "rv1", Pool: "default", Arch: "riscv64", Slots: 1, Busy: 1, HeartbeatAt: time.Now()})
		if _, err := runners.Put(f.ctx, events.LeaseKey("rv1"), lease); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		heartbeat()
		rec = Record{}
		f.getJSON("/api/v1/jobs/"+ref.JobID, &rec)
		if rec.NoRunner == "" {
			break
		}
		if time.Now().After(deadline) {
			_, runners, _ := f.get("/api/v1/runners")
			t.Fatalf("a runner connected, but the job still says %q (%q); runners %s", rec.NoRunner, rec.Reason, runners)
		}
		time.Sleep(20 * time.Millisecond)
	}
	heartbeat()
	c = Commit{}
	f.getJSON("/api/v1/commits/"+sha('a')+"?repo=proj&branch=main", &c)
	if c.Status != events.StatusQueued {
		t.Fatalf("commit status %s with a runner", c.Status)
	}
}

func TestLogTailStartsAtALine(t *testing.T) {
	var text strings.Builder
	for i := 1; i <= 100; i++ {
		text.WriteString(strings.Repeat("x", i%7) + "line " + string(rune('0'+i%10)) + "\n")
	}
	full := text.String()
	for _, limit := range []int64{1, 10, 57, 300, int64(len(full)) - 1, int64(len(full)), 5000} {
		tl := &tail{max: limit}
		for i := 0; i < len(full); i += 13 { // in pieces, as an object reads
			_, _ = tl.Write([]byte(full[i:min(i+13, len(full))]))
		}
		got, first := tl.lines()
		lines := strings.SplitAfter(full, "\n")
		switch {
		case int64(len(full)) <= limit:
			if string(got) != full || first != 1 {
				t.Errorf("limit %d: whole log cut: %d %q", limit, first, got)
			}
		case len(got) == 0:
			// Less than one line's end fits: nothing whole is left.
		default:
			want := strings.Join(lines[first-1:], "")
			if string(got) != want && !(first == len(lines) && len(got) > 0) {
				t.Errorf("limit %d: from line %d got %q, want %q", limit, first, got, want)
			}
			if int64(len(got)) > limit {
				t.Errorf("limit %d: %d bytes", limit, len(got))
			}
		}
	}
	_ = context.Background
}

// TestAttemptNumbersAgree: the third run of a job is attempt 3 on its page,
// and the log's heading says so, with the run and delivery the runner's
// own header names.
func TestAttemptNumbersAgree(t *testing.T) {
	f := newWebFixture(t, "")
	ref := jref("proj", "main", sha('a'), "test", "amd64")
	for seq := uint64(1); seq <= 3; seq++ {
		f.run(ref, seq, events.StatusFailed, fmt.Sprintf("[jetci] proj main@%s job test arch amd64 run %d delivery 1 on r1\n", sha('a'), seq), nil)
		f.waitFor(ref.JobID, func(r Record) bool { return r.QueueSeq == seq && r.Status == events.StatusFailed })
	}
	rec := f.waitFor(ref.JobID, func(r Record) bool { return r.Attempt == 3 })
	_, body, _ := f.get("/job/" + rec.JobID)
	if !strings.Contains(body, `id="log-attempt">(attempt 3: run 3, delivery 1)`) || !strings.Contains(body, "run 3 delivery 1 on r1") {
		t.Errorf("job page of attempt 3:\n%s", body)
	}
	_, body, _ = f.get("/job/" + rec.JobID + "?attempt=1")
	if !strings.Contains(body, `id="log-attempt">(attempt 1: run 1, delivery 1)`) || !strings.Contains(body, "run 1 delivery 1 on r1") {
		t.Errorf("job page of attempt 1:\n%s", body)
	}
}

// TestBrokenBuildBannerAndBisectionBox: the banner of a broken branch
// names the breaking commit and its author; a bisection's box goes once its
// job is green again on the branch.
func TestBrokenBuildBannerAndBisectionBox(t *testing.T) {
	f := newWebFixture(t, "")
	atB, _ := f.seedBreak()
	ctx := f.ctx
	branches, err := f.s.JS.KeyValue(ctx, events.BucketBranches)
	if err != nil {
		t.Fatal(err)
	}
	st := events.BranchState{Repo: "proj", Branch: "main", State: events.BranchBroken, Since: t0,
		Reason: "storage/test failed on amd64", BrokenBy: &atB, Author: bob, Held: 1}
	data, err := events.Encode(&st)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := branches.Put(ctx, events.BranchKey("proj", "main"), data); err != nil {
		t.Fatal(err)
	}
	bis, err := f.s.JS.KeyValue(ctx, events.BucketBisect)
	if err != nil {
		t.Fatal(err)
	}
	b := events.Bisection{ID: atB.JobID, Repo: "proj", Branch: "main", Job: "test", Module: "storage", Arch: "amd64",
		State: events.BisectFound, Good: sha('a'), Bad: sha('b'), Commits: []events.BisectCommit{{Commit: sha('a')}, {Commit: sha('b')}},
		Culprit: &events.BisectCommit{Commit: sha('b'), Author: bob}, StartedAt: t0.Add(90 * time.Second)}
	if data, err = events.Encode(&b); err != nil {
		t.Fatal(err)
	}
	if _, err := bis.Put(ctx, events.BisectKey("proj", "main", b.ID), data); err != nil {
		t.Fatal(err)
	}
	var body string
	deadline := time.Now().Add(10 * time.Second)
	for ; time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, body, _ = f.get(branchURL("proj", "main")); strings.Contains(body, `id="broken-by"`) {
			break
		}
	}
	for _, want := range []string{`id="broken-by">Broken by <a class="mono" href="` + strings.ReplaceAll(commitURL("proj", "main", sha('b')), "&", "&amp;"),
		"by <b>Bob Breaker</b>", "storage/test on amd64", `id="bisect-` + atB.JobID + `"`, `id="held-count">1 commit(s) held`} {
		if !strings.Contains(body, want) {
			t.Errorf("branch page: no %q in\n%s", want, body)
		}
	}
	// The job at c links the culprit search.
	_, body, _ = f.get("/job/" + events.JobID("proj", "main", sha('c'), "storage/test", "amd64"))
	if !strings.Contains(body, "culprit search</a>") || !strings.Contains(body, "#bisect-"+atB.JobID) {
		t.Errorf("job page: no link to the culprit search:\n%s", body)
	}
	// storage passes at d: the box goes.
	ref := jref("proj", "main", sha('d'), "test", "amd64")
	ref.Module, ref.JobID = "storage", events.JobID("proj", "main", sha('d'), "storage/test", "amd64")
	f.runAs(ref, 200, events.StatusPassed, ann, "storage: fix", t0.Add(5*time.Minute), nil)
	f.waitFor(ref.JobID, func(r Record) bool { return r.Status == events.StatusPassed })
	deadline = time.Now().Add(10 * time.Second)
	for ; time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, body, _ = f.get(branchURL("proj", "main")); !strings.Contains(body, `id="bisect-`) {
			return
		}
	}
	t.Fatalf("the bisection's box stays after its job passed again:\n%s", body)
}
