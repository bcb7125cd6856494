package observer

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

// fastImport feeds a git fast-import stream to the repository.
func (r *gitRepo) fastImport(stream string) {
	r.t.Helper()
	cmd := exec.Command("git", "fast-import", "--quiet")
	cmd.Dir = r.dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1")
	cmd.Stdin = strings.NewReader(stream)
	if out, err := cmd.CombinedOutput(); err != nil {
		r.t.Fatalf("git fast-import: %v\n%s", err, out)
	}
}

// TestBadInputCommitsFitTheMaxPayload: a 1 MB commit message, a commit that
// changes 100,000 long paths, and 10,000 branches pushed at once. Every event
// fits the server's max payload and says what was cut; none stalls its branch:
// the commits after them are published too.
func TestBadInputCommitsFitTheMaxPayload(t *testing.T) {
	nBranches := 10000
	if testing.Short() {
		nBranches = 500
	}
	s := brokertest.Run(t)
	c := collect(t, s)
	repo := newGitRepo(t)
	repo.commit("root", nil)
	o := newObserver(t, s, testConfig(t.TempDir(), Repo{Name: "proj", URL: repo.dir}))
	pollAndWait(t, s, o, c, "proj", 1)
	max := int(s.NC.MaxPayload())

	// A 1 MB message, on one line, and a normal commit after it.
	long := strings.Repeat("é", 300<<10) + strings.Repeat("x", 500<<10)
	msgFile := filepath.Join(t.TempDir(), "msg")
	if err := os.WriteFile(msgFile, []byte(long+"\n\nand a body\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	repo.git("commit", "-q", "--allow-empty", "-F", msgFile)
	big := repo.git("rev-parse", "HEAD")
	after := repo.commit("after the big message", nil)
	evs := pollAndWait(t, s, o, c, "proj", 2)
	if evs[0].Commit != big || evs[1].Commit != after {
		t.Fatalf("1 MB message: %v", names(evs))
	}
	if e := evs[0]; len(e.Subject) > subjectMax || !slices.Contains(e.Truncated, "subject") || !strings.HasPrefix(e.Subject, "éé") {
		t.Fatalf("1 MB message: subject of %d bytes, truncated %v", len(e.Subject), e.Truncated)
	}
	if len(evs[1].Truncated) != 0 {
		t.Fatalf("a normal commit says it was cut: %v", evs[1].Truncated)
	}

	// 100,000 changed paths of 250 bytes each: 25 MB of names.
	var st bytes.Buffer
	fmt.Fprintf(&st, "blob\nmark :1\ndata 2\nx\n\ncommit refs/heads/main\ncommitter A <a@example.com> 1700000000 +0000\ndata 5\nwide\nfrom %s\n", after)
	dir := strings.Repeat("d", 230)
	for i := range 100000 {
		fmt.Fprintf(&st, "M 100644 :1 %s/%02d/%014d\n", dir, i%100, i)
	}
	// and a small commit after it, without a checkout of 100,000 files.
	fmt.Fprintf(&st, "\ncommit refs/heads/main\ncommitter A <a@example.com> 1700000001 +0000\ndata 5\nafter\nM 100644 inline small.txt\ndata 1\ns\n\n")
	repo.fastImport(st.String())
	wide := repo.git("rev-parse", "main~1")
	after2 := repo.git("rev-parse", "main")
	evs = pollAndWait(t, s, o, c, "proj", 2)
	if evs[0].Commit != wide || evs[1].Commit != after2 {
		t.Fatalf("100,000 paths: %v", names(evs))
	}
	if e := evs[0]; !e.ChangedCut || len(e.Changed) == 0 || len(e.Changed) >= 5000 || !slices.Contains(e.Truncated, "changed_paths") {
		t.Fatalf("100,000 paths: %d paths, cut %v, truncated %v", len(e.Changed), e.ChangedCut, e.Truncated)
	}
	for _, e := range evs {
		if data, _ := events.Encode(e); len(data) > max {
			t.Fatalf("%s: %d bytes, max payload %d", e.Subject, len(data), max)
		}
	}

	// 10,000 branches at once, each with a commit of its own on main, in a
	// repository of its own (go-git's tree diff against a commit of 100,000
	// files is slow, and that is not what this checks).
	repo = newGitRepo(t)
	repo.commit("root", nil)
	o = newObserver(t, s, testConfig(t.TempDir(), Repo{Name: "many", URL: repo.dir}))
	pollAndWait(t, s, o, c, "many", 1)
	after2 = repo.commit("base", nil)
	pollAndWait(t, s, o, c, "many", 1)
	st.Reset()
	for i := range nBranches {
		fmt.Fprintf(&st, "commit refs/heads/b%05d\ncommitter A <a@example.com> %d +0000\ndata 3\nb%d\nfrom %s\nM 100644 inline b.txt\ndata 1\n%d\n\n", i, 1700000100+i%7, i%10, after2, i%10)
	}
	start := time.Now()
	repo.fastImport(st.String())
	t.Logf("%d branches made in %s", nBranches, time.Since(start))
	start = time.Now()
	evs = pollAndWait(t, s, o, c, "many", nBranches)
	t.Logf("%d branches published in %s", nBranches, time.Since(start))
	seen := map[string]bool{}
	for _, e := range evs {
		if seen[e.Branch] || !strings.HasPrefix(e.Branch, "b") || len(e.Parents) != 1 || e.Parents[0] != after2 {
			t.Fatalf("branch event %s %s parents %v (seen %v)", e.Branch, e.Commit, e.Parents, seen[e.Branch])
		}
		seen[e.Branch] = true
	}
	// And the repository keeps going.
	last := repo.commit("after the branches", nil)
	if evs := pollAndWait(t, s, o, c, "many", 1); evs[0].Commit != last {
		t.Fatalf("after 10,000 branches: %v", names(evs))
	}
}
