package reporter

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/forge"
	"github.com/jetci/jetci/forge/forgetest"
)

// pullFixture is a reporter with a hook secret and a GitHub forge entry for
// repo proj (its statuses go to a fake forge), and an observer stand-in
// that answers pokes for proj.
func pullFixture(t *testing.T) (*webFixture, forge.Repo, func(action string, n int, title, head string)) {
	t.Helper()
	const secret = "pr-pages-secret"
	fs := forgetest.Start(t, forge.GitHub, "octo/proj", "tok")
	repo := fs.Repo("proj")
	s := brokertest.Run(t)
	ctx, cancel := context.WithCancel(context.Background())
	if err := events.DefaultSetup().Ensure(ctx, s.JS); err != nil {
		t.Fatal(err)
	}
	cfg := NotifyConfig{PublicURL: "https://ci.example.com", Forges: []forge.Repo{repo}}
	if err := cfg.Resolve(); err != nil {
		t.Fatal(err)
	}
	rep, err := New(ctx, Config{HTTP: "127.0.0.1:0", HookSecret: secret, Notify: cfg}, s.JS, brokertest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- rep.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	sub, err := s.NC.Subscribe(events.PokeSubject("proj"), func(m *nats.Msg) { _ = m.Respond(nil) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	f := &webFixture{t: t, s: s, rep: rep, base: "http://" + rep.Addr(), ctx: ctx, sign: newTestSigner(s.JS)}
	hook := func(action string, n int, title, head string) {
		t.Helper()
		body := fmt.Sprintf(`{"action":%q,"number":%d,"pull_request":{"number":%d,"title":%q,"html_url":"https://github.example.com/octo/proj/pull/%d",`+
			`"head":{"sha":%q,"repo":{"id":7,"name":"proj","full_name":"octo/proj"}},"base":{"repo":{"id":7,"name":"proj","full_name":"octo/proj"}}},`+
			`"repository":{"id":7,"name":"proj","full_name":"octo/proj"}}`, action, n, n, title, n, head)
		m := hmac.New(sha256.New, []byte(secret))
		m.Write([]byte(body))
		code, out := do(t, "POST", f.base+"/hooks/git", map[string]string{"X-GitHub-Event": "pull_request",
			"X-Hub-Signature-256": "sha256=" + hex.EncodeToString(m.Sum(nil))}, strings.NewReader(body))
		if code != 202 {
			t.Fatalf("%s hook: %d %s", action, code, out)
		}
	}
	return f, repo, hook
}

// TestBrowserPullRequestPages: a pull request's runs are shown under its
// number and title on the overview, its branch page and its commit pages —
// the title its hooks told, a later edit's included, and "PR #13" for one no
// hook told of — and the commit page links to the forge's comparison of the
// branch's previous commit with this one and to the pull request. The API
// carries the same; a reporter started later knows the title too (it is
// kept in JetStream, not in one reporter's memory).
func TestBrowserPullRequestPages(t *testing.T) {
	ctx := browserFor(t)
	f, repo, hook := pullFixture(t)
	p1, p2, p3, m1 := sha('1'), sha('2'), sha('3'), sha('4')
	for i, c := range []struct {
		branch, commit string
	}{{"main", m1}, {"pull/12", p1}, {"pull/12", p2}, {"pull/13", p3}} {
		ref := jref("proj", c.branch, c.commit, "test", "amd64")
		f.runAs(ref, uint64(i+1), events.StatusPassed, ann, "change "+c.commit[:1], t0.Add(time.Duration(i)*time.Minute), nil)
		f.waitFor(ref.JobID, func(r Record) bool { return r.Status == events.StatusPassed })
	}
	hook("opened", 12, "Make it fast", p1)
	hook("synchronize", 12, "Make it fast", p2)
	hook("edited", 12, "Make it faster <b>now</b>", p2)
	const label = "PR #12: Make it faster <b>now</b>"

	navigate(t, ctx, f.base+"/", "table.grid")
	if got := js[string](t, ctx, `document.querySelector('tr[data-branch="pull/12"] a.pull-label').innerText`); got != label {
		t.Errorf("overview names pull/12 %q, want %q", got, label)
	}
	if got := js[string](t, ctx, `document.querySelector('tr[data-branch="pull/13"] a.pull-label').innerText`); got != "PR #13" {
		t.Errorf("overview names pull/13 (no hook) %q", got)
	}
	if got := js[string](t, ctx, `document.querySelector('tr[data-branch="main"] td a').innerText`); got != "main" {
		t.Errorf("overview names main %q", got)
	}
	navigate(t, ctx, f.base+"/branch?repo=proj&branch="+url.QueryEscape("pull/12"), "#commits")
	if h1 := js[string](t, ctx, `document.querySelector('h1').innerText`); !strings.Contains(h1, label) || !strings.Contains(h1, "pull/12 · open") {
		t.Errorf("branch page h1 %q", h1)
	}
	if title := js[string](t, ctx, `document.title`); !strings.Contains(title, label) {
		t.Errorf("branch page title %q", title)
	}
	navigate(t, ctx, f.base+"/commit?repo=proj&branch="+url.QueryEscape("pull/12")+"&commit="+p2, "#jobs")
	if h1 := js[string](t, ctx, `document.querySelector('h1').innerText`); !strings.Contains(h1, label) || strings.Contains(h1, "pull/12") {
		t.Errorf("commit page h1 %q", h1)
	}
	links := js[map[string]string](t, ctx, `({compare: document.getElementById('forge-compare').href, pull: document.getElementById('forge-pull').href,
		commit: document.getElementById('forge-commit').href, previous: document.getElementById('previous').innerText, compareText: document.getElementById('forge-compare').innerText})`)
	want := map[string]string{
		"compare":     "https://github.example.com/octo/proj/compare/" + p1 + "..." + p2,
		"pull":        "https://github.example.com/octo/proj/pull/12",
		"commit":      "https://github.example.com/octo/proj/commit/" + p2,
		"previous":    events.Short(p1),
		"compareText": "compare with " + events.Short(p1),
	}
	for k, v := range want {
		if links[k] != v {
			t.Errorf("commit page %s link %q, want %q", k, links[k], v)
		}
	}
	// The first commit of a pull request has nothing to compare with; a
	// request no hook told of still links to its page on the forge.
	navigate(t, ctx, f.base+"/commit?repo=proj&branch="+url.QueryEscape("pull/13")+"&commit="+p3, "#jobs")
	got := js[map[string]any](t, ctx, `({compare: !!document.getElementById('forge-compare'), pull: document.getElementById('forge-pull').href, h1: document.querySelector('h1').innerText})`)
	if got["compare"] != false || got["pull"] != repo.PullURL(13) || !strings.Contains(got["h1"].(string), "PR #13") {
		t.Errorf("pull/13's first commit page: %v", got)
	}

	// The API: branches, a branch's commits, one commit.
	var branches struct {
		Branches []BranchSummary `json:"branches"`
	}
	f.getJSON("/api/v1/branches?repo=proj", &branches)
	labels := map[string]string{}
	for _, b := range branches.Branches {
		if b.Pull != nil {
			labels[b.Branch] = b.Pull.Label + " #" + fmt.Sprint(b.Pull.Number) + " " + b.Pull.State
		}
	}
	if labels["pull/12"] != label+" #12 open" || labels["pull/13"] != "PR #13 #13 " || labels["main"] != "" {
		t.Errorf("branches API pulls %q", labels)
	}
	var commits struct {
		Pull *Pull `json:"pull"`
	}
	f.getJSON("/api/v1/commits?repo=proj&branch="+url.QueryEscape("pull/13"), &commits)
	if commits.Pull == nil || commits.Pull.Label != "PR #13" || commits.Pull.Number != 13 {
		t.Errorf("commits API pull %+v", commits.Pull)
	}
	var one struct {
		Commit   string      `json:"commit"`
		Pull     *Pull       `json:"pull"`
		Previous string      `json:"previous"`
		Forge    *ForgeLinks `json:"forge_links"`
	}
	f.getJSON("/api/v1/commits/"+p2+"?repo=proj&branch="+url.QueryEscape("pull/12"), &one)
	if one.Pull == nil || one.Pull.Label != label || one.Pull.Title != "Make it faster <b>now</b>" || one.Previous != p1 ||
		one.Forge == nil || one.Forge.Compare != want["compare"] || one.Forge.Pull != want["pull"] {
		t.Errorf("commit API %+v %+v %+v", one, one.Pull, one.Forge)
	}

	// Another reporter on the same system knows the title from JetStream.
	rctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	other, err := New(rctx, Config{}, f.s.JS, brokertest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- other.Run(rctx) }()
	defer func() { cancel(); <-done }()
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if p := other.View().PullOf("proj", "pull/12"); p.Label != label {
			return fmt.Errorf("a second reporter names pull/12 %q", p.Label)
		}
		return nil
	})
}
