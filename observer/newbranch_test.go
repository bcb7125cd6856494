package observer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

// TestNewBranchEveryCommit: a branch pushed with 5 commits gets 5 events, not
// just its head; a branch made from another new branch in the same push gets
// only its own commits; the first poll of a repository publishes heads only;
// an observer that died after publishing a new branch but before recording it
// publishes every commit again (deduplicated by Msg-Id), not just the head.
func TestNewBranchEveryCommit(t *testing.T) {
	s := brokertest.Run(t)
	c := collect(t, s)
	repo := newGitRepo(t)
	repo.commit("root", nil)
	repo.git("checkout", "-q", "-b", "old")
	old := repo.commit("old 1", nil)
	repo.git("checkout", "-q", "main")
	base := repo.commit("base", nil)
	cache := t.TempDir()
	o := newObserver(t, s, testConfig(cache, Repo{Name: "proj", URL: repo.dir}))
	evs := pollAndWait(t, s, o, c, "proj", 2) // first poll: each branch's head only
	if got := shas(evs); !strings.Contains(got, old) || !strings.Contains(got, base) {
		t.Fatalf("first poll: %v", names(evs))
	}

	repo.git("checkout", "-q", "-b", "feat")
	var feat []string
	for i := range 5 {
		feat = append(feat, repo.commit("feat "+string(rune('a'+i)), nil))
	}
	repo.git("checkout", "-q", "-b", "feat2")
	f2 := repo.commit("feat2 own", nil)
	repo.git("checkout", "-q", "main")
	m := repo.commit("main moves", nil)
	evs = pollAndWait(t, s, o, c, "proj", 7)
	checkTopological(t, evs)
	var onFeat, onFeat2, onMain []string
	for _, e := range evs {
		switch e.Branch {
		case "feat":
			onFeat = append(onFeat, e.Commit)
		case "feat2":
			onFeat2 = append(onFeat2, e.Commit)
		case "main":
			onMain = append(onMain, e.Commit)
		}
	}
	if strings.Join(onFeat, " ") != strings.Join(feat, " ") || strings.Join(onFeat2, " ") != f2 || strings.Join(onMain, " ") != m {
		t.Fatalf("new branches: %v", names(evs))
	}
	for _, e := range evs {
		if want := e.Commit == feat[0] || e.Commit == f2; e.NewBranch != want && e.Branch != "main" {
			t.Fatalf("%s: new_branch %v, want %v", e.Subject, e.NewBranch, want)
		}
	}

	// A branch at a commit already known: its head only.
	repo.git("branch", "same", feat[2])
	if evs := pollAndWait(t, s, o, c, "proj", 1); evs[0].Commit != feat[2] || evs[0].Branch != "same" {
		t.Fatalf("branch at a known commit: %v", names(evs))
	}

	// Crash before the record: the branch's head key is missing, as if the
	// observer died between its publishes and the KV put.
	repo.git("checkout", "-q", "-b", "late", base)
	late := []string{repo.commit("late 1", nil), repo.commit("late 2", nil), repo.commit("late 3", nil)}
	pollAndWait(t, s, o, c, "proj", 3)
	kv, err := s.JS.KeyValue(context.Background(), events.BucketHeads)
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(context.Background(), events.HeadKey("proj", "late")); err != nil {
		t.Fatal(err)
	}
	b := newObserver(t, s, testConfig(t.TempDir(), Repo{Name: "proj", URL: repo.dir}))
	if got := shas(pollAndWait(t, s, b, c, "proj", 3)); got != strings.Join(late, " ") {
		t.Fatalf("after a crash before the record: %s, want %s", got, strings.Join(late, " "))
	}
	checkHead(t, s, "proj", "late", late[2])

	// A huge new branch is capped at MaxNewCommits, newest first, logged.
	var logs logBuffer
	cfg := testConfig(cache, Repo{Name: "proj", URL: repo.dir})
	cfg.MaxNewCommits = 2
	o3, err := New(cfg, s.NC, s.JS, logs.logger())
	if err != nil {
		t.Fatal(err)
	}
	repo.git("checkout", "-q", "-b", "huge", base)
	for range 4 {
		repo.commit("huge", nil)
	}
	head := repo.git("rev-parse", "HEAD")
	evs = pollAndWait(t, s, o3, c, "proj", 2)
	if evs[1].Commit != head {
		t.Fatalf("capped new branch: %v", names(evs))
	}
	// The skip is visible: on the oldest published commit's event, and in the log.
	if !evs[0].OlderSkipped || evs[1].OlderSkipped {
		t.Fatalf("older_commits_skipped: %v %v, want set on the oldest published commit only", evs[0].OlderSkipped, evs[1].OlderSkipped)
	}
	if n := len(logs.lines("warn", "more new commits than --max-new-commits")); n != 1 {
		t.Fatalf("%d cap warnings, want 1", n)
	}
}

// TestPublishFailureKeepsTheCache: polls failing because the broker cannot
// take the events (here the commits stream refuses new messages, as a full
// store does; a timeout looks the same) never delete the git cache; the commits go out once the
// broker takes them.
func TestPublishFailureKeepsTheCache(t *testing.T) {
	s := brokertest.Run(t)
	c := collect(t, s)
	repo := newGitRepo(t)
	repo.commit("one", nil)
	cache := t.TempDir()
	var logs logBuffer
	o, err := New(testConfig(cache, Repo{Name: "proj", URL: repo.dir}), s.NC, s.JS, logs.logger())
	if err != nil {
		t.Fatal(err)
	}
	pollAndWait(t, s, o, c, "proj", 1)
	marker := filepath.Join(o.cacheDir(o.repos["proj"]), "kept")
	if err := os.WriteFile(marker, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// The stream refuses new messages, as a full store does.
	st, err := s.JS.Stream(ctx, events.StreamCommits)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := st.Info(ctx)
	full := info.Config
	full.MaxMsgs, full.Discard = int64(info.State.Msgs), jetstream.DiscardNew
	if _, err := s.JS.UpdateStream(ctx, full); err != nil {
		t.Fatal(err)
	}
	two := repo.commit("two", nil)
	for range 3 {
		err := o.Poll(ctx, "proj")
		if err == nil || !isBusOnly(err) {
			t.Fatalf("poll with no commits stream: %v, want a publish error", err)
		}
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("the cache was touched by publish failures: %v", err)
	}
	if n := len(logs.lines("warn", "cache looks damaged")); n != 0 {
		t.Fatalf("%d 'cache looks damaged' lines for publish failures", n)
	}
	if _, err := s.JS.UpdateStream(ctx, info.Config); err != nil {
		t.Fatal(err)
	}
	// The collector also saw the refused publishes (a core subscription), so
	// look at the stream itself.
	if err := o.Poll(ctx, "proj"); err != nil {
		t.Fatalf("poll after the broker came back: %v", err)
	}
	checkHead(t, s, "proj", "main", two)
	m, err := st.GetLastMsgForSubject(ctx, events.CommitSubject("proj", "main"))
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := events.DecodeAs[events.CommitDetected](m.Data); err != nil || ev.Commit != two {
		t.Fatalf("after the broker came back, the stream's last event: %v %v", ev, err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatal(err)
	}
}

// TestMissingLocalRepoIsWatchedUntilItAppears: a --repo path that does not
// exist yet is accepted, logged once while missing, does not hold the other
// repositories back, and is picked up when it appears.
func TestMissingLocalRepoIsWatchedUntilItAppears(t *testing.T) {
	s := brokertest.Run(t)
	c := collect(t, s)
	good := newGitRepo(t)
	first := good.commit("x", nil)
	later := filepath.Join(t.TempDir(), "later")
	r, err := ParseRepo(later)
	if err != nil {
		t.Fatalf("--repo of a path not there yet: %v", err)
	}
	var logs logBuffer
	cfg := testConfig(t.TempDir(), Repo{Name: "good", URL: good.dir}, r)
	o, err := New(cfg, s.NC, s.JS, logs.logger())
	if err != nil {
		t.Fatal(err)
	}
	run(t, o)
	seen := map[string]bool{}
	wait := func(sha string) {
		brokertest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
			for _, e := range c.take() {
				seen[e.Commit] = true
			}
			if !seen[sha] {
				return errors.New(sha + " not published")
			}
			return nil
		})
	}
	wait(first)
	brokertest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if len(logs.lines("debug", "repo still failing")) < 2 {
			return errors.New("the missing repo was not polled again")
		}
		return nil
	})
	if errs := logs.lines("error", "cannot poll repo"); len(errs) != 1 || !strings.Contains(errs[0], `"repo":"later"`) {
		t.Fatalf("error lines %q, want one for the missing repo", errs)
	}
	lr := &gitRepo{t: t, dir: later}
	if err := os.MkdirAll(later, 0o755); err != nil {
		t.Fatal(err)
	}
	lr.git("init", "-q", "-b", "main")
	wait(lr.commit("appeared", nil))
	wait(good.commit("y", nil))
}
