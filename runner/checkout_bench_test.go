package runner

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// genRepo writes a repository of files files and commits commits with git
// fast-import (no network): the first commit adds every file, each later one
// changes five. It returns the repo and its commits, oldest first.
func genRepo(tb testing.TB, files, commits int) (string, []string) {
	tb.Helper()
	dir := filepath.Join(tb.TempDir(), "big")
	if out, err := exec.Command("git", "init", "-q", "-b", "main", dir).CombinedOutput(); err != nil {
		tb.Fatalf("git init: %v %s", err, out)
	}
	cmd := exec.Command("git", "-C", dir, "fast-import", "--quiet")
	in, _ := cmd.StdinPipe()
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	w := bufio.NewWriter(in)
	for c := 0; c < commits; c++ {
		fmt.Fprintf(w, "commit refs/heads/main\nmark :%d\ncommitter B <b@example.com> %d +0000\ndata 8\ncommit %d\n", c+1, 1700000000+c, c%10)
		if c > 0 {
			fmt.Fprintf(w, "from :%d\n", c)
		}
		write := func(i int) {
			body := fmt.Sprintf("file %d version %d\n%s", i, c, strings.Repeat("x", 200))
			fmt.Fprintf(w, "M 100644 inline dir%02d/sub%02d/f%05d.txt\ndata %d\n%s\n", i%50, (i/50)%20, i, len(body), body)
		}
		if c == 0 {
			for i := 0; i < files; i++ {
				write(i)
			}
		} else {
			for k := 0; k < 5; k++ {
				write((c*7919 + k*104729) % files)
			}
		}
		w.WriteString("\n")
	}
	w.Flush()
	in.Close()
	if err := cmd.Wait(); err != nil {
		tb.Fatalf("fast-import: %v", err)
	}
	out, err := exec.Command("git", "-C", dir, "rev-list", "--reverse", "main").Output()
	if err != nil {
		tb.Fatal(err)
	}
	return dir, strings.Fields(string(out))
}

// BenchmarkCheckout measures the runner's checkout (cache + a workspace that
// moves from commit to commit) against `git checkout` in a clone, over the
// same sequence of commits of a generated repository of 10,000 files and
// 1,000 commits: 40 moves of one commit, then 10 far jumps.
//
//	go test -run '^$' -bench Checkout -benchtime 1x ./runner
func BenchmarkCheckout(b *testing.B) {
	repo, commits := genRepo(b, 10000, 1000)
	var seq []string
	for i := 0; i < 40; i++ {
		seq = append(seq, commits[500+i])
	}
	for i := 0; i < 10; i++ {
		seq = append(seq, commits[(i*397)%len(commits)])
	}
	work := b.TempDir()
	c := &caches{dir: filepath.Join(work, "cache"), per: map[string]*sync.RWMutex{}}
	ws := filepath.Join(work, "ws")
	ctx := context.Background()
	// Warm both: the first checkout of each is a clone, which neither pays per job.
	if err := c.prepare(ctx, "big", repo, commits[499], ws, zerolog.Nop()); err != nil {
		b.Fatal(err)
	}
	clone := filepath.Join(work, "clone")
	if out, err := exec.Command("git", "clone", "-q", repo, clone).CombinedOutput(); err != nil {
		b.Fatalf("clone: %v %s", err, out)
	}
	if out, err := exec.Command("git", "-C", clone, "checkout", "-q", commits[499]).CombinedOutput(); err != nil {
		b.Fatalf("checkout: %v %s", err, out)
	}
	b.ResetTimer()
	for range b.N {
		var near, far, gnear, gfar time.Duration
		for i, h := range seq {
			jetci := func() time.Duration {
				t0 := time.Now()
				if err := c.prepare(ctx, "big", repo, h, ws, zerolog.Nop()); err != nil {
					b.Fatal(err)
				}
				return time.Since(t0)
			}
			git := func() time.Duration {
				t0 := time.Now()
				if out, err := exec.Command("git", "-C", clone, "checkout", "-q", h).CombinedOutput(); err != nil {
					b.Fatalf("git checkout: %v %s", err, out)
				}
				return time.Since(t0)
			}
			// The clone's objects are hard links to the same packs, so who goes
			// first warms the page cache for the other: take turns.
			var d, g time.Duration
			if i%2 == 0 {
				d, g = jetci(), git()
			} else {
				g, d = git(), jetci()
			}
			if i < 40 {
				near, gnear = near+d, gnear+g
			} else {
				far, gfar = far+d, gfar+g
			}
		}
		b.ReportMetric(float64(near.Milliseconds())/40, "jetci_near_ms")
		b.ReportMetric(float64(gnear.Milliseconds())/40, "git_near_ms")
		b.ReportMetric(float64(far.Milliseconds())/10, "jetci_far_ms")
		b.ReportMetric(float64(gfar.Milliseconds())/10, "git_far_ms")
		b.ReportMetric(float64(near+far)/float64(gnear+gfar), "ratio")
	}
}
