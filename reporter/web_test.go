package reporter

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter/readmodel"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

const testToken = "test-admin-token"

// webFixture is a reporter on a real embedded JetStream, fed real events.
type webFixture struct {
	t    *testing.T
	s    *brokertest.Server
	rep  *Reporter
	base string
	ctx  context.Context
	sign *testSigner
}

func newWebFixture(t *testing.T, token string) *webFixture {
	t.Helper()
	s := brokertest.Run(t)
	ctx, cancel := context.WithCancel(context.Background())
	rep, err := New(ctx, Config{HTTP: "127.0.0.1:0", AdminToken: token}, s.JS, brokertest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- rep.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return &webFixture{t: t, s: s, rep: rep, base: "http://" + rep.Addr(), ctx: ctx, sign: newTestSigner(s.JS)}
}

func jref(repo, branch, commit, job, arch string) events.JobRef {
	return events.JobRef{JobID: events.JobID(repo, branch, commit, job, arch), Repo: repo, Branch: branch, Commit: commit, Job: job, Arch: arch}
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func (f *webFixture) publish(ev any) {
	f.t.Helper()
	var ref events.JobRef
	kind := events.KindFinished
	switch e := ev.(type) {
	case *events.JobQueued:
		ref, kind = e.JobRef, events.KindQueued
	case *events.JobStarted:
		ref, kind = e.JobRef, events.KindStarted
	case *events.JobFinished:
		ref = e.JobRef
	}
	f.sign.publish(f.ctx, f.t, events.ResultSubject(ref.Repo, ref.Branch, kind), ev)
}

// run publishes the whole life of one job attempt.
func (f *webFixture) run(ref events.JobRef, seq uint64, st events.Status, log string, arts map[string]string) {
	f.t.Helper()
	author := events.Person{Name: "Ada <Dev>", Email: "ada@example.com"}
	f.publish(&events.JobQueued{JobRef: ref, Pool: "default", Class: events.ClassFirst, QueueSeq: seq, QueuedAt: t0,
		Author: author, Subject: "change " + ref.Commit[:4] + " <b>bold</b>\n\nbody"})
	f.publish(&events.JobStarted{JobRef: ref, QueueSeq: seq, Attempt: 1, Runner: "r1", StartedAt: t0.Add(time.Second)})
	if st == events.StatusRunning {
		return
	}
	fin := &events.JobFinished{JobRef: ref, QueueSeq: seq, Attempt: 1, Runner: "r1", Status: st, DurationMs: 1500,
		StartedAt: t0.Add(time.Second), FinishedAt: t0.Add(2500 * time.Millisecond)}
	if st == events.StatusFailed {
		fin.ExitCode = 2
	}
	if log != "" {
		fin.Log = events.LogObject(ref.JobID, seq, 1)
		if _, err := f.rep.logs.PutString(f.ctx, fin.Log, log); err != nil {
			f.t.Fatal(err)
		}
	}
	for p, content := range arts {
		obj := events.ArtifactObject(ref.JobID, seq, 1, p)
		if _, err := f.rep.artifacts.PutString(f.ctx, obj, content); err != nil {
			f.t.Fatal(err)
		}
		fin.Artifacts = append(fin.Artifacts, events.Artifact{Path: p, Object: obj, Size: int64(len(content))})
	}
	f.publish(fin)
}

// waitFor polls the view until cond holds for job id.
func (f *webFixture) waitFor(id string, cond func(Record) bool) Record {
	f.t.Helper()
	var rec Record
	brokertest.CheckFor(f.t, 10*time.Second, 10*time.Millisecond, func() error {
		var ok bool
		rec, ok = f.rep.View().Job(id)
		if !ok || !cond(rec) {
			return fmt.Errorf("job %s: %+v", id, rec)
		}
		return nil
	})
	return rec
}

func (f *webFixture) get(path string) (int, string, http.Header) {
	f.t.Helper()
	resp, err := http.Get(f.base + path)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func (f *webFixture) getJSON(path string, v any) {
	f.t.Helper()
	code, body, h := f.get(path)
	if code != 200 || !strings.HasPrefix(h.Get("Content-Type"), "application/json") {
		f.t.Fatalf("GET %s = %d %s: %s", path, code, h.Get("Content-Type"), body)
	}
	if err := json.Unmarshal([]byte(body), v); err != nil {
		f.t.Fatalf("GET %s: %v", path, err)
	}
}

func (f *webFixture) post(path, token string, body string) (int, map[string]any) {
	f.t.Helper()
	req, _ := http.NewRequest("POST", f.base+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// seed fills the fixture with two branches, two jobs on two archs.
func (f *webFixture) seed() (failed, passed events.JobRef) {
	const c1, c2 = "1111111111111111111111111111111111111111", "2222222222222222222222222222222222222222"
	passed = jref("proj", "main", c1, "test", "amd64")
	f.run(passed, 1, events.StatusPassed, "ok\n", map[string]string{"dist/app.bin": "binary!", "report.txt": "all good"})
	f.run(jref("proj", "main", c1, "test", "arm64"), 2, events.StatusPassed, "ok\n", nil)
	f.run(jref("proj", "main", c1, "lint", "amd64"), 3, events.StatusPassed, "ok\n", nil)
	failed = jref("proj", "feature/ünï x", c2, "test", "amd64")
	f.run(failed, 4, events.StatusFailed, "\x1b[31mFAIL\x1b[0m TestThing <script>alert(1)</script>\n", nil)
	f.run(jref("proj", "feature/ünï x", c2, "test", "arm64"), 5, events.StatusPassed, "ok\n", nil)
	f.waitFor(failed.JobID, func(r Record) bool { return r.Status == events.StatusFailed })
	f.waitFor(passed.JobID, func(r Record) bool { return r.Status == events.StatusPassed })
	brokertest.CheckFor(f.t, 10*time.Second, 10*time.Millisecond, func() error {
		if recs, _, err := f.rep.View().Results(context.Background(), Filter{All: true}, readmodel.Page{Limit: 100}, 0); err != nil || len(recs) != 5 {
			return fmt.Errorf("%d records (%v)", len(recs), err)
		}
		return nil
	})
	return failed, passed
}

func TestPagesRenderRealResults(t *testing.T) {
	f := newWebFixture(t, "")
	failed, passed := f.seed()
	for _, tt := range []struct {
		path string
		want []string
	}{
		{"/", []string{"<h2>proj</h2>", "feature/ünï x", "chip cell failed", "chip cell passed", "lint<br>", "arm64"}},
		{branchURL("proj", "feature/ünï x"), []string{"change 2222 &lt;b&gt;bold&lt;/b&gt;", "Ada &lt;Dev&gt;", "test/amd64 failed"}},
		{commitURL("proj", "main", "1111"), []string{"1111111111111111111111111111111111111111", "/job/" + passed.JobID, "ada@example.com"}},
		{"/job/" + failed.JobID, []string{"FAIL TestThing &lt;script&gt;", "exit code</dt><dd>2", "Attempts", "read-only"}},
		{"/job/" + passed.JobID, []string{"dist/app.bin", "/api/v1/jobs/" + passed.JobID + "/artifacts/dist/app.bin?attempt=1", "7 B"}},
		{"/runners", []string{"No runner is connected"}},
		{"/queue", []string{"Nothing is waiting"}},
	} {
		code, body, h := f.get(tt.path)
		if code != 200 || !strings.HasPrefix(h.Get("Content-Type"), "text/html") {
			t.Errorf("GET %s = %d %s", tt.path, code, h.Get("Content-Type"))
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(body, w) {
				t.Errorf("GET %s: no %q in\n%s", tt.path, w, body)
			}
		}
		if strings.Contains(body, "<script>alert") || strings.Contains(body, "\x1b[") {
			t.Errorf("GET %s: unescaped log or subject", tt.path)
		}
		if regexp.MustCompile(`(src|href)="(https?:)?//`).MatchString(body) {
			t.Errorf("GET %s: external asset", tt.path)
		}
	}
	for path, code := range map[string]int{
		"/job/00000000000000000000": 404, "/commit?repo=proj&branch=main&commit=9999": 404,
		"/branch": 400, "/nope": 404,
	} {
		if got, _, _ := f.get(path); got != code {
			t.Errorf("GET %s = %d, want %d", path, got, code)
		}
	}
	// Golden: the overview's and a commit's live regions, which hold no clock.
	golden(t, "overview.html", f, "/?fragment=1")
	golden(t, "commit.html", f, commitURL("proj", "feature/ünï x", failed.Commit)+"&fragment=1")
}

func golden(t *testing.T, name string, f *webFixture, path string) {
	t.Helper()
	_, body, _ := f.get(path)
	file := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (run go test ./reporter -run %s -update to create it)", err, t.Name())
	}
	if body != string(want) {
		t.Errorf("GET %s differs from %s (go test ./reporter -run %s -update rewrites it):\n%s", path, file, t.Name(), body)
	}
}

func TestAPIServesEverythingThePagesShow(t *testing.T) {
	f := newWebFixture(t, "")
	failed, passed := f.seed()

	var repos struct{ Repos []RepoSummary }
	f.getJSON("/api/v1/repos", &repos)
	if len(repos.Repos) != 1 || len(repos.Repos[0].Branches) != 2 || len(repos.Repos[0].Columns) != 3 {
		t.Fatalf("repos %+v", repos)
	}
	if b := repos.Repos[0].Branches[0]; b.Branch != "main" || b.Status != events.StatusPassed {
		t.Errorf("main first and passed: %+v", b)
	}
	var branches struct{ Branches []BranchSummary }
	f.getJSON("/api/v1/branches?repo=proj", &branches)
	if len(branches.Branches) != 2 || branches.Branches[1].Status != events.StatusFailed {
		t.Errorf("branches %+v", branches)
	}
	var commits struct{ Commits []Commit }
	f.getJSON("/api/v1/commits?"+url.Values{"repo": {"proj"}, "branch": {"feature/ünï x"}}.Encode(), &commits)
	if len(commits.Commits) != 1 || len(commits.Commits[0].Jobs) != 2 || commits.Commits[0].Status != events.StatusFailed {
		t.Errorf("commits %+v", commits)
	}
	var c Commit
	f.getJSON("/api/v1/commits/1111?repo=proj&branch=main", &c)
	if len(c.Jobs) != 3 {
		t.Errorf("commit %+v", c)
	}
	var rec Record
	f.getJSON("/api/v1/jobs/"+failed.JobID, &rec)
	if rec.Status != events.StatusFailed || rec.ExitCode != 2 || len(rec.Attempts) != 1 || rec.Attempts[0].Runner != "r1" {
		t.Errorf("job %+v", rec)
	}
	if code, body, _ := f.get("/api/v1/jobs/" + failed.JobID + "/log"); code != 200 || !strings.Contains(body, "FAIL") {
		t.Errorf("log = %d %q", code, body)
	}
	if code, body, _ := f.get("/api/v1/logs/" + failed.JobID + "/1"); code != 200 || !strings.Contains(body, "FAIL") {
		t.Errorf("old log path = %d %q", code, body)
	}
	var arts struct{ Artifacts []events.Artifact }
	f.getJSON("/api/v1/jobs/"+passed.JobID+"/artifacts", &arts)
	if len(arts.Artifacts) != 2 {
		t.Errorf("artifacts %+v", arts)
	}
	code, body, h := f.get("/api/v1/jobs/" + passed.JobID + "/artifacts/dist/app.bin")
	if code != 200 || body != "binary!" || !strings.Contains(h.Get("Content-Disposition"), `filename=app.bin`) {
		t.Errorf("artifact = %d %q %v", code, body, h)
	}
	var runners struct{ Runners []events.Lease }
	f.getJSON("/api/v1/runners", &runners)
	var queue struct{ Partitions []Partition }
	f.getJSON("/api/v1/queue", &queue)
	var results struct{ Results []Record }
	f.getJSON("/api/v1/results?repo=proj&branch=main", &results)
	if len(results.Results) != 3 {
		t.Errorf("results %d", len(results.Results))
	}
	// Errors are JSON with a message and a fitting status.
	for path, code := range map[string]int{
		"/api/v1/jobs/00000000000000000000":                            404,
		"/api/v1/jobs/zz/log":                                          400,
		"/api/v1/jobs/" + failed.JobID + "/log?attempt=7":              404,
		"/api/v1/jobs/" + failed.JobID + "/log?attempt=x":              400,
		"/api/v1/jobs/" + passed.JobID + "/artifacts/nope":             404,
		"/api/v1/jobs/" + passed.JobID + "/artifacts/../../etc/passwd": 404,
		"/api/v1/branches":                                             400,
		"/api/v1/branches?repo=nope":                                   404,
		"/api/v1/commits?repo=proj":                                    400,
		"/api/v1/commits?repo=proj&branch=main&limit=-1":               400,
		"/api/v1/nothing":                                              404,
	} {
		got, body, h := f.get(path)
		var e struct{ Error string }
		if got != code || json.Unmarshal([]byte(body), &e) != nil || e.Error == "" || h.Get("Content-Type") != "application/json" {
			t.Errorf("GET %s = %d %q, want %d with a JSON error", path, got, body, code)
		}
	}
	if code, body := f.post("/api/v1/jobs/"+failed.JobID, "", ""); code != 405 || body["error"] == nil {
		t.Errorf("POST on a GET route = %d %v", code, body)
	}
}

func TestActionsNeedTheToken(t *testing.T) {
	f := newWebFixture(t, testToken)
	failed, _ := f.seed()
	// An observer answering triggers, recording what it was asked.
	asked := make(chan *events.TriggerRequest, 10)
	sub, err := f.s.NC.Subscribe(events.TriggerSubject("proj"), func(m *nats.Msg) {
		req, _ := events.DecodeAs[events.TriggerRequest](m.Data)
		asked <- req
		reply := &events.TriggerReply{Commit: failed.Commit, TriggerID: "t1"}
		if req.Branch == "gone" {
			reply = &events.TriggerReply{Error: `no branch "gone" in repo proj`}
		}
		data, _ := events.Encode(reply)
		_ = m.Respond(data)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	for _, tok := range []string{"", "wrong-token"} {
		if code, _ := f.post("/api/v1/jobs/"+failed.JobID+"/recheck", tok, ""); code != 401 {
			t.Errorf("recheck with token %q = %d, want 401", tok, code)
		}
	}
	code, body := f.post("/api/v1/jobs/"+failed.JobID+"/recheck", testToken, "")
	if code != 202 || body["trigger_id"] != "t1" {
		t.Fatalf("recheck = %d %v", code, body)
	}
	if req := <-asked; req.Repo != "proj" || req.Branch != failed.Branch || req.Commit != failed.Commit || req.Job != "test" || req.Arch != "amd64" {
		t.Errorf("recheck asked %+v", req)
	}
	code, body = f.post("/api/v1/trigger", testToken, `{"repo":"proj","branch":"main"}`)
	if code != 202 {
		t.Fatalf("trigger = %d %v", code, body)
	}
	if req := <-asked; req.Branch != "main" || req.Commit != "" || req.Job != "" {
		t.Errorf("trigger asked %+v", req)
	}
	for body, want := range map[string]int{
		`{"repo":"proj","branch":"gone"}`: 400, `{"repo":"nobody","branch":"main"}`: 404,
		`{"repo":"proj"}`: 400, `{"repo":`: 400, `{"repo":"proj","branch":"main","extra":1}`: 400,
	} {
		if code, out := f.post("/api/v1/trigger", testToken, body); code != want || out["error"] == nil {
			t.Errorf("trigger %s = %d %v, want %d", body, code, out, want)
		}
	}
	// A finished job cannot be cancelled.
	if code, _ := f.post("/api/v1/jobs/"+failed.JobID+"/cancel", testToken, ""); code != 409 {
		t.Errorf("cancel of a finished job = %d, want 409", code)
	}
}

func TestReadOnlyWithoutToken(t *testing.T) {
	f := newWebFixture(t, "")
	failed, _ := f.seed()
	if code, body := f.post("/api/v1/jobs/"+failed.JobID+"/recheck", "anything", ""); code != 403 || !strings.Contains(fmt.Sprint(body["error"]), "--admin-token") {
		t.Errorf("recheck on a read-only reporter = %d %v", code, body)
	}
	resp, err := http.PostForm(f.base+"/action/recheck", url.Values{"job_id": {failed.JobID}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Errorf("form action on a read-only reporter = %d", resp.StatusCode)
	}
	if _, body, _ := f.get("/job/" + failed.JobID); strings.Contains(body, `id="recheck"`) {
		t.Error("read-only page shows the re-check button")
	}
}

func TestBrowserSessionAndCSRF(t *testing.T) {
	f := newWebFixture(t, testToken)
	failed, _ := f.seed()
	asked := make(chan *events.TriggerRequest, 10)
	sub, _ := f.s.NC.Subscribe(events.TriggerSubject("proj"), func(m *nats.Msg) {
		req, _ := events.DecodeAs[events.TriggerRequest](m.Data)
		asked <- req
		data, _ := events.Encode(&events.TriggerReply{Commit: failed.Commit, TriggerID: "t2"})
		_ = m.Respond(data)
	})
	defer sub.Unsubscribe()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	form := func(path string, v url.Values) (int, string) {
		resp, err := c.PostForm(f.base+path, v)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Request.URL.String() + "\n" + string(b)
	}
	// Not logged in: no buttons, and a forged post is refused.
	if code, _ := form("/action/recheck", url.Values{"job_id": {failed.JobID}}); code != 403 {
		t.Errorf("post before login = %d", code)
	}
	if _, body := form("/login", url.Values{"token": {"nope"}, "next": {"/job/" + failed.JobID}}); !strings.Contains(body, "Wrong token") {
		t.Errorf("wrong token: %s", body)
	}
	code, body := form("/login", url.Values{"token": {testToken}, "next": {"/job/" + failed.JobID}})
	if code != 200 || !strings.Contains(body, `id="recheck"`) {
		t.Fatalf("after login = %d: %s", code, body)
	}
	csrf := regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`).FindStringSubmatch(body)
	if csrf == nil {
		t.Fatal("no csrf field")
	}
	// The session alone is not enough: the form needs its CSRF field.
	if code, _ := form("/action/recheck", url.Values{"job_id": {failed.JobID}}); code != 403 {
		t.Errorf("post without csrf = %d", code)
	}
	code, body = form("/action/recheck", url.Values{"job_id": {failed.JobID}, "csrf": {csrf[1]}})
	if code != 200 || !strings.Contains(body, "Re-check queued") {
		t.Errorf("recheck from the page = %d: %s", code, body)
	}
	if req := <-asked; req.Job != "test" || req.Arch != "amd64" {
		t.Errorf("asked %+v", req)
	}
	// Redirects stay on this site.
	if code, body := form("/login", url.Values{"token": {testToken}, "next": {"//evil.example/"}}); code != 200 || !strings.HasPrefix(body, f.base+"/\n") {
		t.Errorf("login next=//evil: %d %s", code, strings.SplitN(body, "\n", 2)[0])
	}
}

func TestCancelQueuedAndRunningJobs(t *testing.T) {
	f := newWebFixture(t, testToken)
	ctx := f.ctx
	if err := events.DefaultSetup().Ensure(ctx, f.s.JS); err != nil {
		t.Fatal(err)
	}
	// A real job in the work queue, as the dispatcher would put it there.
	// A module's job queued by a culprit search: the cancelled result must
	// still name its module and its run, or the search would wait for it.
	q := jref("proj", "main", "3333333333333333333333333333333333333333", "test", "amd64")
	q.Module = "core"
	q.JobID = events.JobID(q.Repo, q.Branch, q.Commit, q.QualifiedJob(), q.Arch)
	const trigger = "bisect-0123456789abcdef0123-0"
	data, _ := events.Encode(&events.JobQueued{JobRef: q, Pool: "default", Class: events.ClassBisect, TriggerID: trigger, Steps: []string{"true"}})
	ack, err := f.s.JS.Publish(ctx, events.JobSubject("default", "amd64", events.ClassBisect, q.Repo, q.Branch), data)
	if err != nil {
		t.Fatal(err)
	}
	f.publish(&events.JobQueued{JobRef: q, Pool: "default", Class: events.ClassBisect, TriggerID: trigger, QueueSeq: ack.Sequence, QueuedAt: time.Now()})
	f.waitFor(q.JobID, func(r Record) bool { return r.Status == events.StatusQueued })

	heard := make(chan *events.CancelRequest, 4)
	sub, _ := f.s.NC.Subscribe(events.SubjectCancel+".*", func(m *nats.Msg) {
		c, _ := events.DecodeAs[events.CancelRequest](m.Data)
		heard <- c
	})
	defer sub.Unsubscribe()

	if code, body := f.post("/api/v1/jobs/"+q.JobID+"/cancel", testToken, ""); code != 202 {
		t.Fatalf("cancel = %d %v", code, body)
	}
	rec := f.waitFor(q.JobID, func(r Record) bool { return r.Status == events.StatusCancelled })
	if !strings.Contains(rec.Error, "before it started") {
		t.Errorf("cancelled record %+v", rec)
	}
	if _, err := f.rep.jobs.GetMsg(ctx, ack.Sequence); err == nil {
		t.Error("the cancelled job is still in the work queue")
	}
	results, err := f.s.JS.Stream(ctx, events.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	m, err := results.GetLastMsgForSubject(ctx, events.ResultSubject(q.Repo, q.Branch, events.KindFinished))
	if err != nil {
		t.Fatal(err)
	}
	if fin, err := events.DecodeAs[events.JobFinished](m.Data); err != nil || fin.Module != "core" || fin.Class != events.ClassBisect || fin.TriggerID != trigger {
		t.Errorf("the cancelled result %+v (%v) lost its module, class or trigger", fin, err)
	}
	// A running job: the runner is told, and the request is kept for a runner
	// that has not looked yet.
	r := jref("proj", "main", "4444444444444444444444444444444444444444", "test", "amd64")
	f.run(r, 99, events.StatusRunning, "", nil)
	f.waitFor(r.JobID, func(r Record) bool { return r.Status == events.StatusRunning })
	if code, body := f.post("/api/v1/jobs/"+r.JobID+"/cancel", testToken, ""); code != 202 {
		t.Fatalf("cancel running = %d %v", code, body)
	}
	for c := range heard {
		if c.JobID == r.JobID {
			if c.QueueSeq != 99 || c.By != "api" {
				t.Errorf("cancel request %+v", c)
			}
			break
		}
	}
	e, err := f.rep.cancels.Get(ctx, r.JobID)
	if err != nil {
		t.Fatalf("cancel request not kept: %v", err)
	}
	if c, err := events.DecodeAs[events.CancelRequest](e.Value()); err != nil || c.QueueSeq != 99 {
		t.Errorf("kept request %v %v", c, err)
	}
}

// sseEvents reads server-sent events from path until stop says so.
func sseEvents(t *testing.T, ctx context.Context, url string, each func(event, data string) bool) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("GET %s: %s", url, resp.Header.Get("Content-Type"))
	}
	sc := bufio.NewScanner(resp.Body)
	var event string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			event = line[len("event: "):]
		case strings.HasPrefix(line, "data: "):
			if !each(event, line[len("data: "):]) {
				return
			}
		}
	}
	t.Fatalf("stream %s ended: %v", url, sc.Err())
}

func TestEventsStreamChanges(t *testing.T) {
	f := newWebFixture(t, "")
	f.seed()
	ctx, cancel := context.WithTimeout(f.ctx, 15*time.Second)
	defer cancel()
	ref := jref("proj", "main", "5555555555555555555555555555555555555555", "test", "amd64")
	go func() {
		// Publish until the stream has surely started listening.
		for ctx.Err() == nil {
			f.publish(&events.JobQueued{JobRef: ref, Pool: "default", Class: events.ClassFirst, QueueSeq: uint64(time.Now().UnixNano()), QueuedAt: time.Now()})
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	sseEvents(t, ctx, f.base+"/api/v1/events", func(event, data string) bool {
		var c changeEvent
		if event != "change" || json.Unmarshal([]byte(data), &c) != nil {
			t.Fatalf("event %q %q", event, data)
		}
		return c.JobID != ref.JobID || c.Status != "queued" || c.Branch != "main"
	})
}

func TestLiveLogFollowsARunningJob(t *testing.T) {
	f := newWebFixture(t, "")
	if err := events.DefaultSetup().Ensure(f.ctx, f.s.JS); err != nil {
		t.Fatal(err)
	}
	ref := jref("proj", "main", "6666666666666666666666666666666666666666", "test", "amd64")
	f.run(ref, 7, events.StatusRunning, "", nil)
	f.waitFor(ref.JobID, func(r Record) bool { return r.Status == events.StatusRunning })
	chunk := func(seq uint64, attempt uint64, text string) {
		data, _ := events.Encode(&events.LogChunk{JobID: ref.JobID, QueueSeq: seq, Attempt: attempt, Seq: 1, Data: text})
		if _, err := f.s.JS.Publish(f.ctx, events.LogSubject(ref.JobID), data); err != nil {
			t.Fatal(err)
		}
	}
	chunk(3, 1, "an earlier run's output\n")
	chunk(7, 1, "first line \x1b[32mgreen\x1b[0m\n")
	_, body, _ := f.get("/job/" + ref.JobID)
	if !strings.Contains(body, "first line green") || strings.Contains(body, "earlier run") {
		t.Fatalf("job page log:\n%s", body)
	}
	m := regexp.MustCompile(`data-stream="([^"]+)"`).FindStringSubmatch(body)
	if m == nil {
		t.Fatal("no live stream on a running job's page")
	}
	stream := strings.ReplaceAll(m[1], "&amp;", "&")
	ctx, cancel := context.WithTimeout(f.ctx, 15*time.Second)
	defer cancel()
	chunk(7, 1, "second line\n")
	var got []string
	sseEvents(t, ctx, f.base+stream, func(event, data string) bool {
		switch event {
		case "chunk":
			var s string
			_ = json.Unmarshal([]byte(data), &s)
			got = append(got, s)
			if s == "second line\n" {
				f.publish(&events.JobFinished{JobRef: ref, QueueSeq: 7, Attempt: 1, Runner: "r1", Status: events.StatusPassed, FinishedAt: time.Now()})
			}
		case "done":
			return false
		}
		return true
	})
	if strings.Join(got, "") != "second line\n" {
		t.Errorf("streamed %q, want only what the page did not show", got)
	}
}

func TestARecheckDoesNotMakeAnOldCommitNew(t *testing.T) {
	f := newWebFixture(t, "")
	old := jref("proj", "main", strings.Repeat("1", 40), "test", "amd64")
	f.run(old, 1, events.StatusFailed, "", nil)
	young := jref("proj", "main", strings.Repeat("2", 40), "test", "amd64")
	f.publish(&events.JobQueued{JobRef: young, Pool: "default", Class: events.ClassFirst, QueueSeq: 2, QueuedAt: t0.Add(time.Minute)})
	f.publish(&events.JobFinished{JobRef: young, QueueSeq: 2, Attempt: 1, Status: events.StatusPassed, FinishedAt: t0.Add(2 * time.Minute)})
	// The old commit is re-checked later.
	f.publish(&events.JobQueued{JobRef: old, Pool: "default", Class: events.ClassUser, QueueSeq: 3, QueuedAt: t0.Add(time.Hour)})
	f.publish(&events.JobFinished{JobRef: old, QueueSeq: 3, Attempt: 1, Status: events.StatusPassed, FinishedAt: t0.Add(time.Hour)})
	f.waitFor(old.JobID, func(r Record) bool { return r.Attempt == 2 && r.Status == events.StatusPassed })
	f.waitFor(young.JobID, func(r Record) bool { return r.Status == events.StatusPassed })
	cs := f.rep.View().Commits("proj", "main", "", 0)
	if len(cs) != 2 || cs[0].Commit != young.Commit {
		t.Fatalf("newest first: %s then %s", events.Short(cs[0].Commit), events.Short(cs[1].Commit))
	}
	if rs := f.rep.View().Repos(""); rs[0].Branches[0].Head != young.Commit {
		t.Fatalf("head %s, want the newest commit", events.Short(rs[0].Branches[0].Head))
	}
}

// TestQueueListsEveryWaitingRun: a job that waits twice (a trigger beside its
// periodic run) is two entries of the queue, each at its class.
func TestQueueListsEveryWaitingRun(t *testing.T) {
	f := newWebFixture(t, "")
	ref := jref("proj", "main", sha('a'), "test", "amd64")
	f.publish(&events.JobQueued{JobRef: ref, Pool: "default", Class: events.ClassPeriodic, QueueSeq: 3, QueuedAt: time.Now()})
	f.publish(&events.JobQueued{JobRef: ref, Pool: "default", Class: events.ClassUser, TriggerID: "t1", QueueSeq: 4, QueuedAt: time.Now()})
	f.waitFor(ref.JobID, func(r Record) bool { return len(r.Waiting) == 2 })
	var queue struct{ Partitions []Partition }
	f.getJSON("/api/v1/queue", &queue)
	if len(queue.Partitions) != 1 {
		t.Fatalf("partitions %+v", queue.Partitions)
	}
	p := queue.Partitions[0]
	if len(p.Jobs) != 2 || p.Jobs[0].Class != events.ClassUser || p.Jobs[1].Class != events.ClassPeriodic || p.Jobs[1].QueueSeq != 3 ||
		p.Classes[events.ClassUser] != 1 || p.Classes[events.ClassPeriodic] != 1 {
		t.Errorf("queue %+v", p)
	}
	// The triggered run starts: the periodic run still waits.
	f.publish(&events.JobStarted{JobRef: ref, QueueSeq: 4, Attempt: 1, Runner: "r1", StartedAt: time.Now()})
	f.waitFor(ref.JobID, func(r Record) bool { return r.Status == events.StatusRunning })
	f.getJSON("/api/v1/queue", &queue)
	if p := queue.Partitions[0]; len(p.Jobs) != 1 || p.Jobs[0].Class != events.ClassPeriodic {
		t.Errorf("queue after the trigger's run started %+v", p.Jobs)
	}
}
