package reporter

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter/readmodel"
	"github.com/jetci/jetci/reporter/readmodel/pgtest"
)

// BenchmarkFold folds a synthetic history (JETCI_BENCH_JOBS jobs, default
// 20,000: queued, started and finished events each, in the seed's shape)
// from a real JetStream into a new read model, and reports finished jobs
// folded per second. JETCI_BENCH_DB=postgres uses a real PostgreSQL.
//
//	go test -run '^$' -bench Fold -benchtime 1x ./reporter
func BenchmarkFold(b *testing.B) {
	s, n := publishBenchHistory(b)
	ctx := context.Background()
	runners, err := s.JS.KeyValue(ctx, events.BucketRunners)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		dsn := filepath.Join(b.TempDir(), DBFile)
		if os.Getenv("JETCI_BENCH_DB") == "postgres" {
			dsn = pgtest.Start(b).NewDB()
		}
		db, err := readmodel.Open(ctx, dsn)
		if err != nil {
			b.Fatal(err)
		}
		v := NewView(db, s.JS, runners, zerolog.Nop())
		if v.guard, err = newGuard(ctx, s.JS, runners); err != nil { // signatures and claims checked, as live
			b.Fatal(err)
		}
		start := time.Now()
		fctx, stop := context.WithCancel(ctx)
		go v.fold(fctx)
		<-v.Ready()
		took := time.Since(start)
		stop()
		db.Close()
		if st := v.Stats(); st.Bad != 0 {
			b.Fatalf("%d events refused or malformed: %+v", st.Bad, st)
		}
		b.ReportMetric(float64(n)/took.Seconds(), "jobs/s")
		if !readmodel.IsPostgres(dsn) {
			var size int64
			for _, suffix := range []string{"", "-wal"} {
				if fi, err := os.Stat(dsn + suffix); err == nil {
					size += fi.Size()
				}
			}
			b.ReportMetric(float64(size)/float64(n), "db_bytes/job")
		}
	}
}

// BenchmarkFoldWholeReporter is BenchmarkFold with the whole reporter
// running (its jetci-results bucket and test history consumers as well).
func BenchmarkFoldWholeReporter(b *testing.B) {
	s, n := publishBenchHistory(b)
	ctx := context.Background()
	b.ResetTimer()
	for range b.N {
		rctx, cancel := context.WithCancel(ctx)
		start := time.Now()
		r, err := New(rctx, Config{DB: filepath.Join(b.TempDir(), DBFile)}, s.JS, zerolog.Nop())
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- r.Run(rctx) }()
		<-r.View().Ready()
		took := time.Since(start)
		cancel()
		<-done
		b.ReportMetric(float64(n)/took.Seconds(), "jobs/s")
	}
}

// publishBenchHistory starts a server and publishes JETCI_BENCH_JOBS synthetic
// jobs (default 20,000; queued, started and finished events each, in the
// seed's shape) as the services and runners would sign them.
func publishBenchHistory(b *testing.B) (*brokertest.Server, int) {
	b.Helper()
	n := 20000
	if s := os.Getenv("JETCI_BENCH_JOBS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	s := brokertest.Run(b)
	svc, run, err := SyntheticPublishers(context.Background(), s.JS)
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < n; i++ {
		for _, ev := range SyntheticJob(i, 50, 10, 3) {
			data, _ := events.Encode(ev.Event)
			if _, err := ev.With(svc, run).PublishAsync(ev.Subject, data); err != nil {
				b.Fatal(err)
			}
		}
		if i%5000 == 0 {
			<-allComplete(svc, run)
		}
	}
	<-allComplete(svc, run)
	return s, n
}
