package observer

import (
	"crypto/sha1"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-git/v5"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

func TestTrigger(t *testing.T) {
	s := brokertest.Run(t)
	c := collect(t, s)
	repo := newGitRepo(t)
	first := repo.commit("one", nil)
	cfg := testConfig(t.TempDir(), Repo{Name: "proj", URL: repo.dir})
	cfg.Poll = time.Hour // Run polls once at start, then only triggers act
	o := newObserver(t, s, cfg)
	run(t, o)
	brokertest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error { return headIs(s, "proj", "main", first) })
	c.take()
	head := repo.commit("two", nil)
	ask := func(req *events.TriggerRequest) *events.TriggerReply {
		t.Helper()
		data, _ := events.Encode(req)
		var reply *events.TriggerReply
		// The subscription is made by Run: retry until it answers.
		brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
			m, err := s.NC.Request(events.TriggerSubject(req.Repo), data, 10*time.Second)
			if err != nil {
				return err
			}
			reply, err = events.DecodeAs[events.TriggerReply](m.Data)
			return err
		})
		return reply
	}
	userEvent := func(r *events.TriggerReply) *events.CommitDetected {
		t.Helper()
		var found *events.CommitDetected
		brokertest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
			for _, e := range c.take() {
				if e.TriggerID == r.TriggerID {
					found = e
					return nil
				}
				t.Errorf("unexpected event %+v", e)
			}
			return fmt.Errorf("no event for trigger %s", r.TriggerID)
		})
		return found
	}

	// The branch head, freshly fetched (no poll has seen "two" yet).
	r := ask(&events.TriggerRequest{Repo: "proj", Branch: "main"})
	if r.Error != "" || r.Commit != head || r.TriggerID == "" {
		t.Fatalf("trigger reply %+v", r)
	}
	e := userEvent(r)
	if e.Class != events.ClassUser || e.Commit != head || e.Branch != "main" || e.Subject != "two" || e.Parents[0] != first {
		t.Fatalf("triggered event %+v", e)
	}

	// A commit by prefix, and by full sha: a fresh trigger id each time, so the
	// same commit can be triggered again (different Msg-Id).
	ids := map[string]bool{r.TriggerID: true}
	for _, ref := range []string{first[:4], strings.ToUpper(first[:9]), first, first} {
		r := ask(&events.TriggerRequest{Repo: "proj", Branch: "main", Commit: ref})
		if r.Error != "" || r.Commit != first || ids[r.TriggerID] {
			t.Fatalf("trigger %s: %+v", ref, r)
		}
		ids[r.TriggerID] = true
		if e := userEvent(r); e.Commit != first || e.Class != events.ClassUser {
			t.Fatalf("triggered event %+v", e)
		}
	}
	// A trigger does not move the recorded head (no poll has seen "two").
	checkHead(t, s, "proj", "main", first)

	// A branch deleted after a trigger fetched it is gone for the next one.
	repo.git("branch", "gone")
	if r := ask(&events.TriggerRequest{Repo: "proj", Branch: "gone"}); r.Error != "" || r.Commit != head {
		t.Fatalf("trigger of a new branch: %+v", r)
	} else {
		userEvent(r)
	}
	repo.git("branch", "-D", "gone")

	for _, tt := range []struct {
		req  events.TriggerRequest
		want string
	}{
		{events.TriggerRequest{Repo: "proj", Branch: "nope"}, `no branch "nope" in repo proj`},
		{events.TriggerRequest{Repo: "proj", Branch: "gone"}, `no branch "gone" in repo proj`},
		{events.TriggerRequest{Repo: "proj", Branch: "main", Commit: "ffffffff"}, "no commit ffffffff in repo proj"},
		{events.TriggerRequest{Repo: "proj", Branch: "main", Commit: "abc"}, `no commit "abc" in repo proj`},
		{events.TriggerRequest{Repo: "proj", Branch: "main", Commit: "main"}, `no commit "main" in repo proj`},
		{events.TriggerRequest{Repo: "proj", Branch: "main", Commit: "HEAD~1"}, `no commit "HEAD~1" in repo proj`},
	} {
		if r := ask(&tt.req); !strings.HasPrefix(r.Error, tt.want) || r.Commit != "" || r.TriggerID != "" {
			t.Errorf("trigger %+v: reply %+v, want error %q", tt.req, r, tt.want)
		}
	}
	// A malformed request gets an error reply too.
	m, err := s.NC.Request(events.TriggerSubject("proj"), []byte(`{"type":"nonsense"}`), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := events.DecodeAs[events.TriggerReply](m.Data); err != nil || r.Error == "" {
		t.Fatalf("malformed request: %+v %v", r, err)
	}
	if err := s.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, e := range c.take() {
		t.Errorf("refused triggers published %+v", e)
	}
}

// TestResolveCommitAmbiguous makes two commits whose shas share their first 4
// hex digits (a birthday search over commit messages) and checks that a short
// prefix is refused as ambiguous while a longer one resolves.
func TestResolveCommitAmbiguous(t *testing.T) {
	repo := newGitRepo(t)
	repo.commit("base", nil)
	tree := repo.git("rev-parse", "HEAD^{tree}")
	seen := map[string]string{}
	var a, b string
	for i := 0; a == ""; i++ {
		body := fmt.Sprintf("tree %s\nauthor A <a@x> 1700000000 +0000\ncommitter A <a@x> 1700000000 +0000\n\nm%d\n", tree, i)
		sum := fmt.Sprintf("%x", sha1.Sum([]byte(fmt.Sprintf("commit %d\x00%s", len(body), body))))
		if prev, ok := seen[sum[:4]]; ok {
			a, b = prev, body
		}
		seen[sum[:4]] = body
	}
	write := func(body string) string {
		cmd := exec.Command("git", "hash-object", "-t", "commit", "-w", "--stdin")
		cmd.Dir, cmd.Stdin = repo.dir, strings.NewReader(body)
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	shaA, shaB := write(a), write(b)
	if shaA[:4] != shaB[:4] || shaA == shaB {
		t.Fatalf("no shared prefix: %s %s", shaA, shaB)
	}
	gr, err := git.PlainOpen(repo.dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := resolveCommit(gr, "proj", shaA[:4]); err == nil || !strings.Contains(err.Error(), "ambiguous") {
		t.Fatalf("prefix %s: %v, want ambiguous", shaA[:4], err)
	}
	n := 5
	for shaA[:n] == shaB[:n] {
		n++
	}
	for _, sha := range []string{shaA, shaB} {
		if h, err := resolveCommit(gr, "proj", sha[:n]); err != nil || h.String() != sha {
			t.Fatalf("prefix %s: %v %v, want %s", sha[:n], h, err, sha)
		}
	}
	// A tree is not a commit, even when its sha is given in full.
	if _, err := resolveCommit(gr, "proj", tree); err == nil || err.Error() != "no commit "+tree+" in repo proj" {
		t.Fatalf("tree sha: %v", err)
	}
}
