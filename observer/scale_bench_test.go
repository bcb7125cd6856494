package observer

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/internal/procstat"
)

// BenchmarkIdlePolling100x10 measures what watching 100 repositories of 10
// branches each costs when nothing changes: the CPU time of the whole test
// process (observer and embedded NATS server) over 10 s of 1 s polls, as a
// share of one core, and its resident memory.
//
//	go test -run '^$' -bench IdlePolling100x10 -benchtime 1x ./observer
func BenchmarkIdlePolling100x10(b *testing.B) {
	const repos, branches, window = 100, 10, 10 * time.Second
	dir := b.TempDir()
	tmpl := filepath.Join(dir, "template")
	git := func(args ...string) {
		cmd := exec.Command("git", append([]string{"-c", "user.name=B", "-c", "user.email=b@example.com", "-c", "commit.gpgsign=false"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	git("init", "-q", "-b", "main", tmpl)
	os.WriteFile(filepath.Join(tmpl, "a.txt"), []byte("a"), 0o644)
	git("-C", tmpl, "add", ".")
	git("-C", tmpl, "commit", "-q", "-m", "first")
	for i := 1; i < branches; i++ {
		git("-C", tmpl, "branch", "b"+strconv.Itoa(i))
	}
	var list []Repo
	for i := range repos {
		p := filepath.Join(dir, fmt.Sprintf("r%03d.git", i))
		git("clone", "-q", "--bare", tmpl, p)
		list = append(list, Repo{Name: fmt.Sprintf("r%03d", i), URL: p})
	}
	s := brokertest.Run(b)
	cfg := DefaultConfig()
	cfg.Repos, cfg.CacheDir, cfg.Poll = list, filepath.Join(dir, "cache"), time.Second
	o, err := New(cfg, s.NC, s.JS, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	stop := runB(b, o)
	defer stop()
	// Wait until every branch of every repo was seen once.
	brokertest.CheckFor(b, 2*time.Minute, 100*time.Millisecond, func() error {
		kv, err := s.JS.KeyValue(b.Context(), "jetci-heads")
		if err != nil {
			return err
		}
		keys, err := kv.Keys(b.Context())
		if err != nil || len(keys) < repos*branches {
			return fmt.Errorf("%d heads", len(keys))
		}
		return nil
	})
	b.ResetTimer()
	for range b.N {
		cpu0, wall0 := cpuTime(), time.Now()
		deadline := time.Now().Add(window)
		for time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond) // the benchmark's own window; nothing is waited for
		}
		cpu := cpuTime() - cpu0
		b.ReportMetric(100*cpu.Seconds()/time.Since(wall0).Seconds(), "cpu_pct_of_core")
		b.ReportMetric(float64(procstat.MemoryKB(procstat.Self(), "VmRSS"))/1024, "rss_MB")
	}
}

func runB(b *testing.B, o *Observer) func() {
	ctx, cancel := contextWithCancel()
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	return func() { cancel(); <-done }
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func contextWithCancel() (context.Context, context.CancelFunc) {
	return context.WithCancel(context.Background())
}
