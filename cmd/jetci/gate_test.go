package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/internal/smtptest"
	"github.com/jetci/jetci/reporter"
)

// TestBrokenBuildFlow runs the build-check system's flow on the real pipeline:
// a failed first check breaks the branch and holds later commits; after the
// fix window a second check of the head opens it again (releasing the held
// commits, oldest first) or fails it, and then only a re-check opens it.
func TestBrokenBuildFlow(t *testing.T) {
	repo := newGitRepo(t)
	first := repo.Commit("tests pass", map[string]string{"tests/test_ok.py": passingTest})
	sink := smtptest.Start(t)
	url, web, _ := startUpHTTP(t, t.TempDir(), []string{"--runners", "1", "--gate", "proj:main", "--fix-window", "1500ms", "--admin-token", "gate-test-token",
		"--smtp", sink.Addr, "--smtp-tls", "none", "--mail-from", "ci@example.com"}, repo.Dir)
	mailed := func(subject string) {
		t.Helper()
		brokertest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
			for _, m := range sink.Mails() {
				if strings.Contains(m.Subject, subject) && strings.Join(m.To, ",") == "dev@example.com" {
					return nil
				}
			}
			return fmt.Errorf("no mail %q to the author among %d", subject, len(sink.Mails()))
		})
	}
	all := func() ([]reporter.Record, error) { return resultsJSON(t, url, "--all") }
	waitStatus(t, all, first, "passed")

	nc, js, err := events.Connect(url, events.ConnectOptions{Name: "test", Wait: true, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	branch := func() events.BranchState {
		var st events.BranchState
		kv, err := js.KeyValue(context.Background(), events.BucketBranches)
		if err != nil {
			return st
		}
		if e, err := kv.Get(context.Background(), events.BranchKey("proj", "main")); err == nil {
			_ = json.Unmarshal(e.Value(), &st)
		}
		return st
	}
	waitBranch := func(state string) events.BranchState {
		t.Helper()
		var st events.BranchState
		brokertest.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
			if st = branch(); st.State != state {
				return fmt.Errorf("branch %q (%s), want %q", st.State, st.Reason, state)
			}
			return nil
		})
		return st
	}

	// B breaks it; C (the fix) and D come while it is broken: held.
	broke := repo.Commit("break", map[string]string{"tests/test_bad.py": failingTest})
	waitStatus(t, all, broke, "failed")
	st := waitBranch(events.BranchBroken)
	if st.BrokenBy == nil || st.BrokenBy.Commit != broke || st.Author.Email != "dev@example.com" {
		t.Fatalf("broken state %+v", st)
	}
	mailed("proj main is broken: fix it by")
	fix := repo.Commit("fix", map[string]string{"tests/test_bad.py": passingTest})
	more := repo.Commit("more", map[string]string{"more.txt": "x"})
	if st.WindowEnds.Before(time.Now()) {
		t.Log("the fix window ended before the held commits came; the second check may take the fix")
	} else {
		waitStatus(t, all, fix, "paused")
		waitStatus(t, all, more, "paused")
	}
	// The second check of the head (more) passes: open, and both held
	// commits run, oldest first.
	waitBranch(events.BranchOpen)
	recsFix := waitStatus(t, all, fix, "passed")
	recsMore := waitStatus(t, all, more, "passed")
	if recsMore[0].Attempt < 2 {
		t.Errorf("the head should have run as the second check and again when released: attempt %d", recsMore[0].Attempt)
	}
	fixSeq := recsFix[0].Attempts[len(recsFix[0].Attempts)-1].QueueSeq
	moreSeq := recsMore[0].Attempts[len(recsMore[0].Attempts)-1].QueueSeq
	if fixSeq > moreSeq {
		t.Errorf("released newest first: fix queued at %d, more at %d", fixSeq, moreSeq)
	}
	var classes []string
	for _, a := range recsMore[0].Attempts {
		classes = append(classes, string(a.Class))
	}
	if !strings.Contains(strings.Join(classes, ","), "second") {
		t.Errorf("no second-check run of the head: %v", classes)
	}

	// E breaks it and nothing comes: the second check of E fails: failed.
	broke2 := repo.Commit("break again", map[string]string{"tests/test_bad.py": failingTest})
	waitStatus(t, all, broke2, "failed")
	st = waitBranch(events.BranchFailed)
	if !strings.Contains(st.Reason, "second check") {
		t.Errorf("failed reason %q", st.Reason)
	}
	mailed("proj main failed its second check: re-check needed")
	// While failed, commits are held however long it takes.
	fix2 := repo.Commit("fix again", map[string]string{"tests/test_bad.py": passingTest})
	held := waitStatus(t, all, fix2, "paused")
	if !strings.Contains(held[0].Reason, "failed") {
		t.Errorf("held reason %q", held[0].Reason)
	}
	// The API and the branch page show it.
	brokertest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		var body struct{ Branches []reporter.BranchSummary }
		if err := getJSON(web+"/api/v1/branches?repo=proj", &body); err != nil {
			return err
		}
		if len(body.Branches) != 1 || body.Branches[0].Gate == nil || body.Branches[0].Gate.State != events.BranchFailed || body.Branches[0].Gate.Held != 1 {
			return fmt.Errorf("branches %+v", body.Branches)
		}
		page, err := getText(web + "/branch?repo=proj&branch=main")
		if err != nil || !strings.Contains(page, "Branch failed") || !strings.Contains(page, "1 commit(s) held") {
			return fmt.Errorf("branch page: %v\n%s", err, page)
		}
		return nil
	})
	// jetci recheck runs the head as user-triggered; it passes: open, released.
	var out, errb strings.Builder
	if code := (&Main{Stdout: &out, Stderr: &errb}).Run(context.Background(), []string{"recheck", "--nats", url, "--repo", "proj", "--branch", "main"}); code != 0 {
		t.Fatalf("jetci recheck exited %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), fix2) {
		t.Errorf("recheck output %q", out.String())
	}
	waitBranch(events.BranchOpen)
	recs := waitStatus(t, all, fix2, "passed")
	if recs[0].Attempts[0].Class != events.ClassUser {
		t.Errorf("the re-check ran as %q", recs[0].Attempts[0].Class)
	}
	// The API's re-check answers too (on an open branch it runs the head).
	req, _ := http.NewRequest("POST", web+"/api/v1/branches/recheck", strings.NewReader(`{"repo":"proj","branch":"main"}`))
	req.Header.Set("Authorization", "Bearer gate-test-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Errorf("POST /api/v1/branches/recheck = %d", resp.StatusCode)
	}
	// Every transition was published.
	stream, err := js.Stream(context.Background(), events.StreamBranch)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := stream.Info(context.Background())
	if info.State.Msgs < 5 {
		t.Errorf("%d branch events, want every transition", info.State.Msgs)
	}
}

func getJSON(url string, v any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func getText(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// TestPeriodicFullCheckOnThePipeline: jetci up with a schedule re-runs the
// branch head at the periodic class.
func TestPeriodicFullCheckOnThePipeline(t *testing.T) {
	repo := newGitRepo(t)
	c := repo.Commit("tests pass", map[string]string{"tests/test_ok.py": passingTest})
	url, _ := startUpWith(t, t.TempDir(), []string{"--runners", "1", "--periodic", "@every 1s"}, repo.Dir)
	brokertest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		recs, err := resultsJSON(t, url, "--all", "--commit", c)
		if err != nil {
			return err
		}
		for _, r := range recs {
			for _, a := range r.Attempts {
				if a.Class == events.ClassPeriodic && a.Status == events.StatusPassed {
					return nil
				}
			}
		}
		return fmt.Errorf("no passed periodic run of the head yet: %+v", recs)
	})
}

// TestCoalesceSupersedesWaitingJobs: on a coalesced branch with no runner,
// each new commit cancels the waiting jobs of the older ones.
func TestCoalesceSupersedesWaitingJobs(t *testing.T) {
	repo := newGitRepo(t)
	url, _ := startUpWith(t, t.TempDir(), []string{"--runners", "0", "--coalesce", "proj:main"}, repo.Dir)
	all := func() ([]reporter.Record, error) { return resultsJSON(t, url, "--all") }
	a := repo.Commit("a", map[string]string{"tests/test_ok.py": passingTest})
	waitStatus(t, all, a, "queued")
	b := repo.Commit("b", map[string]string{"b.txt": "b"})
	waitStatus(t, all, b, "queued")
	recs := waitStatus(t, all, a, "cancelled")
	if recs[0].Error != "superseded by "+events.Short(b) {
		t.Errorf("a: %q", recs[0].Error)
	}
	// Another branch is not coalesced.
	repo.Git("checkout", "-q", "-b", "side")
	s1 := repo.Commit("s1", map[string]string{"s.txt": "1"})
	waitStatus(t, all, s1, "queued")
	s2 := repo.Commit("s2", map[string]string{"s.txt": "2"})
	waitStatus(t, all, s2, "queued")
	// A later commit on main is dispatched after s2 (one at a time): once it
	// superseded b, s2's dispatch is long over, and s1 must still wait.
	repo.Git("checkout", "-q", "main")
	c := repo.Commit("c", map[string]string{"c.txt": "c"})
	waitStatus(t, all, c, "queued")
	// (b is also the first commit the observer saw on side, where it waits.)
	onMain := func() ([]reporter.Record, error) { return resultsJSON(t, url, "--all", "--branch", "main") }
	waitStatus(t, onMain, b, "cancelled")
	waitStatus(t, all, s1, "queued")
}

// TestRecheckOfAHeldModuleJob (issue 18: "after a re-check it drops the
// module name"): on a gated branch of modules, app breaks; a later commit's
// jobs are held; re-checking its app/test from the API runs that module's
// job — its record keeps module app, no job without a module appears, core's
// job stays paused — and the branch page's banner counts the held commit
// that its paused list names.
func TestRecheckOfAHeldModuleJob(t *testing.T) {
	repo := newGitRepo(t)
	pipeline := "modules:\n" +
		"  core: {paths: [core], jobs: {test: {steps: \"true\"}}}\n" +
		"  app:  {paths: [app], depends: [core], jobs: {test: {steps: \"test ! -f app/broken\"}}}\n"
	first := repo.Commit("modules", map[string]string{".jetci.yml": pipeline, "core/v.txt": "1", "app/main.txt": "app"})
	url, web, _ := startUpHTTP(t, t.TempDir(), []string{"--runners", "1", "--gate", "proj:main", "--fix-window", "10m", "--admin-token", "held-token"}, repo.Dir)
	all := func() ([]reporter.Record, error) { return resultsJSON(t, url, "--all") }
	waitStatus(t, all, first, "passed")
	broke := repo.Commit("app: break", map[string]string{"app/broken": "x"})
	waitStatus(t, all, broke, "failed")
	held := repo.Commit("core: v2", map[string]string{"core/v.txt": "2"})
	recs := waitStatus(t, all, held, "paused")
	names := map[string]reporter.Record{}
	for _, r := range recs {
		names[r.Name()] = r
	}
	app, ok := names["app/test"]
	if !ok || len(names) != 2 || names["core/test"].Module != "core" || app.Module != "app" {
		t.Fatalf("held commit's jobs %v, want core/test and app/test", names)
	}
	req, _ := http.NewRequest("POST", web+"/api/v1/jobs/"+app.JobID+"/recheck", nil)
	req.Header.Set("Authorization", "Bearer held-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("re-check of the held app/test: %d %s", resp.StatusCode, body)
	}
	brokertest.CheckFor(t, 2*time.Minute, 50*time.Millisecond, func() error {
		recs, err := all()
		if err != nil {
			return err
		}
		got := map[string]string{}
		for _, r := range recs {
			if r.Commit != held {
				continue
			}
			got[r.Name()] = string(r.Status)
			if r.Name() == "app/test" && r.Module != "app" {
				return fmt.Errorf("app/test's record has module %q", r.Module)
			}
		}
		if len(got) != 2 || got["app/test"] != "failed" || got["core/test"] != "paused" {
			return fmt.Errorf("held commit after the re-check: %v, want app/test failed (still broken), core/test paused", got)
		}
		return nil
	})
	resp, err = http.Get(web + "/branch?repo=proj&branch=main")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	page := string(body)
	for _, want := range []string{`id="held-count">1 commit(s) held`, `id="paused"`, events.Short(held)} {
		if !strings.Contains(page, want) {
			t.Errorf("branch page: no %q in\n%.4000s", want, page)
		}
	}
	if strings.Contains(page, "(they have no job here") {
		t.Errorf("the banner says the held commit is not on the page:\n%.4000s", page)
	}
}
