package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jetci/jetci/reporter"
)

// TestArtifactsCommand runs a pipeline with artifacts under jetci up and fetches
// them with `jetci artifacts`.
func TestArtifactsCommand(t *testing.T) {
	repo := newGitRepo(t)
	pipeline := "jobs:\n  build:\n    steps:\n      - mkdir -p dist/sub && echo one > dist/a.txt && echo two > dist/sub/b.txt\n    artifacts: [dist]\n  none:\n    steps: [\"true\"]\n"
	c := repo.Commit("build", map[string]string{".jetci.yml": pipeline})
	url, _ := startUp(t, t.TempDir(), repo.Dir)
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
	} {
		if code, _, errs := run(tt.args...); code == 0 || !strings.Contains(errs, tt.want) {
			t.Errorf("jetci artifacts %v: exit %d, %q; want an error with %q", tt.args, code, errs, tt.want)
		}
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
