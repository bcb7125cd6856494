package reporter

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/forge"
	"github.com/jetci/jetci/forge/forgetest"
)

// queueAndFinish publishes a job's queued event, then its finished event.
func queueAndFinish(f *webFixture, fs *forgetest.Server, seq uint64, commit string, fin *events.JobFinished, wantPosted int) events.JobRef {
	ref := jref("proj", "main", commit, "test", "amd64")
	p := events.Person{Name: "Bob", Email: "bob@example.com"}
	f.publish(&events.JobQueued{JobRef: ref, Pool: "default", Class: events.ClassFirst, QueueSeq: seq, QueuedAt: time.Now(), Author: p, Subject: "change"})
	fin.JobRef, fin.QueueSeq, fin.Attempt, fin.Runner, fin.FinishedAt, fin.Author, fin.Subject = ref, seq, 1, "r1", time.Now(), p, "change"
	f.publish(fin) // the notifier folds it into the record itself; the callers wait for the statuses
	return ref
}

func waitPosted(t *testing.T, f *webFixture, fs *forgetest.Server, n int) []forgetest.Posted {
	t.Helper()
	var got []forgetest.Posted
	brokertest.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
		got = fs.Posted()
		if len(got) != n {
			return fmt.Errorf("%d statuses posted, want %d: %+v", len(got), n, got)
		}
		return outboxEmpty(f)
	})
	return got
}

// finalOf waits until commit's result (a state other than pending) is
// posted and the outbox is empty, and checks that the commit got at most one
// pending, before its result, and one result. It returns them (pending may be
// zero: one still queued when the result went out is not posted over it).
func finalOf(t *testing.T, f *webFixture, fs *forgetest.Server, commit string) (pending, final forgetest.Posted) {
	t.Helper()
	brokertest.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
		var mine []forgetest.Posted
		for _, p := range fs.Posted() {
			if p.SHA == commit {
				mine = append(mine, p)
			}
		}
		if len(mine) == 0 || mine[len(mine)-1].State == "pending" {
			return fmt.Errorf("no result posted for %s: %+v", commit[:8], mine)
		}
		if err := outboxEmpty(f); err != nil {
			return err
		}
		pending, final = forgetest.Posted{}, mine[len(mine)-1]
		switch {
		case len(mine) == 2 && mine[0].State == "pending":
			pending = mine[0]
		case len(mine) != 1:
			t.Fatalf("%s: %+v", commit[:8], mine)
		}
		return nil
	})
	return pending, final
}

// TestCommitStatusesPendingThenResult: a queued job is posted pending, its
// result success, failure, error or cancelled with a description and the job
// page, on each forge's API.
func TestCommitStatusesPendingThenResult(t *testing.T) {
	for _, kind := range []string{forge.GitHub, forge.Gitea, forge.GitLab} {
		t.Run(kind, func(t *testing.T) {
			fs := forgetest.Start(t, kind, "octo/proj", "tok-"+kind)
			f, _ := newNotifyFixture(t, nil, NotifyConfig{PublicURL: "https://ci.example.com", Forges: []forge.Repo{fs.Repo("proj")}})
			gl := kind == forge.GitLab
			word := func(github, gitlab string) string {
				if gl {
					return gitlab
				}
				return github
			}
			ref := ""
			if gl {
				ref = "main"
			}
			failed := queueAndFinish(f, fs, 1, sha('a'), &events.JobFinished{Status: events.StatusFailed, ExitCode: 1, DurationMs: 1500,
				TestSummary: &events.TestSummary{Total: 5, Passed: 2, Failed: 3}}, 2)
			pending, final := finalOf(t, f, fs, sha('a'))
			url := "https://ci.example.com/job/" + failed.JobID
			if pending != (forgetest.Posted{}) && pending != (forgetest.Posted{SHA: sha('a'), State: "pending", Context: "jetci/test (amd64)", TargetURL: url, Description: "queued", Ref: ref}) {
				t.Errorf("pending %+v", pending)
			}
			if want := (forgetest.Posted{SHA: sha('a'), State: word("failure", "failed"), Context: "jetci/test (amd64)", TargetURL: url, Description: "3 tests failed in 1.5s", Ref: ref}); final != want {
				t.Errorf("result %+v\nwant   %+v", final, want)
			}
			queueAndFinish(f, fs, 2, sha('b'), &events.JobFinished{Status: events.StatusError, Error: "no runner for riscv64"}, 4)
			if _, final := finalOf(t, f, fs, sha('b')); final.Description != "no runner for riscv64" || final.State != word("error", "failed") {
				t.Errorf("error status %+v", final)
			}
			queueAndFinish(f, fs, 3, sha('c'), &events.JobFinished{Status: events.StatusCancelled, Error: "superseded by dddddddddd"}, 6)
			if _, final := finalOf(t, f, fs, sha('c')); final.Description != "cancelled: superseded by dddddddddd" || final.State != word("error", "canceled") {
				t.Errorf("cancelled status %+v", final)
			}
			queueAndFinish(f, fs, 4, sha('d'), &events.JobFinished{Status: events.StatusPassed, DurationMs: 200,
				TestSummary: &events.TestSummary{Total: 12, Passed: 12}}, 8)
			if _, final := finalOf(t, f, fs, sha('d')); final.Description != "12 tests passed in 200ms" || final.State != "success" {
				t.Errorf("success status %+v", final)
			}
		})
	}
}

// TestStatusesSurviveForgeFaults: the forge answers 500, then 403 with
// Retry-After, then not at all (a timeout), then 429: every status still
// arrives, once, in order, and no request comes before the Retry-After.
func TestStatusesSurviveForgeFaults(t *testing.T) {
	fs := forgetest.Start(t, forge.GitHub, "octo/proj", "tok")
	fs.Script(forgetest.Fail500, forgetest.RateLimit, forgetest.Hang, forgetest.TooMany)
	f, _ := newNotifyFixture(t, nil, NotifyConfig{PublicURL: "https://ci.example.com", Forges: []forge.Repo{fs.Repo("proj")}})
	f.rep.notifier.client = &http.Client{Timeout: 300 * time.Millisecond}
	queueAndFinish(f, fs, 1, sha('a'), &events.JobFinished{Status: events.StatusPassed, DurationMs: 10}, 2)
	queueAndFinish(f, fs, 2, sha('b'), &events.JobFinished{Status: events.StatusFailed, ExitCode: 2, DurationMs: 10}, 4)
	// Each result is posted once; a pending still retrying when its
	// result went out is not posted over it.
	var got []forgetest.Posted
	brokertest.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
		got = fs.Posted()
		if err := outboxEmpty(f); err != nil {
			return err
		}
		for _, p := range got {
			if p.State != "pending" {
				return nil
			}
		}
		return fmt.Errorf("no result posted: %+v", got)
	})
	brokertest.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
		got = fs.Posted()
		seen := map[string]int{}
		for _, p := range got {
			seen[p.SHA[:1]+" "+p.State]++
		}
		if seen["a success"] != 1 || seen["b failure"] != 1 {
			return fmt.Errorf("results posted %v", seen)
		}
		if seen["a pending"] > 1 || seen["b pending"] > 1 {
			t.Fatalf("a pending posted twice: %+v", got)
		}
		return outboxEmpty(f)
	})
	for _, c := range []string{"a", "b"} {
		last := ""
		for _, p := range got {
			if p.SHA[:1] == c {
				last = p.State
			}
		}
		if last == "pending" {
			t.Errorf("commit %s ends pending: %+v", c, got)
		}
	}
	if fs.Requests() < 6 {
		t.Errorf("%d requests: the faults were not all met", fs.Requests())
	}
}

// TestWrongTokenIsLoggedOnceAndShown: a refused token gives one log line
// for the repo, a state on /healthz and /api/v1/forges, and no retry loop:
// statuses wait instead of asking the forge again.
func TestWrongTokenIsLoggedOnceAndShown(t *testing.T) {
	fs := forgetest.Start(t, forge.Gitea, "octo/proj", "right")
	s := brokertest.Run(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := events.DefaultSetup().Ensure(ctx, s.JS); err != nil {
		t.Fatal(err)
	}
	repo := fs.Repo("proj")
	repo.Token = "wrong-secret-token"
	cfg := NotifyConfig{PublicURL: "https://ci.example.com", Forges: []forge.Repo{repo}}
	if err := cfg.Resolve(); err != nil {
		t.Fatal(err)
	}
	var logs syncBuf
	rep, err := New(ctx, Config{HTTP: "127.0.0.1:0", Notify: cfg}, s.JS, zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- rep.Run(ctx) }()
	defer func() { cancel(); <-done }()
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		_, err := s.JS.Consumer(ctx, events.StreamResults, events.ConsumerNotifierQueued)
		return err
	})
	f := &webFixture{t: t, s: s, rep: rep, base: "http://" + rep.Addr(), ctx: context.Background(), sign: newTestSigner(s.JS)}
	for i, c := range []byte("abc") {
		queueAndFinish(f, fs, uint64(i+1), sha(c), &events.JobFinished{Status: events.StatusPassed}, 0)
	}
	// Every status is in the outbox and has been looked at at least once…
	brokertest.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
		st, err := s.JS.Stream(ctx, events.StreamNotify)
		if err != nil {
			return err
		}
		sinfo, err := st.Info(ctx)
		if err != nil {
			return err
		}
		c, err := s.JS.Consumer(ctx, events.StreamNotify, events.ConsumerNotifier)
		if err != nil {
			return err
		}
		info, err := c.Info(ctx)
		if err != nil {
			return err
		}
		if sinfo.State.Msgs != 6 || info.NumPending != 0 {
			return fmt.Errorf("%d statuses in the outbox, %d never delivered", sinfo.State.Msgs, info.NumPending)
		}
		return nil
	})
	// …and the forge was asked once.
	if n := fs.Requests(); n != 1 {
		t.Errorf("%d requests with a refused token, want 1", n)
	}
	if n := strings.Count(logs.String(), "refuses jetci's token"); n != 1 {
		t.Errorf("%d log lines about the token, want 1:\n%s", n, logs.String())
	}
	if strings.Contains(logs.String(), "wrong-secret-token") {
		t.Error("the token is in the log")
	}
	_, body, _ := f.get("/healthz")
	if !strings.Contains(body, "forge of proj (gitea): token refused") {
		t.Errorf("healthz:\n%s", body)
	}
	var states []forgeHealth
	f.getJSON("/api/v1/forges", &states)
	if len(states) != 1 || states[0].State != "token refused" || states[0].Until.IsZero() {
		t.Errorf("forges %+v", states)
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestAStatusCutShortIsPostedAgain: unlike a mail, a status whose sender died
// mid-post ("sending" claim) is posted again: posting a state twice is
// harmless, a commit left pending is not.
func TestAStatusCutShortIsPostedAgain(t *testing.T) {
	fs := forgetest.Start(t, forge.GitHub, "octo/proj", "tok")
	s := brokertest.Run(t)
	ctx := context.Background()
	if err := events.DefaultSetup().Ensure(ctx, s.JS); err != nil {
		t.Fatal(err)
	}
	ref := jref("proj", "main", sha('b'), "test", "amd64")
	id := fmt.Sprintf("status.%s.%s.%s.%d", shortHash("proj\x00"+sha('b')+"\x00jetci/test (amd64)"), ref.JobID, forge.Failure, 2*2+1)
	kv, _ := s.JS.KeyValue(ctx, events.BucketSent)
	if _, err := kv.Create(ctx, "n."+shortHash(id), []byte(claimSending)); err != nil {
		t.Fatal(err)
	}
	f, _ := newNotifyFixture(t, s, NotifyConfig{PublicURL: "https://ci.example.com", Forges: []forge.Repo{fs.Repo("proj")}})
	queueAndFinish(f, fs, 2, sha('b'), &events.JobFinished{Status: events.StatusFailed, ExitCode: 1}, 2)
	got := waitPosted(t, f, fs, 2)
	if got[1].State != forge.Failure || got[1].SHA != sha('b') {
		t.Errorf("posted %+v", got)
	}
}

// TestForgeConfigFromYAML: a forge entry takes its token from a file or the
// environment; a token written in the file itself is refused.
func TestForgeConfigFromYAML(t *testing.T) {
	dir := t.TempDir()
	tok := dir + "/tok"
	if err := os.WriteFile(tok, []byte("ghp_secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	good := dir + "/good.yml"
	os.WriteFile(good, []byte("forges:\n  - repo: proj\n    kind: github\n    url: https://ghe.example.com\n    project: team/proj\n    token_file: "+tok+"\n"), 0o600)
	c, err := LoadNotifyConfig(good)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Resolve(); err != nil {
		t.Fatal(err)
	}
	if f := c.Forges[0]; f.Token != "ghp_secret" || f.API() != "https://ghe.example.com/api/v3" || !c.Enabled() {
		t.Errorf("%+v", f)
	}
	bad := dir + "/bad.yml"
	os.WriteFile(bad, []byte("forges:\n  - repo: proj\n    kind: github\n    project: team/proj\n    token: ghp_inline\n"), 0o600)
	if _, err := LoadNotifyConfig(bad); err == nil {
		t.Error("a token in the config file was taken")
	}
	twice := NotifyConfig{Forges: []forge.Repo{{Repo: "p", Kind: "github", Project: "a/b", Token: "x"}, {Repo: "p", Kind: "github", Project: "a/c", Token: "y"}}}
	if err := twice.Resolve(); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("two entries for one repo: %v", err)
	}
}
