package runner

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

// BenchmarkDrainNoOp drains no-op jobs (`true`, one small repo) with 8 runner
// slots (4 runners × 2) and reports jobs per second; the full check's 15,000
// jobs would take 15,000 / that.
//
//	go test -run '^$' -bench DrainNoOp -benchtime 1x ./runner
func BenchmarkDrainNoOp(b *testing.B) {
	const n = 800
	for range b.N {
		s := brokertest.Run(b)
		repo := newGitRepo(b)
		c := repo.Commit("change", map[string]string{"a.txt": "a\n"})
		res := watchResults(b, s)
		var ids []string
		for i := 0; i < n; i++ {
			j := &events.JobQueued{JobRef: events.JobRef{Repo: "proj", Branch: "main", Commit: c, Job: "j" + strconv.Itoa(i), Arch: "amd64"},
				RepoURL: repo.Dir, Pool: "default", Class: events.ClassPeriodic, Steps: []string{"true"}, TimeoutMs: 60000}
			j.JobID = events.JobID(j.Repo, j.Branch, j.Commit, j.Job, j.Arch)
			data, _ := events.Encode(j)
			if _, err := s.JS.Publish(context.Background(), events.JobSubject("default", "amd64", events.ClassPeriodic, "proj", "main"), data); err != nil {
				b.Fatal(err)
			}
			ids = append(ids, j.JobID)
		}
		start := time.Now()
		for i := 0; i < 4; i++ {
			cfg := DefaultConfig()
			cfg.ID, cfg.Arch, cfg.WorkDir, cfg.Slots, cfg.IdlePoll = "r"+strconv.Itoa(i), "amd64", b.TempDir(), 2, 50*time.Millisecond
			r, err := New(cfg, s.NC, s.JS, zerolog.Nop())
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); _ = r.Run(ctx) }()
			b.Cleanup(func() { cancel(); <-done })
		}
		brokertest.CheckFor(b, 10*time.Minute, 50*time.Millisecond, func() error {
			res.mu.Lock()
			defer res.mu.Unlock()
			if len(res.finished) < n {
				return fmt.Errorf("%d of %d done", len(res.finished), n)
			}
			return nil
		})
		took := time.Since(start)
		b.ReportMetric(float64(n)/took.Seconds(), "jobs_per_s")
		b.ReportMetric(15000/(float64(n)/took.Seconds()), "est_15k_s")
	}
}
