package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/internal/smtptest"
	"github.com/jetci/jetci/reporter"
)

const slowFailingTest = "import time, unittest\nclass TestBad(unittest.TestCase):\n    def test_bad(self):\n        time.sleep(3)\n        self.fail('I will fail')\n"

// gateSystem is the real binary, one process per service, with the broken-
// build flow on every branch of proj and mail to a recording SMTP server.
type gateSystem struct {
	t       *testing.T
	bin     string
	url     string
	web     string
	repo    *gitRepo
	sink    *smtptest.Sink
	pw      map[string]string // per-role passwords: each service runs as its role
	dispArg []string
	disp    *child
	logs    map[string]*syncBuffer
}

func (g *gateSystem) start(name string, args ...string) *child {
	g.t.Helper()
	c := &child{cmd: exec.Command(g.bin, append(args, "--log-format", "json")...), logs: &syncBuffer{}}
	c.cmd.Stdout, c.cmd.Stderr = c.logs, c.logs
	if err := c.cmd.Start(); err != nil {
		g.t.Fatal(err)
	}
	g.logs[name] = c.logs
	g.t.Cleanup(func() { c.kill(syscall.SIGTERM) })
	return c
}

func startGateSystem(t *testing.T, window time.Duration) *gateSystem {
	if testing.Short() {
		t.Skip("builds the binary and runs every service")
	}
	g := &gateSystem{t: t, bin: jetciBinary(t), repo: newGitRepo(t), sink: smtptest.Start(t), logs: map[string]*syncBuffer{}, pw: setRolePasswords(t)}
	data := t.TempDir()
	natsAddr, httpAddr := reserveAddr(t), reserveAddr(t)
	g.url, g.web = "nats://"+natsAddr, "http://"+httpAddr
	t.Cleanup(func() {
		for name, l := range g.logs {
			if s := l.String(); strings.Contains(s, "Violation") || strings.Contains(s, "permission denied") {
				t.Errorf("%s was refused something its role needs:\n%s", name, s)
			}
			if t.Failed() {
				t.Logf("%s log:\n%s", name, l.String())
			}
		}
	})
	g.start("server", append([]string{"server", "--config", "../../nats.conf", "--listen", natsAddr, "--monitor", "127.0.0.1:0", "--store", data + "/nats"}, as(g.pw, "admin")...)...)
	brokertest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(g.logs["server"].String(), "jetci streams ready") {
			return fmt.Errorf("streams not set up yet")
		}
		return nil
	})
	g.repo.Commit("tests pass", map[string]string{"tests/test_ok.py": passingTest})
	g.repo.Git("branch", "dev")
	g.repo.Git("branch", "rel")
	g.start("observer", append([]string{"observer", "--nats", g.url, "--repo", g.repo.Dir, "--poll", "100ms", "--cache", data + "/obs"}, as(g.pw, "observer")...)...)
	g.start("reporter", append([]string{"reporter", "--nats", g.url, "--http", httpAddr, "--admin-token", "gate-e2e-token",
		"--smtp", g.sink.Addr, "--smtp-tls", "none", "--mail-from", "ci@example.com", "--mail-to", "proj=boss@example.com",
		"--mail-results", "all", "--mail-managers", "all-failures", "--public-url", g.web}, as(g.pw, "reporter")...)...)
	g.dispArg = append([]string{"dispatcher", "--nats", g.url, "--gate", "proj", "--fix-window", window.String()}, as(g.pw, "dispatcher")...)
	g.disp = g.start("dispatcher", g.dispArg...)
	// Under the role users a runner signs its results with an identity the
	// admin issued.
	g.start("runner", append(append([]string{"runner", "--nats", g.url, "--id", "r1", "--work", data + "/r1", "--slots", "1"}, as(g.pw, "runner")...),
		identity(g.t, g.url, g.pw, "r1")...)...)
	return g
}

// admin is how the test itself connects: as the admin role.
func (g *gateSystem) admin() events.ConnectOptions {
	return events.ConnectOptions{Name: "test", Role: events.RoleAdmin, Log: zerolog.Nop(),
		Auth: events.Auth{User: events.RoleAdmin, Password: g.pw[events.RoleAdmin]}}
}

// commitAs commits on branch as author (name, name@example.com).
func (g *gateSystem) commitAs(branch, author, msg string, files map[string]string) string {
	g.t.Helper()
	g.repo.Git("checkout", "-q", branch)
	for p, c := range files {
		full := filepath.Join(g.repo.Dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			g.t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			g.t.Fatal(err)
		}
	}
	g.repo.Git("add", "-A")
	g.repo.Git("-c", "user.name="+author, "-c", "user.email="+strings.ToLower(author)+"@example.com", "commit", "-q", "--allow-empty", "-m", msg)
	return g.repo.Git("rev-parse", "HEAD")
}

// records reads a branch's records through the API (with their labels).
func (g *gateSystem) records(branch string) ([]reporter.Record, error) {
	var body struct{ Results []reporter.Record }
	err := getJSON(g.web+"/api/v1/results?"+url.Values{"repo": {"proj"}, "branch": {branch}, "all": {"1"}}.Encode(), &body)
	return body.Results, err
}

// wait polls until commit's record on branch satisfies ok.
func (g *gateSystem) wait(branch, commit, what string, ok func(reporter.Record) bool) reporter.Record {
	g.t.Helper()
	var got reporter.Record
	brokertest.CheckFor(g.t, 90*time.Second, 50*time.Millisecond, func() error {
		recs, err := g.records(branch)
		if err != nil {
			return err
		}
		for _, r := range recs {
			if r.Commit == commit {
				got = r
				if ok(r) {
					return nil
				}
				return fmt.Errorf("%s %s: %s (%s %s), want %s", branch, commit[:8], r.Status, r.Label, r.Reason, what)
			}
		}
		return fmt.Errorf("%s %s: no record yet", branch, commit[:8])
	})
	return got
}

func (g *gateSystem) waitStatus(branch, commit string, st events.Status) reporter.Record {
	g.t.Helper()
	return g.wait(branch, commit, string(st), func(r reporter.Record) bool { return r.Status == st })
}

func (g *gateSystem) branch(branch string) events.BranchState {
	var st events.BranchState
	nc, js, err := events.Connect(g.url, g.admin())
	if err != nil {
		return st
	}
	defer nc.Close()
	kv, err := js.KeyValue(context.Background(), events.BucketBranches)
	if err != nil {
		return st
	}
	if e, err := kv.Get(context.Background(), events.BranchKey("proj", branch)); err == nil {
		_ = json.Unmarshal(e.Value(), &st)
	}
	return st
}

func (g *gateSystem) waitBranch(branch, state string) events.BranchState {
	g.t.Helper()
	var st events.BranchState
	brokertest.CheckFor(g.t, 90*time.Second, 50*time.Millisecond, func() error {
		if st = g.branch(branch); st.State != state {
			return fmt.Errorf("%s %q (%s), want %q", branch, st.State, st.Reason, state)
		}
		return nil
	})
	return st
}

// mailsTo returns the mails to addr whose subject contains subject.
func (g *gateSystem) mailsTo(addr, subject string) []smtptest.Mail {
	var out []smtptest.Mail
	for _, m := range g.sink.Mails() {
		if slices.Contains(m.To, addr) && strings.Contains(m.Subject, subject) {
			out = append(out, m)
		}
	}
	return out
}

func (g *gateSystem) waitMail(addr, subject string) smtptest.Mail {
	g.t.Helper()
	var m smtptest.Mail
	brokertest.CheckFor(g.t, 60*time.Second, 50*time.Millisecond, func() error {
		ms := g.mailsTo(addr, subject)
		if len(ms) == 0 {
			var subjects []string
			for _, m := range g.sink.Mails() {
				subjects = append(subjects, strings.Join(m.To, ",")+": "+m.Subject)
			}
			return fmt.Errorf("no mail %q to %s among:\n%s", subject, addr, strings.Join(subjects, "\n"))
		}
		m = ms[0]
		return nil
	})
	return m
}

func (g *gateSystem) jetci(args ...string) string {
	g.t.Helper()
	out, err := exec.Command(g.bin, args...).CombinedOutput()
	if err != nil {
		g.t.Fatalf("jetci %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestBrokenBuildFlowOnTheBinary runs the seed's broken-build flow on the
// real binary, one process per service, one runner slot, three gated
// branches at once and commit sequences well past 8:
//
//   - main: a slow failing commit breaks it while a later commit waits in the
//     queue (paused at the break); a fix and ten more commits come inside
//     the window and are paused; the second check of the head passes; the
//     dispatcher is killed (SIGKILL) while it releases them, and the next one
//     finishes the release. The commit between break and fix fails with the
//     break: "broken by …, fixed by …", and its author gets no mail.
//   - dev: no fix: the second check fails (failed); a fix is paused until
//     `jetci recheck` passes.
//   - rel: the same, opened by `jetci trigger` of the head.
func TestBrokenBuildFlowOnTheBinary(t *testing.T) {
	g := startGateSystem(t, 12*time.Second)
	var mainOK []string
	for i := range 5 { // interleaved: the stream's sequences mix branches
		mainOK = append(mainOK, g.commitAs("main", "Alice", fmt.Sprintf("main %d", i), map[string]string{"main.txt": fmt.Sprint(i)}))
		g.commitAs("dev", "Alice", fmt.Sprintf("dev %d", i), map[string]string{"dev.txt": fmt.Sprint(i)})
		g.commitAs("rel", "Alice", fmt.Sprintf("rel %d", i), map[string]string{"rel.txt": fmt.Sprint(i)})
	}
	for i := 5; i < 10; i++ {
		mainOK = append(mainOK, g.commitAs("main", "Alice", fmt.Sprintf("main %d", i), map[string]string{"main.txt": fmt.Sprint(i)}))
	}
	g.waitStatus("main", mainOK[9], events.StatusPassed)
	g.waitMail("alice@example.com", "passed") // --mail-results all

	// main: Bea's commit fails slowly; Nora's notes commit waits meanwhile.
	broke := g.commitAs("main", "Bea", "break", map[string]string{"tests/test_bad.py": slowFailingTest})
	g.waitStatus("main", broke, events.StatusRunning)
	notes := g.commitAs("main", "Nora", "notes", map[string]string{"NOTES": "n"})
	g.waitStatus("main", notes, events.StatusQueued)
	g.waitBranch("main", events.BranchBroken)
	g.wait("main", notes, "paused at the break", func(r reporter.Record) bool { return r.Status == events.StatusHeld })
	g.wait("main", broke, "first check failed", func(r reporter.Record) bool { return r.Label == "first check failed" })
	failMail := g.waitMail("bea@example.com", "FAILED")
	text := strings.ReplaceAll(failMail.Text, "\r\n", "\n")
	if i, j := strings.Index(text, "Failing tests:"), strings.Index(text, "Last lines of the log"); i < 0 || j < i || !strings.Contains(text[i:j], "test_bad") {
		t.Errorf("the failure mail does not list the failing test before the log:\n%s", text)
	}
	if !slices.Contains(failMail.To, "boss@example.com") {
		t.Errorf("the failure mail went to %v, not the managers", failMail.To)
	}
	g.waitMail("bea@example.com", "proj main is broken: fix it by")

	// dev and rel break too.
	devBroke := g.commitAs("dev", "Dan", "dev break", map[string]string{"tests/test_bad.py": failingTest})
	relBroke := g.commitAs("rel", "Rae", "rel break", map[string]string{"tests/test_bad.py": failingTest})

	// main: Finn's fix and ten commits by Mo, inside the window: paused.
	fix := g.commitAs("main", "Finn", "fix", map[string]string{"tests/test_bad.py": passingTest})
	var more []string
	for i := range 10 {
		more = append(more, g.commitAs("main", "Mo", fmt.Sprintf("more %d", i), map[string]string{"more.txt": fmt.Sprint(i)}))
	}
	head := more[len(more)-1]
	for _, c := range append([]string{fix}, more...) {
		g.waitStatus("main", c, events.StatusHeld)
	}
	brokertest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		page, err := getText(g.web + "/branch?repo=proj&branch=main")
		if err != nil {
			return err
		}
		if !strings.Contains(page, `<ul id="paused">`) || !strings.Contains(page, events.Short(fix)) || !strings.Contains(page, events.Short(notes)) {
			return fmt.Errorf("the banner does not list the paused commits")
		}
		return nil
	})
	if st := g.branch("main"); st.Held != 12 || st.Head != head {
		t.Errorf("main: %d held, head %s; want 12 and %s", st.Held, st.Head, events.Short(head))
	}

	// The window ends; the second check of the head passes and the branch
	// opens: kill the dispatcher while it releases, and start another.
	nc, js, err := events.Connect(g.url, g.admin())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	kv, err := js.KeyValue(context.Background(), events.BucketBranches)
	if err != nil {
		t.Fatal(err)
	}
	w, err := kv.Watch(context.Background(), events.BranchKey("proj", "main"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	killed := make(chan int, 1)
	go func() {
		for e := range w.Updates() {
			if e == nil {
				continue
			}
			var st events.BranchState
			// Half of the held commits are released: kill it mid-release.
			if json.Unmarshal(e.Value(), &st) == nil && st.State == events.BranchOpen && st.Held <= 6 {
				g.disp.kill(syscall.SIGKILL)
				killed <- st.Held
				return
			}
		}
	}()
	var left int
	select {
	case left = <-killed:
	case <-time.After(120 * time.Second):
		t.Fatal("main did not open")
	}
	t.Logf("dispatcher killed with %d of 12 held commits left to release", left)
	g.disp = g.start("dispatcher-2", g.dispArg...)
	st := g.waitBranch("main", events.BranchOpen)
	brokertest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		if st = g.branch("main"); st.Held != 0 {
			return fmt.Errorf("%d still held", st.Held)
		}
		return nil
	})
	if len(st.Fixes) != 1 || st.Fixes[0].BrokenBy != broke || st.Fixes[0].FixedBy != head || st.Fixes[0].Released != 12 {
		t.Fatalf("main fixes %+v", st.Fixes)
	}
	for i, c := range append([]string{fix}, more...) {
		rec := g.waitStatus("main", c, events.StatusPassed)
		// Released once, whatever the crash: one first check each (the
		// head also ran as the second check).
		var classes []events.Class
		for _, a := range rec.Attempts {
			classes = append(classes, a.Class)
		}
		want := []events.Class{events.ClassFirst}
		if i == len(more) {
			want = []events.Class{events.ClassSecond, events.ClassFirst}
		}
		if !slices.Equal(classes, want) {
			t.Errorf("main %s: attempts %v, want %v", events.Short(c), classes, want)
		}
	}
	wantLabel := fmt.Sprintf("broken by %s, fixed by %s", events.Short(broke), events.Short(head))
	g.wait("main", notes, wantLabel, func(r reporter.Record) bool { return r.Status == events.StatusFailed && r.Label == wantLabel })
	g.wait("main", broke, "fixed by", func(r reporter.Record) bool { return r.Label == "fixed by "+events.Short(head) })
	if st := g.branch("main"); st.State != events.BranchOpen {
		t.Fatalf("the released notes commit broke main again: %s", st.Reason)
	}
	open := g.waitMail("bea@example.com", "proj main is open again; 12 held commit(s) released")
	if !slices.Contains(open.To, "boss@example.com") {
		t.Errorf("the open mail went to %v", open.To)
	}
	fixed := g.waitMail("mo@example.com", "FIXED")
	if !slices.Contains(fixed.To, "bea@example.com") || !slices.Contains(fixed.To, "boss@example.com") {
		t.Errorf("the fixed mail went to %v", fixed.To)
	}

	// dev and rel: no fix in the window: the second check fails.
	for _, b := range []string{"dev", "rel"} {
		st := g.waitBranch(b, events.BranchFailed)
		if !strings.Contains(st.Reason, "second check") {
			t.Errorf("%s failed: %s", b, st.Reason)
		}
	}
	g.wait("dev", devBroke, "second check failed", func(r reporter.Record) bool { return r.Label == "second check failed" })
	g.waitMail("dan@example.com", "proj dev failed its second check: re-check needed")
	g.waitMail("rae@example.com", "proj rel failed its second check: re-check needed")
	devFix := g.commitAs("dev", "Dan", "dev fix", map[string]string{"tests/test_bad.py": passingTest})
	relFix := g.commitAs("rel", "Rae", "rel fix", map[string]string{"tests/test_bad.py": passingTest})
	g.waitStatus("dev", devFix, events.StatusHeld)
	g.waitStatus("rel", relFix, events.StatusHeld)
	// dev opens by a re-check, rel by a trigger of its head: the same rule.
	if out := g.jetci(append([]string{"recheck", "--nats", g.url, "--repo", "proj", "--branch", "dev"}, as(g.pw, "admin")...)...); !strings.Contains(out, devFix) {
		t.Errorf("jetci recheck: %s", out)
	}
	g.jetci(append([]string{"trigger", "--nats", g.url, "--repo", "proj", "--branch", "rel"}, as(g.pw, "admin")...)...)
	for b, fixCommit := range map[string]string{"dev": devFix, "rel": relFix} {
		st := g.waitBranch(b, events.BranchOpen)
		if len(st.Fixes) != 1 || st.Fixes[0].FixedBy != fixCommit {
			t.Errorf("%s fixes %+v", b, st.Fixes)
		}
		rec := g.waitStatus(b, fixCommit, events.StatusPassed)
		for _, a := range rec.Attempts {
			if a.Class == "" {
				t.Errorf("%s %s: an attempt without its class: %+v", b, events.Short(fixCommit), rec.Attempts)
			}
		}
		if rec.Attempts[0].Class != events.ClassUser || rec.Class != rec.Attempts[len(rec.Attempts)-1].Class {
			t.Errorf("%s %s: class %s, attempts %+v", b, events.Short(fixCommit), rec.Class, rec.Attempts)
		}
	}
	g.waitMail("dan@example.com", "proj dev is open again; 1 held commit(s) released")
	g.waitMail("rae@example.com", "proj rel is open again; 1 held commit(s) released")
	g.wait("rel", relBroke, "fixed by", func(r reporter.Record) bool { return r.Label == "fixed by "+events.Short(relFix) })

	// Nobody blamed Nora; each branch mail went out once.
	if ms := g.mailsTo("nora@example.com", ""); len(ms) != 0 {
		var subjects []string
		for _, m := range ms {
			subjects = append(subjects, m.Subject)
		}
		t.Errorf("Nora's notes commit, released with the break, was mailed: %v", subjects)
	}
	for _, s := range []string{"proj main is broken", "proj main is open again", "proj dev failed its second check", "proj dev is open again"} {
		if n := len(g.mailsTo("boss@example.com", s)); n != 1 {
			t.Errorf("%d mails %q to the managers, want 1", n, s)
		}
	}
}

// TestTriggerBesideAWaitingPeriodicRun: a trigger queues a run of a job
// whose periodic run still waits (same job id). Both run, and each is an
// attempt of the record with its own class and queue time.
func TestTriggerBesideAWaitingPeriodicRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := jetciBinary(t)
	repo := newGitRepo(t)
	c := repo.Commit("tests pass", map[string]string{"tests/test_ok.py": passingTest})
	url, _ := startUpWith(t, t.TempDir(), []string{"--runners", "0", "--periodic", "@every 1s"}, repo.Dir)
	// No runner: the first check and the periodic run wait.
	brokertest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		rec, err := recordOf(t, url, c)
		if err != nil {
			return err
		}
		if rec.Class != events.ClassPeriodic || len(rec.Waiting) < 2 {
			return fmt.Errorf("class %s, waiting %+v: want the periodic run queued behind the first check", rec.Class, rec.Waiting)
		}
		return nil
	})
	var out, errb strings.Builder
	if code := (&Main{Stdout: &out, Stderr: &errb}).Run(context.Background(), []string{"trigger", "--nats", url, "--repo", "proj", "--branch", "main"}); code != 0 {
		t.Fatalf("jetci trigger exited %d: %s", code, errb.String())
	}
	brokertest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		rec, err := recordOf(t, url, c)
		if err != nil {
			return err
		}
		if len(rec.Waiting) != 3 {
			return fmt.Errorf("waiting %+v: want the first check, the periodic run and the trigger's", rec.Waiting)
		}
		return nil
	})
	runnerProcess(t, bin, url, "r1", t.TempDir())
	var rec reporter.Record
	brokertest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		var err error
		if rec, err = recordOf(t, url, c); err != nil {
			return err
		}
		if len(rec.Attempts) < 3 || len(rec.Waiting) != 0 {
			return fmt.Errorf("%d attempts, %d waiting", len(rec.Attempts), len(rec.Waiting))
		}
		for _, a := range rec.Attempts {
			if !a.Status.Final() {
				return fmt.Errorf("attempt %d %s", a.N, a.Status)
			}
		}
		return nil
	})
	classes := map[events.Class]int{}
	for _, a := range rec.Attempts {
		if a.Class == "" || a.QueuedAt.IsZero() || a.Status != events.StatusPassed {
			t.Errorf("attempt %d (queue seq %d): class %q queued at %v, %s", a.N, a.QueueSeq, a.Class, a.QueuedAt, a.Status)
		}
		classes[a.Class]++
	}
	if classes[events.ClassFirst] != 1 || classes[events.ClassPeriodic] < 1 || classes[events.ClassUser] != 1 {
		t.Errorf("attempts by class %v, want one first, one user, the periodic run(s)", classes)
	}
}
