package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/chromedp"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter"
)

var screenshots = flag.Bool("screenshots", false, "browser test: save the overview and job page screenshots into docs/")

// chromium finds a Chromium to drive, or skips the test saying how to get one.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("JETCI_REQUIRE_BROWSER") != "" {
		t.Fatal("no Chromium on PATH, and JETCI_REQUIRE_BROWSER is set")
	}
	t.Skip("no Chromium on PATH: install Debian's chromium package to run the browser test (.ci/run does)")
	return ""
}

// TestBrowserOverviewJobPageAndRecheck drives the web UI in a real headless
// Chromium against `jetci up`: the overview changes by itself when a commit
// lands, the job page shows the log, a logged-in re-check adds attempt 2, and
// the artifact downloads.
func TestBrowserOverviewJobPageAndRecheck(t *testing.T) {
	bin := chromium(t)
	repo := newGitRepo(t)
	pipeline := "jobs:\n  test:\n    steps:\n      - echo BUILD-LOG-MARKER; mkdir -p dist; echo hello-artifact > dist/app.txt\n      - grep -q yes ok\n    artifacts: [dist/app.txt]\n"
	first := repo.Commit("first: passes", map[string]string{".jetci.yml": pipeline, "ok": "yes\n"})
	const token = "browser-test-token"
	_, web, _ := startUpHTTP(t, t.TempDir(), []string{"--runners", "1", "--admin-token", token}, repo.Dir)
	waitJob(t, web, first, "passed")

	downloads := t.TempDir()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true), chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1200, 800),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, 3*time.Minute)
	defer cancelT()
	run := func(what string, actions ...chromedp.Action) {
		t.Helper()
		if err := chromedp.Run(ctx, actions...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	// waitText polls the page's text until it holds want.
	waitText := func(what, sel, want string) string {
		t.Helper()
		var text string
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			text = ""
			err := chromedp.Run(ctx, chromedp.Evaluate(fmt.Sprintf(`(document.querySelector(%q)||{innerText:""}).innerText`, sel), &text))
			if err == nil && strings.Contains(text, want) {
				return text
			}
			time.Sleep(100 * time.Millisecond)
		}
		var body, loc string
		_ = chromedp.Run(ctx, chromedp.Evaluate(`document.body.innerText`, &body), chromedp.Location(&loc))
		t.Fatalf("%s: %q never showed %q; last text:\n%s\npage %s:\n%s", what, sel, want, text, loc, body)
		return ""
	}

	run("download folder", browser.SetDownloadBehavior(browser.SetDownloadBehaviorBehaviorAllow).WithDownloadPath(downloads))
	run("open the overview", chromedp.Navigate(web+"/"), chromedp.WaitVisible("table.grid", chromedp.ByQuery),
		chromedp.Evaluate(`window.__stayed = true`, nil))
	waitText("first commit on the overview", "#live", events.Short(first))

	// A commit that fails: the overview shows it without a reload.
	second := repo.Commit("second: breaks it", map[string]string{"ok": "no\n"})
	waitText("new head on the overview", "#live", events.Short(second))
	waitText("its status on the overview", "#live", "failed")
	var stayed bool
	run("no reload", chromedp.Evaluate(`window.__stayed === true`, &stayed))
	if !stayed {
		t.Fatal("the overview reloaded itself instead of updating in place")
	}
	if *screenshots {
		shot(t, ctx, "docs/overview.png")
	}

	// The job page shows the log.
	job := waitJob(t, web, second, "failed")
	run("open the job page", chromedp.Navigate(web+"/job/"+job.JobID), chromedp.WaitVisible("#log", chromedp.ByQuery))
	waitText("the log", "#log", "BUILD-LOG-MARKER")
	if *screenshots {
		shot(t, ctx, "docs/job.png")
	}

	// Log in with the token, press re-check, see attempt 2.
	run("log in", chromedp.Navigate(web+"/login?next=/job/"+job.JobID),
		chromedp.SendKeys(`input[name="token"]`, token, chromedp.ByQuery),
		chromedp.Submit(`input[name="token"]`, chromedp.ByQuery),
		chromedp.WaitVisible("#recheck", chromedp.ByQuery))
	run("press re-check", chromedp.Click("#recheck", chromedp.ByQuery))
	waitText("attempt 2 in the attempts table", "#attempts", "\n2\t")
	waitText("attempt 2 ends", "#live", "failed")

	// Download the artifact from the job page.
	run("download the artifact", chromedp.WaitVisible(`#artifacts a`, chromedp.ByQuery), chromedp.Click(`#artifacts a`, chromedp.ByQuery))
	var got []byte
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if got, _ = os.ReadFile(filepath.Join(downloads, "app.txt")); string(got) == "hello-artifact\n" {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if string(got) != "hello-artifact\n" {
		entries, _ := os.ReadDir(downloads)
		t.Fatalf("downloaded %q; folder has %v", got, entries)
	}
}

// waitJob polls the API until the commit's job has the status, and returns it.
func waitJob(t *testing.T, web, commit, status string) reporter.Record {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		resp, err := http.Get(web + "/api/v1/results?all=1&commit=" + commit)
		if err == nil {
			var body struct{ Results []reporter.Record }
			err = json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
			for _, r := range body.Results {
				if string(r.Status) == status {
					return r
				}
				last = fmt.Sprintf("%s %s", r.Status, r.Error)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("commit %s never %s; last %s", events.Short(commit), status, last)
	return reporter.Record{}
}

func shot(t *testing.T, ctx context.Context, path string) {
	t.Helper()
	var png []byte
	if err := chromedp.Run(ctx, chromedp.FullScreenshot(&png, 100)); err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if err := os.WriteFile(filepath.Join("..", "..", path), png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("saved %s", path)
}
