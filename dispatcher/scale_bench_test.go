package dispatcher

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/internal/procstat"
)

// BenchmarkFullCheckEnqueue15k is the build-check system's full check: 5,000
// module × branch heads (500 repos × 10 branches), each a job on 3 archs,
// 15,000 jobs. The commits are in JETCI_COMMITS first; the clock runs from
// the dispatcher's start until every job is in the work queue. Baseline, same
// run: publishing 15,000 messages of the same size one by one, each awaited
// (the floor for a dispatcher that stores each job before the next).
//
//	go test -run '^$' -bench FullCheckEnqueue15k -benchtime 1x ./dispatcher
func BenchmarkFullCheckEnqueue15k(b *testing.B) {
	const heads = 5000
	for range b.N {
		s := brokertest.Run(b)
		ctx, cancel := context.WithCancel(context.Background())
		if err := events.DefaultSetup().Ensure(ctx, s.JS); err != nil {
			b.Fatal(err)
		}
		pipeline := "jobs:\n  build:\n    steps: [\"true\"]\n    arch: [amd64, arm64, ia64]\n"
		for i := 0; i < heads; i++ {
			ev := &events.CommitDetected{Repo: fmt.Sprintf("mod%03d", i%500), Branch: "b" + strconv.Itoa(i/500), RepoURL: "/src",
				Commit: fmt.Sprintf("%040x", i+1), Class: events.ClassPeriodic, PipelinePath: ".jetci.yml", Pipeline: pipeline}
			data, _ := events.Encode(ev)
			if _, err := s.JS.PublishAsync(events.CommitSubject(ev.Repo, ev.Branch), data); err != nil {
				b.Fatal(err)
			}
		}
		<-s.JS.PublishAsyncComplete()

		// Baseline: 15,000 awaited publishes of a job-sized message.
		payload := []byte(strings.Repeat("x", 400))
		t0 := time.Now()
		for i := 0; i < 3*heads; i++ {
			if _, err := s.JS.Publish(ctx, "jetci.job.bench.amd64.user.x.y", payload); err != nil {
				b.Fatal(err)
			}
		}
		base := time.Since(t0)
		st, _ := s.JS.Stream(ctx, events.StreamJobs)
		_ = st.Purge(ctx)

		cfg := DefaultConfig()
		cfg.Arch = []string{"amd64"}
		d, err := New(cfg, s.JS, zerolog.Nop())
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		done := make(chan struct{})
		go func() { defer close(done); _ = d.Run(ctx) }()
		brokertest.CheckFor(b, 5*time.Minute, 50*time.Millisecond, func() error {
			info, err := st.Info(ctx, jetstream.WithSubjectFilter(events.SubjectJobs+".>"))
			if err != nil {
				return err
			}
			if info.State.Msgs < 3*heads {
				return fmt.Errorf("%d jobs queued", info.State.Msgs)
			}
			return nil
		})
		took := time.Since(start)
		cancel()
		<-done
		b.ReportMetric(took.Seconds(), "enqueue_s")
		b.ReportMetric(base.Seconds(), "baseline_s")
		b.ReportMetric(float64(procstat.MemoryKB(procstat.Self(), "VmHWM"))/1024, "rss_MB")
	}
}
