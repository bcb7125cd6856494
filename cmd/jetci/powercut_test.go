package main

import (
	"fmt"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jetci/jetci/broker/brokertest"
)

// TestPowerCut: jetci up killed with SIGKILL during a burst of commits, then
// started again on the same --data: every commit ends with its result, once.
func TestPowerCut(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := jetciBinary(t)
	repo := newGitRepo(t)
	commits := []string{repo.Commit("add tests", map[string]string{"tests/test_ok.py": passingTest})}
	data, natsAddr := t.TempDir(), reserveAddr(t)
	up := startUpProcess(t, bin, data, natsAddr, repo.Dir)
	read := binResults(bin, up.url)
	waitStatus(t, read, commits[0], "passed")
	const n = 30
	for i := range n {
		commits = append(commits, repo.Commit("burst "+strconv.Itoa(i), map[string]string{"n.txt": strconv.Itoa(i)}))
		if i == n/2 {
			// Cut the power while commits are still coming in and jobs run.
			brokertest.CheckFor(t, 30*time.Second, 5*time.Millisecond, func() error {
				recs, err := read()
				if err != nil || len(recs) < 4 {
					return fmt.Errorf("%d results yet", len(recs))
				}
				return nil
			})
			_ = up.cmd.Process.Signal(syscall.SIGKILL)
			up.cmd.Wait()
		}
	}
	up2 := startUpProcess(t, bin, data, natsAddr, repo.Dir)
	read = binResults(bin, up2.url)
	start := time.Now()
	brokertest.CheckFor(t, 90*time.Second, 100*time.Millisecond, func() error {
		recs, err := read()
		if err != nil {
			return err
		}
		per := map[string]int{}
		for _, r := range recs {
			per[r.Commit]++
			if r.Status != "passed" {
				return fmt.Errorf("commit %s: %s %s", r.Commit[:8], r.Status, r.Error)
			}
		}
		for _, c := range commits {
			if per[c] != 1 {
				return fmt.Errorf("commit %s has %d records, want 1", c[:8], per[c])
			}
		}
		if len(recs) != len(commits) {
			return fmt.Errorf("%d records for %d commits", len(recs), len(commits))
		}
		return nil
	})
	t.Logf("all %d commits recorded %v after the restart", len(commits), time.Since(start).Round(time.Millisecond))
}
