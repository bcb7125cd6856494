package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter"
)

// scaleFixture is a reporter holding the seed's scale (500 modules × 10
// branches × 3 archs, one full check per branch: 15,000 cells) and a small
// repo "app" with a few commits of whole-repo jobs, one of them running on
// a runner, one waiting for a runner that does not exist.
type scaleFixture struct {
	s                *brokertest.Server
	web              string
	svc, run         jetstream.JetStream
	running, waiting events.JobRef
}

const scaleToken = "scale-browser-token"

func newScaleFixture(t *testing.T) *scaleFixture {
	t.Helper()
	s := brokertest.Run(t)
	ctx, cancel := context.WithCancel(context.Background())
	rep, err := reporter.New(ctx, reporter.Config{HTTP: "127.0.0.1:0", AdminToken: scaleToken}, s.JS, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- rep.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := events.DefaultSetup().Ensure(ctx, s.JS); err != nil {
		t.Fatal(err)
	}
	f := &scaleFixture{s: s, web: "http://" + rep.Addr()}
	f.svc, f.run, err = reporter.SyntheticPublishers(ctx, s.JS)
	if err != nil {
		t.Fatal(err)
	}
	const jobs = 500 * 10 * 3
	for i := 0; i < jobs; i++ {
		for _, ev := range reporter.SyntheticJob(i, 500, 10, 3) {
			f.publish(t, ev)
		}
		if i%1000 == 0 {
			<-f.svc.PublishAsyncComplete()
			<-f.run.PublishAsyncComplete()
		}
	}
	// app: 25 commits of build × amd64, arm64 a minute apart, each build
	// a little slower; the last one's arm64 build runs, and a riscv64 job
	// waits for a runner nobody started.
	now := time.Now().Add(-30 * time.Minute)
	for c := 0; c < 25; c++ {
		commit := fmt.Sprintf("%040x", 0xa99000+c)
		for _, arch := range []string{"amd64", "arm64"} {
			ref := events.JobRef{JobID: events.JobID("app", "main", commit, "build", arch), Repo: "app", Branch: "main", Commit: commit, Job: "build", Arch: arch}
			at := now.Add(time.Duration(c) * time.Minute)
			seq := uint64(100000 + 2*c)
			if arch == "arm64" {
				seq++
			}
			if c == 24 && arch == "arm64" {
				f.running = ref
				at = time.Now().Add(-5 * time.Second)
			}
			st := events.StatusPassed
			if c >= 22 && arch == "amd64" {
				st = events.StatusFailed
			}
			f.job(t, ref, seq, at, st, time.Duration(60+c*5)*time.Second, c == 24 && arch == "arm64")
		}
	}
	f.waiting = events.JobRef{JobID: events.JobID("app", "main", fmt.Sprintf("%040x", 0xa99000+24), "build", "riscv64"), Repo: "app",
		Branch: "main", Commit: fmt.Sprintf("%040x", 0xa99000+24), Job: "build", Arch: "riscv64"}
	data, _ := events.Encode(&events.JobQueued{JobRef: f.waiting, Pool: "default", Class: events.ClassFirst, Steps: []string{"true"}})
	ack, err := s.JS.Publish(ctx, events.JobSubject("default", "riscv64", events.ClassFirst, "app", "main"), data)
	if err != nil {
		t.Fatal(err)
	}
	f.publish(t, reporter.SyntheticEvent{Subject: events.ResultSubject("app", "main", events.KindQueued), Event: &events.JobQueued{JobRef: f.waiting,
		Pool: "default", Class: events.ClassFirst, QueueSeq: ack.Sequence, QueuedAt: time.Now(), Author: events.Person{Name: "Rita"}, Subject: "port to riscv64"}})
	<-f.svc.PublishAsyncComplete()
	<-f.run.PublishAsyncComplete()
	// The runner holding the running job.
	kv, err := s.JS.KeyValue(ctx, events.BucketRunners)
	if err != nil {
		t.Fatal(err)
	}
	go func() { // its lease, renewed as a runner would
		for ctx.Err() == nil {
			l := events.Lease{ID: reporter.SyntheticRunner, Arch: "arm64", Pool: "default", Slots: 2, Busy: 1, Host: "builder-7",
				Jobs: []events.LeasedJob{{JobID: f.running.JobID, Attempt: 1}}, StartedAt: now, HeartbeatAt: time.Now()}
			b, _ := json.Marshal(l)
			_, _ = kv.Put(ctx, events.LeaseKey(l.ID), b)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	brokertest.CheckFor(t, 5*time.Minute, 100*time.Millisecond, func() error {
		var d reporter.Dashboard
		resp, err := http.Get(f.web + "/api/v1/dashboard")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
			return err
		}
		if d.Total.Total != jobs+3 || d.Total.Running != 1 || d.Total.NoRunner != 1 {
			return fmt.Errorf("dashboard totals %+v", d.Total)
		}
		return nil
	})
	return f
}

func (f *scaleFixture) publish(t *testing.T, ev reporter.SyntheticEvent) {
	t.Helper()
	data, err := events.Encode(ev.Event)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ev.With(f.svc, f.run).PublishAsync(ev.Subject, data); err != nil {
		t.Fatal(err)
	}
}

// job publishes one run of an app job, signed as the synthetic runner's.
func (f *scaleFixture) job(t *testing.T, ref events.JobRef, seq uint64, at time.Time, st events.Status, took time.Duration, running bool) {
	run, token := fmt.Sprintf("app%d", seq), fmt.Sprintf("%d.1", seq)
	author := events.Person{Name: "Ana Lyst", Email: "ana@example.com"}
	f.publish(t, reporter.SyntheticEvent{Subject: events.ResultSubject(ref.Repo, ref.Branch, events.KindQueued), Event: &events.JobQueued{JobRef: ref,
		Pool: "default", Class: events.ClassFirst, QueueSeq: seq, QueuedAt: at, Author: author, Subject: "app change " + ref.Commit[34:]}})
	f.publish(t, reporter.SyntheticEvent{Subject: events.ResultSubject(ref.Repo, ref.Branch, events.KindStarted), Event: &events.JobStarted{JobRef: ref,
		QueueSeq: seq, Attempt: 1, Runner: reporter.SyntheticRunner, StartedAt: at.Add(time.Second), Run: run, Token: token}})
	if running {
		return
	}
	code := 0
	if st == events.StatusFailed {
		code = 1
	}
	f.publish(t, reporter.SyntheticEvent{Subject: events.ResultSubject(ref.Repo, ref.Branch, events.KindFinished), Event: &events.JobFinished{JobRef: ref,
		QueueSeq: seq, Attempt: 1, Runner: reporter.SyntheticRunner, Run: run, Token: token, Status: st, ExitCode: code, DurationMs: took.Milliseconds(),
		StartedAt: at.Add(time.Second), FinishedAt: at.Add(time.Second + took)}})
}

// TestBrowserAtTheSeedsScale drives the pages of issue 18 in headless
// Chromium against 15,000 cells: the dashboard fits one screen, the branch
// page sums commits up and expands them on demand, the module grid filters
// and searches and links each module's history, the search finds modules
// and authors; times show in the viewer's zone and relative ones keep
// moving; the tab title and favicon carry the status; dark mode; the 404
// page; Cancel asks first; the runners page names its jobs; badges load;
// ?msg= shows nothing foreign; a phone-wide queue keeps its reasons legible.
func TestBrowserAtTheSeedsScale(t *testing.T) {
	bin := chromium(t)
	f := newScaleFixture(t)
	web := f.web
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true), chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1440, 900),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, 4*time.Minute)
	defer cancelT()
	run := func(what string, actions ...chromedp.Action) {
		t.Helper()
		if err := chromedp.Run(ctx, actions...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	eval := func(what, js string, out any) {
		t.Helper()
		run(what, chromedp.Evaluate(js, out))
	}
	// waitJS polls a JavaScript expression until it is true.
	waitJS := func(what, js string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			var ok bool
			if err := chromedp.Run(ctx, chromedp.Evaluate(js, &ok)); err == nil && ok {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		var body, loc string
		_ = chromedp.Run(ctx, chromedp.Evaluate(`document.body.innerText`, &body), chromedp.Location(&loc))
		t.Fatalf("%s: %s never held on %s:\n%.3000s", what, js, loc, body)
	}
	run("viewer in India", emulation.SetTimezoneOverride("Asia/Kolkata"))

	// 1. The dashboard: 11 branches, their counts, what fails, on one screen.
	run("open the dashboard", chromedp.Navigate(web+"/dashboard"), chromedp.WaitVisible("#dash-branches", chromedp.ByQuery))
	var rows int
	eval("branch rows", `document.querySelectorAll('#dash-branches tbody tr').length`, &rows)
	if rows != 11 {
		t.Errorf("dashboard: %d branch rows, want 11 (10 of proj, app's main)", rows)
	}
	var b0 string
	eval("b0's row", `document.querySelector('#dash-branches tr[data-branch="proj/b0"]').innerText`, &b0)
	// b0: 1,500 cells, one in seven failing (i%7 == 0 over its 1,500 jobs).
	if !strings.Contains(b0, "1,285") || !strings.Contains(b0, "215") {
		t.Errorf("b0's counts: %q, want 1,285 passing and 215 failing", b0)
	}
	var appRow string
	eval("app's row", `document.querySelector('#dash-branches tr[data-branch="app/main"]').innerText`, &appRow)
	if f := strings.Fields(appRow); len(f) < 6 {
		t.Errorf("app's row %q", appRow)
	}
	var failing string
	eval("failing list", `document.querySelector('#dash-branches').innerText`, &failing)
	for _, want := range []string{"proj · b3", "by Dev 0", "m000/test · amd64", "and 212 more", "app · main", "by Ana Lyst"} {
		if !strings.Contains(failing, want) {
			t.Errorf("the failing list has no %q:\n%s", want, failing)
		}
	}
	// One screen: a 1920 × 1080 display's browser window (about 950 px of
	// page below the browser's own bars).
	var height int
	run("a 1080p screen", emulation.SetDeviceMetricsOverride(1920, 950, 1, false))
	eval("page height", `document.documentElement.scrollHeight`, &height)
	run("back", emulation.ClearDeviceMetricsOverride())
	if height > 950 {
		t.Errorf("the dashboard is %d px high on a 1920 × 950 px window", height)
	}
	var title, icon string
	eval("title", `document.title`, &title)
	eval("favicon", `document.getElementById('favicon').href`, &icon)
	if !strings.HasPrefix(title, "✗ Dashboard") || !strings.HasSuffix(icon, "/favicon.svg?status=failed") {
		t.Errorf("title %q, favicon %q: want the failing mark and colour", title, icon)
	}
	if *screenshots {
		shot(t, ctx, "docs/dashboard.png")
	}

	// 5. Times: absolute ones in the viewer's zone, relative ones moving.
	run("open the runners", chromedp.Navigate(web+"/runners"), chromedp.WaitVisible("#runners", chromedp.ByQuery))
	var runners string
	waitJS("the runner's job", `document.querySelector('#runners').innerText.indexOf('app · main · build · arm64')>=0`)
	eval("runners", `document.querySelector('#runners').innerText`, &runners)
	if strings.Contains(runners, f.running.JobID) && !strings.Contains(runners, "build · arm64") {
		t.Errorf("the runners page shows a bare job id:\n%s", runners)
	}
	var first string
	eval("a running time", `document.querySelector('.runner-job time[data-rel]').textContent`, &first)
	waitJS("the running time moves", fmt.Sprintf(`document.querySelector('.runner-job time[data-rel]').textContent!==%q`, first))
	run("open a job page", chromedp.Navigate(web+"/job/"+events.JobID("app", "main", fmt.Sprintf("%040x", 0xa99000), "build", "amd64")),
		chromedp.WaitVisible("#log", chromedp.ByQuery))
	var stamp string
	eval("a started time", `document.querySelector('dl.facts time:not([data-rel])').textContent`, &stamp)
	if !strings.Contains(stamp, "GMT+5:30") && !strings.Contains(stamp, "IST") {
		t.Errorf("started time %q is not in the viewer's zone (India)", stamp)
	}

	// 3. The branch page: a 1,500-job commit summed up, expanded on demand.
	run("open b0", chromedp.Navigate(web+"/branch?repo=proj&branch=b0"), chromedp.WaitVisible("#commits", chromedp.ByQuery))
	var summary string
	eval("b0's summary", `document.querySelector('#commits .summary').innerText`, &summary)
	if summary != "215 failed · 1,285 passed" {
		t.Errorf("b0's head summary %q", summary)
	}
	var chips int
	eval("chips shown", `document.querySelectorAll('#commits a.chip').length`, &chips)
	if chips > 31 {
		t.Errorf("the branch page shows %d chips of a 1,500-job commit before asking", chips)
	}
	waitJS("the badge loads", `(function(i){return i.complete&&i.naturalWidth>40})(document.querySelector('#badge img'))`)
	eval("expand", `document.querySelector('details.alljobs summary').click()`, nil)
	waitJS("all 1,500 jobs", `document.querySelectorAll('details.alljobs .chips a.chip').length===1500`)
	run("open app main, 5 a page", chromedp.Navigate(web+"/branch?repo=app&branch=main&limit=5"), chromedp.WaitVisible("#older", chromedp.ByQuery))
	var took string
	eval("durations and trend", `document.querySelector('#trends').innerText`, &took)
	if !strings.Contains(took, "build · amd64") || !strings.Contains(took, "3m00s") { // build 20: 160s … 24: 180s
		t.Errorf("trend table %q", took)
	}
	waitJS("trend line", `document.querySelectorAll('#trends svg.trend polyline').length===2`)
	if *screenshots {
		shot(t, ctx, "docs/branch.png")
	}
	eval("older", `document.querySelector('#older').click()`, nil)
	run("older page", chromedp.WaitVisible("#newest", chromedp.ByQuery))
	var olderText string
	eval("older page", `document.querySelector('#commits').innerText`, &olderText)
	if !strings.Contains(olderText, "app change "+fmt.Sprintf("%06x", 0xa99000+19)) {
		t.Errorf("the older page does not hold commit 19:\n%s", olderText)
	}

	// 2. The module grid: failing only, search, a module's history.
	run("open the grid", chromedp.Navigate(web+"/modules?repo=proj"), chromedp.WaitVisible("#modules", chromedp.ByQuery))
	eval("failing only", `document.querySelector('#failing-only').click()`, nil)
	waitJS("filtered", `location.search.indexOf('failing=1')>=0&&document.querySelector('#modules')!==null`)
	var allFail bool
	eval("every row fails", `Array.from(document.querySelectorAll('#modules tbody tr')).every(function(tr){return tr.querySelector('.chip.failed')!==null})`, &allFail)
	if !allFail {
		t.Error("the failing-only grid shows a row with no failing cell")
	}
	if *screenshots {
		shot(t, ctx, "docs/modules.png")
	}
	eval("search m12", `(function(q){q.value='m12';q.form.submit()})(document.querySelector('#module-q'))`, nil)
	waitJS("searched", `location.search.indexOf('q=m12')>=0`)
	var mods []string
	eval("found modules", `Array.from(document.querySelectorAll('#modules tbody tr')).map(function(tr){return tr.dataset.module})`, &mods)
	if len(mods) == 0 {
		t.Fatal("searching m12 found no failing module")
	}
	for _, m := range mods {
		if !strings.Contains(m, "m12") {
			t.Errorf("searching m12 found %s", m)
		}
	}
	eval("a module's history", `document.querySelector('#modules tbody tr a').click()`, nil)
	run("the module's history", chromedp.WaitVisible("#module-history", chromedp.ByQuery))
	var hist int
	eval("history rows", `document.querySelectorAll('#module-history tbody tr').length`, &hist)
	if hist != 30 { // 10 branches × 3 archs, one check each
		t.Errorf("%s's history: %d rows, want 30", mods[0], hist)
	}

	// 4. Search: a module, an author.
	run("search", chromedp.Navigate(web+"/search?q=m007"), chromedp.WaitVisible("#found-modules", chromedp.ByQuery))
	run("search an author", chromedp.Navigate(web+"/search?q=ana+lyst"), chromedp.WaitVisible("#found-jobs", chromedp.ByQuery))
	waitJS("author's jobs", `document.querySelector('#found-jobs').innerText.indexOf('app · main')>=0`)

	// 5. Dark mode, 404, ?msg=.
	run("dark", emulation.SetEmulatedMedia().WithFeatures([]*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "dark"}}),
		chromedp.Navigate(web+"/no/such/page"), chromedp.WaitVisible("#error", chromedp.ByQuery))
	var bg, h1 string
	eval("background", `getComputedStyle(document.body).backgroundColor`, &bg)
	eval("404 heading", `document.querySelector('#error h1').innerText`, &h1)
	if bg != "rgb(22, 22, 24)" || h1 != "404 · Not Found" {
		t.Errorf("dark 404 page: background %s, heading %q", bg, h1)
	}
	if *screenshots {
		run("overview", chromedp.Navigate(web+"/"), chromedp.WaitVisible("table.grid", chromedp.ByQuery))
		shot(t, ctx, "docs/overview-dark.png")
	}
	run("light", emulation.SetEmulatedMedia().WithFeatures([]*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "light"}}))
	var notices int
	run("foreign msg", chromedp.Navigate(web+"/?msg="+strings.ReplaceAll("Session expired. Re-enter your token at http://evil.example/login", " ", "+")),
		chromedp.WaitVisible("#live", chromedp.ByQuery))
	eval("notices", `document.querySelectorAll('[role=status]').length`, &notices)
	if notices != 0 {
		t.Error("?msg= showed foreign text in a notice")
	}

	// 5. Cancel asks first: dismissed, nothing happens; accepted, it cancels.
	var dialogs atomic.Int32
	var accept atomic.Bool
	chromedp.ListenTarget(ctx, func(ev any) {
		if _, ok := ev.(*page.EventJavascriptDialogOpening); ok {
			yes := accept.Load()
			go func() {
				_ = chromedp.Run(ctx, page.HandleJavaScriptDialog(yes))
				dialogs.Add(1)
			}()
		}
	})
	waitDialogs := func(n int32) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for dialogs.Load() < n && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if dialogs.Load() < n {
			t.Fatalf("Cancel asked %d time(s), want %d", dialogs.Load(), n)
		}
	}
	run("log in", chromedp.Navigate(web+"/login?next=/job/"+f.waiting.JobID),
		chromedp.SendKeys(`input[name="token"]`, scaleToken, chromedp.ByQuery),
		chromedp.Submit(`input[name="token"]`, chromedp.ByQuery),
		chromedp.WaitVisible("#cancel", chromedp.ByQuery))
	eval("cancel, then no", `document.querySelector('#cancel').click()`, nil)
	waitDialogs(1)
	var loc string
	run("still here", chromedp.Location(&loc))
	if rec := jobRecord(t, web, f.waiting.JobID); strings.Contains(loc, "msg=") || rec.Status != events.StatusQueued {
		t.Fatalf("a dismissed Cancel still cancelled: %s, job %s", loc, rec.Status)
	}
	accept.Store(true)
	eval("cancel, then yes", `document.querySelector('#cancel').click()`, nil)
	waitDialogs(2)
	waitJS("cancel requested", `location.search.indexOf('msg=cancel')>=0`)
	brokertest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if rec := jobRecord(t, web, f.waiting.JobID); rec.Status != events.StatusCancelled {
			return fmt.Errorf("job %s after a confirmed Cancel", rec.Status)
		}
		return nil
	})

	// 7. A phone-wide queue: the reason keeps a readable width.
	run("phone", emulation.SetDeviceMetricsOverride(375, 740, 2, true))
	f.queueAnother(t)
	// The job page left behind reloads itself when the cancelled job's record
	// changes; a reload that lands as the queue is opened aborts that
	// navigation (net::ERR_ABORTED): open it again.
	brokertest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		return chromedp.Run(ctx, chromedp.Navigate(web+"/queue"))
	})
	run("open the queue", chromedp.WaitVisible("td.why", chromedp.ByQuery))
	var width float64
	eval("reason width", `document.querySelector('td.why').getBoundingClientRect().width`, &width)
	var right float64
	eval("reason's right edge", `document.querySelector('td.why').getBoundingClientRect().right`, &right)
	if width < 250 || right > 375 {
		t.Errorf("the queue reason is %.0f px wide, ending at %.0f px, on a 375 px phone: crushed or off screen", width, right)
	}
	if *screenshots {
		shot(t, ctx, "docs/queue-phone.png")
	}
}

// queueAnother queues a job no runner takes (the one before was cancelled).
func (f *scaleFixture) queueAnother(t *testing.T) {
	ref := f.waiting
	ref.Job = "lint"
	ref.JobID = events.JobID(ref.Repo, ref.Branch, ref.Commit, ref.Job, ref.Arch)
	f.publish(t, reporter.SyntheticEvent{Subject: events.ResultSubject("app", "main", events.KindQueued), Event: &events.JobQueued{JobRef: ref,
		Pool: "default", Class: events.ClassFirst, QueueSeq: 999999, QueuedAt: time.Now(), Author: events.Person{Name: "Rita"}, Subject: "port to riscv64"}})
	<-f.svc.PublishAsyncComplete()
	brokertest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		resp, err := http.Get(f.web + "/api/v1/jobs/" + ref.JobID)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("%d", resp.StatusCode)
		}
		return nil
	})
}

func jobRecord(t *testing.T, web, id string) reporter.Record {
	t.Helper()
	var rec reporter.Record
	resp, err := http.Get(web + "/api/v1/jobs/" + id)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&rec); err != nil {
		t.Fatal(err)
	}
	return rec
}
