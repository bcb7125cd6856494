package reporter

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter/readmodel"
)

// moduleRun publishes one finished run of a module's job.
func (f *webFixture) moduleRun(branch, commit, module, arch string, seq uint64, st events.Status, at time.Time, author string, arts map[string]string) events.JobRef {
	f.t.Helper()
	ref := events.JobRef{JobID: events.JobID("proj", branch, commit, events.QualifiedJob(module, "test"), arch), Repo: "proj",
		Branch: branch, Commit: commit, Job: "test", Module: module, Arch: arch}
	f.publish(&events.JobQueued{JobRef: ref, Pool: "default", Class: events.ClassFirst, QueueSeq: seq, QueuedAt: at,
		Author: events.Person{Name: author, Email: strings.ToLower(author) + "@example.com"}, Subject: "change " + commit[:4]})
	f.publish(&events.JobStarted{JobRef: ref, QueueSeq: seq, Attempt: 1, Runner: "r1", StartedAt: at.Add(time.Second)})
	if st == events.StatusRunning {
		return ref
	}
	fin := &events.JobFinished{JobRef: ref, QueueSeq: seq, Attempt: 1, Runner: "r1", Status: st, DurationMs: int64(1000 + seq),
		StartedAt: at.Add(time.Second), FinishedAt: at.Add(2 * time.Second)}
	for p, content := range arts {
		obj := events.ArtifactObject(ref.JobID, seq, 1, p)
		if _, err := f.rep.artifacts.PutString(f.ctx, obj, content); err != nil {
			f.t.Fatal(err)
		}
		fin.Artifacts = append(fin.Artifacts, events.Artifact{Path: p, Object: obj, Size: int64(len(content))})
	}
	f.publish(fin)
	return ref
}

func (f *webFixture) waitRecords(n int) {
	f.t.Helper()
	brokertest.CheckFor(f.t, 10*time.Second, 10*time.Millisecond, func() error {
		recs, _, err := f.rep.View().Results(context.Background(), Filter{All: true}, readmodel.Page{Limit: 1000}, 0)
		if err != nil || len(recs) != n {
			return fmt.Errorf("%d records (%v)", len(recs), err)
		}
		return nil
	})
}

func hexSHA(n int) string { return fmt.Sprintf("%040x", n) }

// seedModules publishes a repo of 12 modules on two archs and two branches:
// main's commits 1..3, where commit 2 by Bob breaks m03 and m07 on amd64,
// and commit 3 (by Carol, touching only m00) leaves them failing; dev
// passes, with one job still running. It returns the number of records.
func (f *webFixture) seedModules() int {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	seq := uint64(1000)
	n := 0
	for c := 1; c <= 3; c++ {
		author := map[int]string{1: "Alice", 2: "Bob", 3: "Carol"}[c]
		for m := 0; m < 12; m++ {
			if c == 3 && m != 0 {
				continue // commit 3 checks only the module it changed
			}
			for _, arch := range []string{"amd64", "arm64"} {
				st := events.StatusPassed
				if c == 2 && arch == "amd64" && (m == 3 || m == 7) {
					st = events.StatusFailed
				}
				var arts map[string]string
				if m == 1 && arch == "amd64" {
					arts = map[string]string{"bin/tool": fmt.Sprintf("tool of commit %d", c)}
				}
				seq++
				f.moduleRun("main", hexSHA(c), fmt.Sprintf("m%02d", m), arch, seq, st, t0.Add(time.Duration(c)*time.Minute), author, arts)
				n++
			}
		}
	}
	for m := 0; m < 12; m++ {
		seq++
		st := events.StatusPassed
		if m == 5 {
			st = events.StatusRunning
		}
		f.moduleRun("dev", hexSHA(100), fmt.Sprintf("m%02d", m), "amd64", seq, st, t0.Add(10*time.Minute), "Dana", nil)
		n++
	}
	f.waitRecords(n)
	return n
}

func TestDashboardCountsAndFailing(t *testing.T) {
	f := newWebFixture(t, "")
	f.seedModules()
	var d Dashboard
	f.getJSON("/api/v1/dashboard", &d)
	if len(d.Branches) != 2 || d.Branches[0].Branch != "main" || d.Branches[1].Branch != "dev" {
		t.Fatalf("branches %+v", d.Branches)
	}
	main, dev := d.Branches[0], d.Branches[1]
	// dev's running job has no live runner, but running is running; main has 24 cells.
	if c := main.Counts; c.Total != 24 || c.Failing != 2 || c.Passing != 22 {
		t.Errorf("main counts %+v", c)
	}
	if c := dev.Counts; c.Total != 12 || c.Running != 1 || c.Passing != 11 {
		t.Errorf("dev counts %+v", c)
	}
	// The failing cells are of commit 2 (Bob), not Carol's commit 3.
	if len(main.Failing) != 1 || main.Failing[0].Commit != hexSHA(2) || main.Failing[0].Author.Name != "Bob" || main.Failing[0].N != 2 {
		t.Fatalf("main failing %+v", main.Failing)
	}
	if d.Total.Failing != 2 || d.Total.Total != 36 {
		t.Errorf("total %+v", d.Total)
	}
	code, body, _ := f.get("/dashboard")
	for _, want := range []string{`id="dash-branches"`, "proj · main", "by Bob", "m03/test · amd64", "m07/test · amd64", short(hexSHA(2)),
		`href="/modules?branch=main&amp;failing=1&amp;repo=proj"`, "<title>✗ Dashboard · jetci</title>"} {
		if !strings.Contains(body, want) {
			t.Errorf("GET /dashboard = %d: no %q", code, want)
		}
	}
}

func short(s string) string { return events.Short(s) }

func TestBranchPageSummarisesAndPages(t *testing.T) {
	f := newWebFixture(t, "")
	f.seedModules()
	code, body, _ := f.get(branchURL("proj", "main") + "&limit=2")
	if code != 200 {
		t.Fatalf("GET /branch = %d", code)
	}
	// Newest first: commit 3 (2 jobs), commit 2 (2 failed, 22 passed).
	if i3, i2 := strings.Index(body, `data-commit="`+hexSHA(3)), strings.Index(body, `data-commit="`+hexSHA(2)); i3 < 0 || i2 < i3 {
		t.Fatalf("commits out of order or missing:\n%s", body)
	}
	for _, want := range []string{"2 passed", `<b class="fail-count">2 failed</b> · 22 passed`, "m03/test/amd64 failed", "all 24 jobs", "took"} {
		if !strings.Contains(body, want) {
			t.Errorf("branch page: no %q", want)
		}
	}
	if strings.Contains(body, "m04/test/amd64") {
		t.Error("the branch page lists a passed job outright; it should only count it")
	}
	// Older: commit 1 on the next page, and no link on from there.
	m := regexp.MustCompile(`href="(/branch\?after=[^"]+)" id="older"`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no older link in\n%s", body)
	}
	_, older, _ := f.get(strings.ReplaceAll(m[1], "&amp;", "&"))
	if !strings.Contains(older, `data-commit="`+hexSHA(1)) || strings.Contains(older, `data-commit="`+hexSHA(2)) || strings.Contains(older, `id="older"`) ||
		!strings.Contains(older, `id="newest"`) {
		t.Errorf("older page:\n%s", older)
	}
	// All jobs of a commit, on demand.
	_, chips, _ := f.get("/branch/jobs?repo=proj&branch=main&commit=" + hexSHA(2) + "&fragment=1")
	if n := strings.Count(chips, `class="chip `); n != 24 {
		t.Errorf("all jobs of commit 2: %d chips, want 24", n)
	}
}

func TestModuleFilterSearchAndHistory(t *testing.T) {
	f := newWebFixture(t, "")
	f.seedModules()
	_, body, _ := f.get("/modules?repo=proj&failing=1")
	if n := strings.Count(body, "<tr data-module="); n != 2 || !strings.Contains(body, `data-module="m03"`) || !strings.Contains(body, `data-module="m07"`) {
		t.Errorf("failing only: %d rows", n)
	}
	_, body, _ = f.get("/modules?repo=proj&q=M1")
	if n := strings.Count(body, "<tr data-module="); n != 2 { // m10, m11
		t.Errorf("search M1: %d rows, want m10 and m11", n)
	}
	if !strings.Contains(body, `href="/module?module=m10&amp;repo=proj"`) {
		t.Errorf("module rows do not link to the module's history")
	}
	_, body, _ = f.get("/module?repo=proj&module=m03")
	// m03: commits 1 and 2 on main (2 archs each), dev's one: 5 checks.
	if n := strings.Count(body, `<td><a class="chip `); n != 5 {
		t.Errorf("m03's history: %d rows, want 5", n)
	}
	if !strings.Contains(body, `id="trends"`) || !strings.Contains(body, "<svg class=\"trend\"") {
		t.Errorf("m03's history has no duration trend")
	}
	if i, j := strings.Index(body, "Dana"), strings.Index(body, "Alice"); i < 0 || j < i {
		t.Errorf("m03's history not newest first")
	}
	if !strings.Contains(body, `href="/module?branch=dev&amp;module=m03&amp;repo=proj"`) {
		t.Error("m03's history does not link each branch's own")
	}
	_, body, _ = f.get("/module?repo=proj&module=m03&branch=main&limit=2")
	if n := strings.Count(body, `<td><a class="chip `); n != 2 {
		t.Errorf("m03 on main, 2 a page: %d rows", n)
	}
	m := regexp.MustCompile(`id="older" href="([^"]+)"`).FindStringSubmatch(body)
	if m == nil {
		t.Fatal("no older link on m03's history on main: 4 checks, 2 a page")
	}
	_, older, _ := f.get(strings.ReplaceAll(m[1], "&amp;", "&"))
	if n := strings.Count(older, `<td><a class="chip `); n != 2 || !strings.Contains(older, `id="newer"`) || strings.Contains(older, `id="older"`) || !strings.Contains(older, "Alice") {
		t.Errorf("older page of m03: %d rows", n)
	}
}

func TestSearchFindsEverything(t *testing.T) {
	f := newWebFixture(t, "")
	f.seedModules()
	for q, want := range map[string][]string{
		"dev":          {`id="found-branches"`, "proj · dev"},
		"m07":          {`id="found-modules"`, "/module?module=m07&amp;repo=proj", "m07/test · amd64"},
		"proj":         {`id="found-repos"`},
		"bob":          {"Bob", "m03/test"},
		hexSHA(2)[:38]: {"m07/test"},
		"nothing-x":    {"No job matches."},
	} {
		code, body, _ := f.get("/search?q=" + url.QueryEscape(q))
		for _, w := range want {
			if code != 200 || !strings.Contains(body, w) {
				t.Errorf("search %q = %d: no %q", q, code, w)
			}
		}
	}
	if _, body, _ := f.get("/search?q=" + strings.Repeat("x", 300)); !strings.Contains(body, "at most 200 bytes") {
		t.Error("a long search is not refused")
	}
}

func TestBadges(t *testing.T) {
	f := newWebFixture(t, "")
	f.seedModules()
	for path, want := range map[string]string{
		"/badge/proj/main.svg":                         "2 failing",
		"/badge/proj/dev.svg":                          "running",
		"/badge/proj/main.svg?job=m01/test&arch=arm64": "passing",
		"/badge/proj/main.svg?job=m03/test&arch=amd64": "failing",
	} {
		code, body, h := f.get(path)
		if code != 200 || h.Get("Content-Type") != "image/svg+xml" || !strings.Contains(body, ">"+want+"</text>") || !strings.HasPrefix(body, "<svg") {
			t.Errorf("GET %s = %d %s:\n%s", path, code, h.Get("Content-Type"), body)
		}
	}
	if code, body, h := f.get("/badge/proj/nope.svg"); code != 404 || h.Get("Content-Type") != "image/svg+xml" || !strings.Contains(body, "unknown") {
		t.Errorf("unknown branch badge = %d %s", code, body)
	}
	if code, body, _ := f.get("/badge/proj/%3Cscript%3E.svg?job=%3Cb%3E"); strings.Contains(body, "<b>") || code != 404 {
		t.Errorf("badge of a hostile name = %d:\n%s", code, body)
	}
	if code, body, h := f.get("/favicon.svg?status=failed"); code != 200 || h.Get("Content-Type") != "image/svg+xml" || !strings.Contains(body, "#c62828") {
		t.Errorf("favicon = %d %s", code, body)
	}
}

func TestLatestArtifacts(t *testing.T) {
	f := newWebFixture(t, "")
	n := f.seedModules()
	// m01 on amd64 passed at commits 1 and 2 (commit 3 did not check it).
	code, body, h := f.get("/artifacts/latest/proj/main/m01%2Ftest/amd64/bin/tool")
	if code != 200 || body != "tool of commit 2" || h.Get("X-Jetci-Commit") != hexSHA(2) {
		t.Fatalf("latest m01 tool = %d %q (%s)", code, body, h.Get("X-Jetci-Commit"))
	}
	var list struct {
		Commit    string
		Artifacts []events.Artifact
	}
	code, body, _ = f.get("/artifacts/latest/proj/main/m01%2Ftest/amd64/")
	if err := json.Unmarshal([]byte(body), &list); code != 200 || err != nil || list.Commit != hexSHA(2) || len(list.Artifacts) != 1 {
		t.Fatalf("listing = %d %s", code, body)
	}
	// A newer failing run does not count; a job without artifacts is a 404.
	f.moduleRun("main", hexSHA(4), "m01", "amd64", 5000, events.StatusFailed, time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC), "Eve",
		map[string]string{"bin/tool": "broken tool"})
	f.waitRecords(n + 1)
	if code, body, _ = f.get("/artifacts/latest/proj/main/m01%2Ftest/amd64/bin/tool"); code != 200 || body != "tool of commit 2" {
		t.Errorf("after a failing run: %d %q", code, body)
	}
	for path, want := range map[string]int{
		"/artifacts/latest/proj/main/m02%2Ftest/amd64/bin/tool": 404,
		"/artifacts/latest/proj/main/m01%2Ftest/amd64/nope":     404,
		"/artifacts/latest/proj/nope/m01%2Ftest/amd64/bin/tool": 404,
	} {
		if code, body, _ := f.get(path); code != want {
			t.Errorf("GET %s = %d %s, want %d", path, code, body, want)
		}
	}
}

func TestErrorPagesMessagesAndTimes(t *testing.T) {
	f := newWebFixture(t, "")
	f.seed()
	code, body, h := f.get("/no/such/page")
	if code != 404 || !strings.Contains(body, `id="error"`) || !strings.Contains(body, "404 · Not Found") || !strings.Contains(body, "<header>") ||
		!strings.HasPrefix(h.Get("Content-Type"), "text/html") {
		t.Errorf("404 page = %d:\n%s", code, body)
	}
	if _, body, _ := f.get("/job/00000000000000000000"); !strings.Contains(body, "no job 00000000000000000000") || !strings.Contains(body, `id="error"`) {
		t.Errorf("missing job page:\n%s", body)
	}
	// ?msg= shows only the notices jetci has words for.
	if _, body, _ := f.get("/?msg=" + url.QueryEscape("Session expired. Re-enter your admin token at http://evil.example/login")); strings.Contains(body, "evil.example") ||
		strings.Contains(body, `role="status"`) {
		t.Error("?msg= put foreign text in the notice box")
	}
	if _, body, _ := f.get("/?err=" + url.QueryEscape("<b>x</b>")); strings.Contains(body, "<b>x</b>") || strings.Contains(body, `role="status"`) {
		t.Error("?err= put foreign text in the notice box")
	}
	if _, body, _ := f.get("/?msg=queued"); !strings.Contains(body, `<div class="flash" role="status">Queued.</div>`) {
		t.Error("a known ?msg= is not shown")
	}
	// Times carry their zone: a <time datetime> in UTC.
	_, body, _ = f.get("/job/" + jref("proj", "main", "1111111111111111111111111111111111111111", "test", "amd64").JobID)
	if !regexp.MustCompile(`<time datetime="2026-01-02T03:04:06Z" title="2026-01-02T03:04:06Z">2026-01-02 03:04:06 UTC</time>`).MatchString(body) {
		t.Errorf("the job page's started time is not a <time> with its zone:\n%s", body)
	}
	if _, body, _ := f.get(branchURL("proj", "main")); !strings.Contains(body, `data-rel="ago"`) {
		t.Error("the branch page's times are not relative <time>s")
	}
}

func TestRunnersPageNamesTheJobs(t *testing.T) {
	f := newWebFixture(t, "")
	ref := jref("proj", "feature/x", "5555555555555555555555555555555555555555", "build", "riscv64")
	f.run(ref, 7, events.StatusRunning, "", nil)
	f.waitFor(ref.JobID, func(r Record) bool { return r.Status == events.StatusRunning })
	kv, err := f.s.JS.KeyValue(f.ctx, events.BucketRunners)
	if err != nil {
		t.Fatal(err)
	}
	l := events.Lease{ID: "r1", Arch: "riscv64", Pool: "default", Slots: 1, Busy: 1, Jobs: []events.LeasedJob{{JobID: ref.JobID, Attempt: 1}},
		Host: "h", StartedAt: time.Now(), HeartbeatAt: time.Now()}
	data, _ := json.Marshal(l)
	if _, err := kv.Put(f.ctx, events.LeaseKey("r1"), data); err != nil {
		t.Fatal(err)
	}
	brokertest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		_, body, _ := f.get("/runners")
		if !strings.Contains(body, "proj · feature/x · build · riscv64") || !strings.Contains(body, `href="/job/`+ref.JobID+`"`) {
			return fmt.Errorf("runners page:\n%s", body)
		}
		return nil
	})
}

// FuzzBadgeSVG: whatever a job or arch is called, a badge is well-formed
// SVG whose texts say exactly the label and status.
func FuzzBadgeSVG(f *testing.F) {
	for _, s := range []string{"jetci", "<script>", "m1/test amd64", "a&b", `"'`, "ünï", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, label string) {
		if !utf8.ValidString(label) || strings.ContainsFunc(label, func(r rune) bool { return r < 0x20 || r == 0xFFFE || r == 0xFFFF }) {
			t.Skip() // not text XML can hold; names are validated long before
		}
		b := badgeSVG(label, "passing", "#1a7f37")
		var doc struct {
			Title string   `xml:"title"`
			Texts []string `xml:"g>text"`
		}
		if err := xml.Unmarshal(b, &doc); err != nil {
			t.Fatalf("badge of %q is not XML: %v\n%s", label, err, b)
		}
		if len(doc.Texts) != 2 || doc.Texts[0] != label || doc.Texts[1] != "passing" {
			t.Fatalf("badge of %q says %q", label, doc.Texts)
		}
	})
}
