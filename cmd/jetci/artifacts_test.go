package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter"
)

// TestArtifactsCommand runs a pipeline with artifacts under jetci up and fetches
// them with `jetci artifacts`.
func TestArtifactsCommand(t *testing.T) {
	repo := newGitRepo(t)
	pipeline := "jobs:\n  build:\n    steps:\n      - mkdir -p dist/sub && echo one > dist/a.txt && echo two > dist/sub/b.txt\n    artifacts: [dist]\n  none:\n    steps: [\"true\"]\n"
	c := repo.Commit("build", map[string]string{".jetci.yml": pipeline})
	url, web, _ := startUpHTTP(t, t.TempDir(), []string{"--runners", "2"}, repo.Dir)
	recs := waitStatus(t, func() ([]reporter.Record, error) { return resultsJSON(t, url, "--all") }, c, "passed")
	ids := map[string]string{}
	for _, r := range recs {
		ids[r.Job] = r.JobID
	}
	run := func(args ...string) (int, string, string) {
		var out, errb strings.Builder
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		code := (&Main{Stdout: &out, Stderr: &errb}).Run(ctx, append([]string{"artifacts", "--nats", url}, args...))
		return code, out.String(), errb.String()
	}
	dir := t.TempDir()
	code, out, errs := run("--job", ids["build"], "--out", dir)
	if code != 0 {
		t.Fatalf("jetci artifacts exited %d: %s", code, errs)
	}
	for p, want := range map[string]string{"dist/a.txt": "one\n", "dist/sub/b.txt": "two\n"} {
		b, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil || string(b) != want {
			t.Errorf("%s = %q, %v", p, b, err)
		}
		if !strings.Contains(out, filepath.Join(dir, p)) {
			t.Errorf("output does not list %s:\n%s", p, out)
		}
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--job", ids["none"]}, "left no artifacts"},
		{[]string{"--job", "00000000000000000000"}, "no such job"},
		{[]string{"--job", "nope"}, "not a job id"},
		{[]string{"--job", ids["build"], "--attempt", "7"}, "has no attempt 7"},
		{nil, "--job is required"},
		{[]string{"--latest", "--job", "build"}, "--latest needs --repo, --branch, --job and --arch"},
		{[]string{"--job", "build", "--repo", "x"}, "go with --latest"},
		{[]string{"--latest", "--repo", "proj", "--branch", "main", "--job", "none", "--arch", recs[0].Arch}, "left artifacts"},
	} {
		if code, _, errs := run(tt.args...); code == 0 || !strings.Contains(errs, tt.want) {
			t.Errorf("jetci artifacts %v: exit %d, %q; want an error with %q", tt.args, code, errs, tt.want)
		}
	}

	// The latest passing build's files: a second build passes with new
	// files, a third fails with its own; --latest and the stable URL give
	// the second's.
	second := repo.Commit("build two", map[string]string{".jetci.yml": strings.Replace(pipeline, "echo one", "echo second", 1)})
	waitStatus(t, func() ([]reporter.Record, error) { return resultsJSON(t, url, "--all") }, second, "passed")
	third := repo.Commit("build three breaks", map[string]string{".jetci.yml": strings.NewReplacer("echo one > dist/a.txt", "echo third > dist/a.txt; false", `["true"]`, `["false"]`).Replace(pipeline)})
	waitStatus(t, func() ([]reporter.Record, error) { return resultsJSON(t, url, "--all") }, third, "failed")
	arch := recs[0].Arch
	dir = t.TempDir()
	code, out, errs = run("--latest", "--repo", "proj", "--branch", "main", "--job", "build", "--arch", arch, "--out", dir)
	if b, err := os.ReadFile(filepath.Join(dir, "dist/a.txt")); code != 0 || err != nil || string(b) != "second\n" || !strings.Contains(errs, events.Short(second)) {
		t.Fatalf("jetci artifacts --latest: exit %d, a.txt %q (%v); %s%s", code, b, err, out, errs)
	}
	resp, err := http.Get(web + "/artifacts/latest/" + "proj" + "/main/build/" + arch + "/dist/sub/b.txt")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "two\n" || resp.Header.Get("X-Jetci-Commit") != second {
		t.Errorf("GET /artifacts/latest/…/dist/sub/b.txt = %d %q (commit %s, want %s)", resp.StatusCode, body, resp.Header.Get("X-Jetci-Commit"), second)
	}
}

func TestSafeJoin(t *testing.T) {
	for _, bad := range []string{"../x", "a/../../x", "/etc/passwd", "", "a//b", "./a"} {
		if _, err := safeJoin("/out", bad); err == nil {
			t.Errorf("safeJoin(%q) accepted", bad)
		}
	}
	if p, err := safeJoin("/out", "dist/a.txt"); err != nil || p != filepath.Join("/out", "dist", "a.txt") {
		t.Errorf("safeJoin = %q, %v", p, err)
	}
}

// FuzzSafeJoin: an artifact path from a record never lands outside --out.
func FuzzSafeJoin(f *testing.F) {
	for _, s := range []string{"dist/a.txt", "../x", "a/../../b", "/abs", "a//b", ".", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		out, err := safeJoin("/out", p)
		if err == nil && !strings.HasPrefix(out, "/out/") {
			t.Fatalf("safeJoin(%q) = %q, outside /out", p, out)
		}
	})
}
