package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/internal/smtptest"
	"github.com/jetci/jetci/reporter"
)

// startRunner runs `jetci runner` in this process against url; the returned
// func stops it and waits for it to exit.
func startRunner(t *testing.T, url string) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		// On the host backend: the bisection tests' steps keep state in
		// files outside their workspace, which a sandbox does not allow.
		done <- (&Main{Stdout: logs, Stderr: logs}).Run(ctx, []string{"runner", "--nats", url, "--work", t.TempDir(), "--slots", "2",
			"--exec", "host", "--log-format", "json"})
	}()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("jetci runner exited %d:\n%s", code, logs.String())
		}
	}
	t.Cleanup(stop)
	return stop
}

// untestedHistory makes commit 1 pass with a runner, then commits 2..n with
// no runner while --coalesce supersedes each waiting first check, so that
// only commit n runs when a runner comes back. files(i) gives commit i's
// files. It returns the shas, 1-based, and the NATS and web URLs.
func untestedHistory(t *testing.T, n int, pipeline string, files func(i int) map[string]string, extra ...string) ([]string, string, string) {
	t.Helper()
	repo := newGitRepo(t)
	shas := []string{""}
	f := files(1)
	f[".jetci.yml"] = pipeline
	shas = append(shas, repo.Commit("commit 1", f))
	args := append([]string{"--runners", "0", "--coalesce", "proj:main", "--bisect", "proj:main"}, extra...)
	url, web, _ := startUpHTTP(t, t.TempDir(), args, repo.Dir)
	all := func() ([]reporter.Record, error) { return resultsJSON(t, url, "--all") }
	stop := startRunner(t, url)
	waitStatus(t, all, shas[1], "passed")
	stop()
	for i := 2; i <= n; i++ {
		shas = append(shas, repo.Commit(fmt.Sprintf("commit %d", i), files(i)))
	}
	brokertest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		recs, err := all()
		if err != nil {
			return err
		}
		status := map[string]string{}
		for _, r := range recs {
			status[r.Commit] = string(r.Status)
		}
		if status[shas[n]] != "queued" {
			return fmt.Errorf("commit %d: %q, want queued", n, status[shas[n]])
		}
		for i := 2; i < n; i++ {
			if status[shas[i]] != "cancelled" {
				return fmt.Errorf("commit %d: %q, want cancelled (superseded)", i, status[shas[i]])
			}
		}
		return nil
	})
	startRunner(t, url)
	return shas, url, web
}

// waitBisection polls the jetci-bisect bucket until proj main has a bisection
// that has ended, and returns it.
func waitBisection(t *testing.T, url string) *events.Bisection {
	t.Helper()
	nc, js, err := events.Connect(url, events.ConnectOptions{Name: "test", Wait: true, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var b *events.Bisection
	brokertest.CheckFor(t, 120*time.Second, 100*time.Millisecond, func() error {
		ctx := context.Background()
		kv, err := js.KeyValue(ctx, events.BucketBisect)
		if err != nil {
			return err
		}
		keys, err := kv.ListKeysFiltered(ctx, "b.>")
		if err != nil {
			return err
		}
		var found []*events.Bisection
		for k := range keys.Keys() {
			e, err := kv.Get(ctx, k)
			if err != nil {
				return err
			}
			var x events.Bisection
			if err := json.Unmarshal(e.Value(), &x); err != nil {
				return err
			}
			found = append(found, &x)
		}
		if len(found) != 1 {
			return fmt.Errorf("%d bisections, want 1", len(found))
		}
		b = found[0]
		if !b.Done() {
			return fmt.Errorf("bisection %s: %d steps so far", b.State, len(b.Steps))
		}
		return nil
	})
	return b
}

// TestBisectFindsTheCulprit is issue 9's test: a linear history of 64 commits
// where only the first (passing) and the last (failing) were tested; commit 37
// breaks the job. The bisection names commit 37 in at most 7 runs (log2 64 + 1;
// the two verification re-runs are counted apart), mails its author the
// evidence, and the API and branch page show the steps.
func TestBisectFindsTheCulprit(t *testing.T) {
	const n, bad = 64, 37
	sink := smtptest.Start(t)
	shas, url, web := untestedHistory(t, n, "jobs:\n  test:\n    steps:\n      - echo checking $JETCI_COMMIT\n      - test ! -f broken\n",
		func(i int) map[string]string {
			f := map[string]string{filepath.Join("f", fmt.Sprint(i)): fmt.Sprint(i)}
			if i == bad {
				f["broken"] = "yes"
			}
			return f
		}, "--smtp", sink.Addr, "--smtp-tls", "none", "--mail-from", "ci@example.com", "--public-url", "https://ci.example.com")
	b := waitBisection(t, url)
	var steps []string
	for _, s := range b.Steps {
		steps = append(steps, fmt.Sprintf("%s %d %s", s.Kind, idx(shas, s.Commit), s.Status))
	}
	t.Logf("bisection: %s in %s, %d runs: %s", b.State, b.EndedAt.Sub(b.StartedAt).Round(time.Millisecond), b.Runs, strings.Join(steps, ", "))
	if b.State != events.BisectFound || b.Culprit == nil || b.LastGood == nil {
		t.Fatalf("bisection %s (%s), want found", b.State, b.Reason)
	}
	if b.Culprit.Commit != shas[bad] || b.LastGood.Commit != shas[bad-1] {
		t.Errorf("culprit commit %d, last good %d; want %d and %d", idx(shas, b.Culprit.Commit), idx(shas, b.LastGood.Commit), bad, bad-1)
	}
	if b.Good != shas[1] || b.Bad != shas[n] || len(b.Commits) != n {
		t.Errorf("range %d..%d of %d commits, want 1..%d of %d", idx(shas, b.Good), idx(shas, b.Bad), len(b.Commits), n, n)
	}
	bisects, verifies := 0, 0
	for _, s := range b.Steps {
		switch s.Kind {
		case events.StepBisect:
			bisects++
		case events.StepVerifyCulprit, events.StepVerifyParent:
			verifies++
		}
	}
	if b.Runs != bisects || bisects > 7 || verifies != 2 {
		t.Errorf("%d bisection runs (counted %d), %d verification runs; want at most 7 and 2", bisects, b.Runs, verifies)
	}
	// The runs really ran, at the bisect class, and each commit's record shows it.
	recs, err := resultsJSON(t, url, "--all")
	if err != nil {
		t.Fatal(err)
	}
	ran := 0
	for _, n := range bisectRuns(recs) {
		ran += n
	}
	if ran != bisects+verifies {
		t.Errorf("%d runs at the bisect class in the records, want %d", ran, bisects+verifies)
	}
	// The culprit's author gets one mail with the evidence.
	var mail smtptest.Mail
	brokertest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		for _, m := range sink.Mails() {
			if strings.Contains(m.Subject, "CULPRIT") {
				mail = m
				return nil
			}
		}
		return fmt.Errorf("no culprit mail among %d", len(sink.Mails()))
	})
	text := mail.Text
	for _, want := range []string{shas[bad], shas[bad-1], "commit " + fmt.Sprint(bad), "checking " + shas[bad], "checking " + shas[bad-1],
		"https://ci.example.com/job/" + events.JobID("proj", "main", shas[bad], "test", b.Arch)} {
		if !strings.Contains(text, want) {
			t.Errorf("culprit mail lacks %q:\n%s", want, text)
		}
	}
	if strings.Join(mail.To, ",") != "dev@example.com" {
		t.Errorf("culprit mail to %v", mail.To)
	}
	// The API and the branch page show the steps.
	var body struct{ Bisections []events.Bisection }
	if err := getJSON(web+"/api/v1/bisections?repo=proj&branch=main", &body); err != nil {
		t.Fatal(err)
	}
	if len(body.Bisections) != 1 || body.Bisections[0].Culprit == nil || body.Bisections[0].Culprit.Commit != shas[bad] ||
		len(body.Bisections[0].Steps) != len(b.Steps) {
		t.Errorf("GET /api/v1/bisections: %+v", body.Bisections)
	}
	page, err := getText(web + "/branch?repo=proj&branch=main")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(page, "Bisection of test on") || !strings.Contains(page, "verify-culprit") || !strings.Contains(page, events.Short(shas[bad])) {
		t.Errorf("branch page does not show the bisection:\n%s", page)
	}
	// Only the one mail about the culprit, and no transition mail from the
	// bisection's runs of older commits (the first failure's mail is fine).
	culprit := 0
	for _, m := range sink.Mails() {
		if strings.Contains(m.Subject, "CULPRIT") {
			culprit++
		}
		if strings.Contains(m.Subject, "FIXED") {
			t.Errorf("a bisection run was mailed as a transition: %q", m.Subject)
		}
	}
	if culprit != 1 {
		t.Errorf("%d culprit mails, want 1", culprit)
	}
}

// TestBisectFlakyFailureBlamesNobody: commit 10 fails the first time it runs
// and passes after; the bisection ends on it, the re-run passes, and the
// failure is marked flaky: no culprit, no mail.
func TestBisectFlakyFailureBlamesNobody(t *testing.T) {
	const n = 10
	marks := t.TempDir()
	sink := smtptest.Start(t)
	pipeline := fmt.Sprintf("jobs:\n  test:\n    env: {MARKS: %q}\n    steps:\n      - if [ -f flaky ] && [ ! -e \"$MARKS/$JETCI_COMMIT\" ]; then touch \"$MARKS/$JETCI_COMMIT\"; exit 1; fi\n", marks)
	shas, url, _ := untestedHistory(t, n, pipeline, func(i int) map[string]string {
		f := map[string]string{fmt.Sprint(i): "x"}
		if i == n {
			f["flaky"] = "yes"
		}
		return f
	}, "--smtp", sink.Addr, "--smtp-tls", "none", "--mail-from", "ci@example.com")
	b := waitBisection(t, url)
	if b.State != events.BisectFlaky {
		t.Fatalf("bisection %s (%s), want flaky", b.State, b.Reason)
	}
	if b.Culprit == nil || b.Culprit.Commit != shas[n] {
		t.Errorf("the search should have ended on commit %d: %+v", n, b.Culprit)
	}
	if !strings.Contains(b.Reason, "flaky") {
		t.Errorf("reason %q", b.Reason)
	}
	for _, m := range sink.Mails() {
		if strings.Contains(m.Subject, "CULPRIT") {
			t.Errorf("a flaky failure blamed someone: %q", m.Subject)
		}
	}
}

func idx(shas []string, sha string) int {
	for i, s := range shas {
		if s == sha {
			return i
		}
	}
	return -1
}

// TestBisectSurvivesADispatcherRestart runs two dispatchers while a bisection
// starts (only one may start it and ask for each run), stops both while a
// bisection run is under way, and starts a third: it goes on where they
// stopped, every run is asked for once, and the culprit is found.
func TestBisectSurvivesADispatcherRestart(t *testing.T) {
	const n, bad = 20, 13
	gate := t.TempDir()
	allow := func(shas ...string) {
		f, err := os.OpenFile(filepath.Join(gate, "allow"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for _, s := range shas {
			fmt.Fprintln(f, s)
		}
	}
	allow("none")
	// A run waits until its commit is allowed or the gate is open, so the
	// test decides when bisection runs may end.
	pipeline := fmt.Sprintf("jobs:\n  test:\n    env: {GATE: %q}\n    steps:\n"+
		"      - until grep -qx \"$JETCI_COMMIT\" \"$GATE/allow\" || [ -e \"$GATE/go\" ]; do sleep 0.05; done\n"+
		"      - test ! -f broken\n", gate)
	repo := newGitRepo(t)
	shas := []string{"", repo.Commit("commit 1", map[string]string{".jetci.yml": pipeline})}
	allow(shas[1])

	natsAddr := reserveAddr(t)
	url := "nats://" + natsAddr
	data := t.TempDir()
	logs := &syncBuffer{}
	start := func(args ...string) func() {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan int, 1)
		go func() { done <- (&Main{Stdout: logs, Stderr: logs}).Run(ctx, args) }()
		stopped := false
		stop := func() {
			if !stopped {
				stopped = true
				cancel()
				if code := <-done; code != 0 {
					t.Errorf("jetci %s exited %d", args[0], code)
				}
			}
		}
		return stop
	}
	var stops []func()
	t.Cleanup(func() {
		for _, s := range slices.Backward(stops) {
			s()
		}
		if t.Failed() {
			t.Logf("logs:\n%s", logs.String())
		}
	})
	svc := func(args ...string) func() {
		s := start(append(args, "--log-format", "json")...)
		stops = append(stops, s)
		return s
	}
	svc("server", "--listen", natsAddr, "--store", data+"/nats") // open: this test is about restarts, not roles
	brokertest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		_, err := resultsJSON(t, url)
		return err
	})
	svc("observer", "--nats", url, "--repo", repo.Dir, "--poll", "100ms", "--cache", data+"/obs")
	svc("reporter", "--nats", url, "--http", "")
	dispatcher := []string{"dispatcher", "--nats", url, "--coalesce", "proj:main", "--bisect", "proj:main"}
	stopA, stopB := svc(dispatcher...), svc(dispatcher...)
	all := func() ([]reporter.Record, error) { return resultsJSON(t, url, "--all") }
	stopRunner := svc("runner", "--nats", url, "--work", data+"/r1", "--slots", "2", "--exec", "host") // steps read the gate file
	waitStatus(t, all, shas[1], "passed")
	stopRunner()
	for i := 2; i <= n; i++ {
		f := map[string]string{fmt.Sprint(i): "x"}
		if i == bad {
			f["broken"] = "yes"
		}
		shas = append(shas, repo.Commit(fmt.Sprintf("commit %d", i), f))
	}
	allow(shas[n])
	waitStatus(t, all, shas[n], "queued")
	for i := 2; i < n; i++ {
		waitStatus(t, func() ([]reporter.Record, error) { return all() }, shas[i], "cancelled")
	}
	svc("runner", "--nats", url, "--work", data+"/r2", "--slots", "2", "--exec", "host")

	read := func() (*events.Bisection, error) {
		nc, js, err := events.Connect(url, events.ConnectOptions{Name: "test", Log: zerolog.Nop()})
		if err != nil {
			return nil, err
		}
		defer nc.Close()
		kv, err := js.KeyValue(context.Background(), events.BucketBisect)
		if err != nil {
			return nil, err
		}
		e, err := kv.Get(context.Background(), events.BisectKey("proj", "main", events.JobID("proj", "main", shas[n], "test", runtime.GOARCH)))
		if err != nil {
			return nil, err
		}
		return events.DecodeAs[events.Bisection](e.Value())
	}
	// The first run is queued (and blocked): stop both dispatchers.
	brokertest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		b, err := read()
		if err != nil {
			return err
		}
		if len(b.Steps) == 0 || b.Steps[0].Status != events.StatusQueued {
			return fmt.Errorf("bisection %s with %d steps", b.State, len(b.Steps))
		}
		return nil
	})
	stopA()
	stopB()
	if err := os.WriteFile(filepath.Join(gate, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	svc(dispatcher...)
	var b *events.Bisection
	brokertest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		var err error
		if b, err = read(); err != nil {
			return err
		}
		if !b.Done() {
			return fmt.Errorf("bisection %s with %d steps", b.State, len(b.Steps))
		}
		return nil
	})
	if b.State != events.BisectFound || b.Culprit.Commit != shas[bad] {
		t.Fatalf("bisection %s (%s), culprit %+v; want commit %d", b.State, b.Reason, b.Culprit, bad)
	}
	// Each run was queued once: one bisect-class attempt per step.
	brokertest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		recs, err := all()
		if err != nil {
			return err
		}
		ran := bisectRuns(recs)
		for _, s := range b.Steps {
			if ran[s.TriggerID] != 1 {
				return fmt.Errorf("step %s of commit %d ran %d times, want 1 (runs %v)", s.Kind, idx(shas, s.Commit), ran[s.TriggerID], ran)
			}
		}
		if len(ran) != len(b.Steps) {
			return fmt.Errorf("%d bisection runs for %d steps", len(ran), len(b.Steps))
		}
		return nil
	})
}

// TestBisectHeldCommits: on a gated branch, commit 2 breaks job a, so commits
// 3..9 are held; commit 6 breaks job b. The second check of the head fails
// both. Job a started failing at 2 (nothing to bisect); job b passed at 2, so
// the held commits are bisected for it, on the failed branch, and commit 6 is
// named.
func TestBisectHeldCommits(t *testing.T) {
	const n, bad = 9, 6
	repo := newGitRepo(t)
	pipeline := "jobs:\n  a:\n    steps: test ! -f broken-a\n  b:\n    steps: test ! -f broken-b\n"
	shas := []string{"", repo.Commit("commit 1", map[string]string{".jetci.yml": pipeline})}
	url, _, _ := startUpHTTP(t, t.TempDir(), []string{"--runners", "1", "--gate", "proj:main", "--fix-window", "4s", "--bisect", "proj:main"}, repo.Dir)
	all := func() ([]reporter.Record, error) { return resultsJSON(t, url, "--all") }
	waitStatus(t, all, shas[1], "passed")
	shas = append(shas, repo.Commit("commit 2", map[string]string{"broken-a": "x"}))
	brokertest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		recs, err := all()
		if err != nil {
			return err
		}
		got := map[string]string{}
		for _, r := range recs {
			if r.Commit == shas[2] {
				got[r.Job] = string(r.Status)
			}
		}
		if got["a"] != "failed" || got["b"] != "passed" {
			return fmt.Errorf("commit 2: %v, want a failed and b passed", got)
		}
		return nil
	})
	for i := 3; i <= n; i++ {
		f := map[string]string{fmt.Sprint(i): "x"}
		if i == bad {
			f["broken-b"] = "x"
		}
		shas = append(shas, repo.Commit(fmt.Sprintf("commit %d", i), f))
	}
	b := waitBisection(t, url)
	if b.State != events.BisectFound || b.Job != "b" || b.Culprit.Commit != shas[bad] || b.Good != shas[2] || b.Bad != shas[n] {
		t.Fatalf("bisection of %s: %s (%s), culprit %d, range %d..%d; want b, found, %d, 2..%d",
			b.Job, b.State, b.Reason, idx(shas, b.Culprit.Commit), idx(shas, b.Good), idx(shas, b.Bad), bad, n)
	}
	recs, err := all()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if i := idx(shas, r.Commit); i > 2 && i < n && r.Job == "a" && r.Status != events.StatusHeld {
			t.Errorf("commit %d job a: %s, want still paused (the branch failed)", i, r.Status)
		}
	}
}

// bisectRuns counts the runs at the bisect class in the records, per trigger
// id: distinct queue sequences, so a delivery handed back from a runner whose
// lease lapsed (a second attempt of the same run) is not a second run.
func bisectRuns(recs []reporter.Record) map[string]int {
	seqs := map[string]map[uint64]bool{}
	for _, r := range recs {
		for _, a := range r.Attempts {
			if a.Class == events.ClassBisect {
				if seqs[a.TriggerID] == nil {
					seqs[a.TriggerID] = map[uint64]bool{}
				}
				seqs[a.TriggerID][a.QueueSeq] = true
			}
		}
	}
	out := map[string]int{}
	for id, s := range seqs {
		out[id] = len(s)
	}
	return out
}

// TestBisectModuleJob: in a repository of modules, a change to core breaks
// app's test (app depends on core). The bisection is of app's job alone: its
// runs queue app/test and nothing of core, and it names the commit that broke
// it.
func TestBisectModuleJob(t *testing.T) {
	const n, bad = 16, 11
	pipeline := "modules:\n" +
		"  core: {paths: [core], jobs: {test: {steps: \"true\"}}}\n" +
		"  app:  {paths: [app], depends: [core], jobs: {test: {steps: \"test ! -f core/broken\"}}}\n"
	shas, url, _ := untestedHistory(t, n, pipeline, func(i int) map[string]string {
		f := map[string]string{"core/v.txt": fmt.Sprint(i), "app/main.txt": "app\n"}
		if i >= bad {
			f["core/broken"] = "yes"
		}
		return f
	})
	b := waitBisection(t, url)
	if b.State != events.BisectFound || b.Culprit == nil || b.Culprit.Commit != shas[bad] {
		t.Fatalf("bisection %s (%s), culprit %+v; want found at commit %d", b.State, b.Reason, b.Culprit, bad)
	}
	if b.Module != "app" || b.Job != "test" || b.Name() != "app/test" {
		t.Errorf("bisection of module %q job %q, want app/test", b.Module, b.Job)
	}
	recs, err := resultsJSON(t, url, "--all")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		for _, a := range r.Attempts {
			if a.Class == events.ClassBisect && r.Module != "app" {
				t.Errorf("a bisection run queued %s/%s at commit %d", r.Module, r.Job, idx(shas, r.Commit))
			}
		}
	}
	if runs := bisectRuns(recs); len(runs) == 0 {
		t.Error("no bisection run in the records")
	}
}
