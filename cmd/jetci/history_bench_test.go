package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/internal/procstat"
	"github.com/jetci/jetci/reporter"
	"github.com/jetci/jetci/reporter/readmodel"
	"github.com/jetci/jetci/reporter/readmodel/pgtest"
)

// BenchmarkHistory publishes a history of JETCI_BENCH_JOBS finished jobs
// (default 100,000) as the documented queued, started and finished events,
// in the seed's shape (50 modules × 10 branches × 3 archs per full check),
// starts a real `jetci reporter` process on a new read model
// (JETCI_BENCH_DB=sqlite, the default, or postgres) and reports: the fold
// rate, the reporter's RSS, restart-to-ready, the p50/p95 time and size of
// every page and API list (40 requests each), and `jetci results --repo R --branch B --limit
// 100`.
//
//	JETCI_BENCH_JOBS=100000 go test -run '^$' -bench History -benchtime 1x -timeout 60m ./cmd/jetci
func BenchmarkHistory(b *testing.B) {
	n := 100000
	if s := os.Getenv("JETCI_BENCH_JOBS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	backend := os.Getenv("JETCI_BENCH_DB")
	bin := jetciBinary(b)
	s := brokertest.Run(b)
	start := time.Now()
	svc, run, err := reporter.SyntheticPublishers(context.Background(), s.JS)
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < n; i++ {
		for _, ev := range reporter.SyntheticJob(i, 50, 10, 3) {
			data, err := events.Encode(ev.Event)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := ev.With(svc, run).PublishAsync(ev.Subject, data); err != nil {
				b.Fatal(err)
			}
		}
		if i%1000 == 0 {
			<-svc.PublishAsyncComplete()
			<-run.PublishAsyncComplete()
		}
	}
	<-svc.PublishAsyncComplete()
	<-run.PublishAsyncComplete()
	last := lastSeqOf(b, s)
	b.Logf("published %d jobs (%d events) in %v", n, last, time.Since(start).Round(time.Millisecond))
	// The baseline: reading the whole stream, in order, doing nothing with it.
	readStart := time.Now()
	cons, err := s.JS.OrderedConsumer(context.Background(), events.StreamResults, jetstream.OrderedConsumerConfig{})
	if err != nil {
		b.Fatal(err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(4096))
	if err != nil {
		b.Fatal(err)
	}
	for read := uint64(0); read < last; read++ {
		if _, err := it.Next(); err != nil {
			b.Fatal(err)
		}
	}
	it.Stop()
	baseRead := time.Since(readStart)
	for range b.N {
		dsn := filepath.Join(b.TempDir(), reporter.DBFile)
		rebuilt := filepath.Join(b.TempDir(), reporter.DBFile)
		if backend == "postgres" {
			pg := pgtest.Start(b)
			dsn, rebuilt = pg.NewDB(), pg.NewDB()
		}
		addr := reserveAddr(b)
		startReporter := func() *child {
			c := &child{cmd: exec.Command(bin, "reporter", "--nats", s.URL, "--http", addr, "--db", dsn, "--log-level", "warn"), logs: &syncBuffer{}}
			c.cmd.Stdout, c.cmd.Stderr = c.logs, c.logs
			if err := c.cmd.Start(); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { c.kill(syscall.SIGKILL) })
			return c
		}
		base := "http://" + addr
		// Fold.
		t0 := time.Now()
		c := startReporter()
		watch, err := readmodel.Open(context.Background(), dsn)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			if b.Failed() {
				b.Logf("reporter log:\n%.3000s", c.logs.String())
			}
		})
		// At least 200 jobs/s, or something is wrong: fail with the log.
		brokertest.CheckFor(b, max(time.Minute, time.Duration(n/200)*time.Second), 50*time.Millisecond, func() error {
			pos, err := watch.Position(context.Background(), events.StreamResults)
			if err != nil || pos < last {
				return fmt.Errorf("applied %d of %d (%v)", pos, last, err)
			}
			return nil
		})
		fold := time.Since(t0)
		foldCPU := procstat.CPUSeconds(c.cmd.Process.Pid) // the reporter's user + system time for the fold (its start included)
		watch.Close()
		// The reporter says it is ready a moment after its last batch (the
		// read model's position can reach the end a moment before).
		brokertest.CheckFor(b, time.Minute, 5*time.Millisecond, func() error {
			resp, err := http.Get(base + "/api/v1/results?limit=1")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("%d", resp.StatusCode)
			}
			return nil
		})
		rssAfterFold, peak := rssOf(b, c.cmd.Process.Pid)
		// Pages and API lists: the wait above covers them (until the
		// reporter has caught up, every list answers 503).
		sha := syntheticCommit(b, s.URL, base)
		job := syntheticJobID(b, base)
		pages := []string{
			"/", "/branch?repo=proj&branch=b0", "/commit?repo=proj&branch=b0&commit=" + sha, "/job/" + job, "/queue", "/runners",
			"/modules?repo=proj", "/tests?repo=proj",
			"/dashboard", "/modules?repo=proj&failing=1", "/modules?repo=proj&q=m00", "/module?repo=proj&module=m007",
			"/branch?repo=proj&branch=b0&limit=50", "/branch/jobs?repo=proj&branch=b0&commit=" + sha,
			"/search?q=m007", "/search?q=" + url.QueryEscape("Dev 3"), "/search?q=" + url.QueryEscape("change 3 of"), "/search?q=" + sha[:12], "/badge/proj/b0.svg",
			"/badge/proj/b0.svg?job=m007/test&arch=arm64", "/api/v1/dashboard",
			"/api/v1/repos", "/api/v1/branches?repo=proj", "/api/v1/commits?repo=proj&branch=b0",
			"/api/v1/commits/" + sha + "?repo=proj&branch=b0", "/api/v1/jobs/" + job,
			"/api/v1/results", "/api/v1/results?repo=proj&branch=b3&module=m007", "/api/v1/results?status=failed&arch=arm64",
			"/api/v1/results?q=" + url.QueryEscape("dev3@"), "/api/v1/results?before=end&limit=1000",
			"/api/v1/queue", "/api/v1/runners", "/api/v1/modules?repo=proj", "/api/v1/tests/flaky", "/api/v1/tests/slowest",
		}
		var worstP95, worstP50 time.Duration
		var worstSize int
		var over []string
		for _, p := range pages {
			p50, p95, size := measurePage(b, base+p, 40)
			b.Logf("%-60s p50 %6.1f ms  p95 %6.1f ms  %7.1f KB", p, ms64(p50), ms64(p95), float64(size)/1024)
			worstP95, worstP50, worstSize = max(worstP95, p95), max(worstP50, p50), max(worstSize, size)
			// The page budget (issue 18): every page and answer at most
			// 500 KB, and served in at most 100 ms: the median and the 95th
			// percentile of 40 requests (a shared machine's load moves the
			// p95 first: the log says which one is over).
			if size > pageBudgetBytes || p50 > pageBudgetTime || p95 > pageBudgetTime {
				over = append(over, fmt.Sprintf("%s: %.1f KB, p50 %.1f ms, p95 %.1f ms", p, float64(size)/1024, ms64(p50), ms64(p95)))
			}
		}
		if len(over) > 0 {
			b.Errorf("over the page budget (%d KB, %v):\n%s", pageBudgetBytes>>10, pageBudgetTime, strings.Join(over, "\n"))
		}
		// jetci results --repo R --branch B --limit 100, the whole command.
		var rs []time.Duration
		for range 5 {
			t := time.Now()
			out, err := exec.Command(bin, "results", "--nats", s.URL, "--repo", "proj", "--branch", "b4", "--limit", "100", "--json").Output()
			if err != nil {
				b.Fatalf("jetci results: %v", err)
			}
			rs = append(rs, time.Since(t))
			if l := strings.Count(string(out), "\n"); l != 100 {
				b.Fatalf("jetci results printed %d lines, want 100", l)
			}
		}
		slices.Sort(rs)
		rssAfterPages, peak2 := rssOf(b, c.cmd.Process.Pid)
		// Restart: stop, start, until it serves current data.
		c.kill(syscall.SIGTERM)
		t1 := time.Now()
		c = startReporter()
		brokertest.CheckFor(b, 10*time.Minute, 5*time.Millisecond, func() error {
			resp, err := http.Get(base + "/api/v1/results?limit=1&before=end")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("%d", resp.StatusCode)
			}
			return nil
		})
		restart := time.Since(t1)
		c.kill(syscall.SIGTERM)
		// jetci reindex into a new database: it equals the live one.
		t2 := time.Now()
		if out, err := exec.Command(bin, "reindex", "--nats", s.URL, "--db", rebuilt, "--log-level", "warn").CombinedOutput(); err != nil {
			b.Fatalf("jetci reindex: %v\n%.2000s", err, out)
		}
		reindex := time.Since(t2)
		if live, again := digestOf(b, dsn), digestOf(b, rebuilt); live != again {
			b.Fatalf("the rebuild of %d jobs differs from the live read model", n)
		}
		b.Logf("jetci reindex of %d jobs: %v (%.0f jobs/s); the rebuild equals the live read model", n, reindex.Round(time.Millisecond), float64(n)/reindex.Seconds())
		b.ReportMetric(reindex.Seconds(), "reindex_s")
		b.Logf("%s, %d jobs: fold %v (%.0f jobs/s); RSS %d MB after the fold (peak %d), %d MB after the pages (peak %d); restart to ready %v; jetci results --limit 100 p50 %v",
			dsnKind(dsn), n, fold.Round(time.Millisecond), float64(n)/fold.Seconds(), rssAfterFold>>20, peak>>20, rssAfterPages>>20, peak2>>20,
			restart.Round(time.Millisecond), rs[len(rs)/2].Round(time.Millisecond))
		b.ReportMetric(float64(n)/fold.Seconds(), "fold_jobs/s")
		b.ReportMetric(foldCPU*1e6/float64(n), "fold_cpu_us/job")
		b.ReportMetric(float64(n)/baseRead.Seconds(), "base_read_jobs/s")
		b.ReportMetric(float64(max(peak, peak2)>>20), "rss_peak_MB")
		b.ReportMetric(float64(rssAfterPages>>20), "rss_MB")
		b.ReportMetric(restart.Seconds(), "restart_s")
		b.ReportMetric(ms64(worstP95), "page_p95_ms")
		b.ReportMetric(ms64(worstP50), "page_p50_ms")
		b.ReportMetric(float64(worstSize)/1024, "page_max_KB")
		b.ReportMetric(ms64(rs[len(rs)/2]), "results_ms")
	}
}

// digestOf is the digest of a read model's rows (readmodel.DB.Digest).
func digestOf(b *testing.B, dsn string) string {
	db, err := readmodel.Open(context.Background(), dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	d, err := db.Digest(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	return d
}

// The page budget: every page and API answer at 1,000,000 jobs.
const (
	pageBudgetBytes = 500 << 10
	pageBudgetTime  = 100 * time.Millisecond
)

func dsnKind(dsn string) string {
	if readmodel.IsPostgres(dsn) {
		return "postgres"
	}
	return "sqlite"
}

func ms64(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func lastSeqOf(b *testing.B, s *brokertest.Server) uint64 {
	st, err := s.JS.Stream(context.Background(), events.StreamResults)
	if err != nil {
		b.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	return info.State.LastSeq
}

// rssOf returns a process's resident and peak resident memory in bytes.
func rssOf(b *testing.B, pid int) (rss, peak int) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && (f[0] == "VmRSS:" || f[0] == "VmHWM:") {
			kb, _ := strconv.Atoi(f[1])
			if f[0] == "VmRSS:" {
				rss = kb << 10
			} else {
				peak = kb << 10
			}
		}
	}
	return rss, peak
}

// measurePage gets a page n times and returns the p50 and p95 time and its size.
func measurePage(b *testing.B, u string, n int) (p50, p95 time.Duration, size int) {
	var ds []time.Duration
	for range n {
		t := time.Now()
		resp, err := http.Get(u)
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		ds = append(ds, time.Since(t))
		if resp.StatusCode != 200 {
			b.Fatalf("%s: %d %.300s", u, resp.StatusCode, body)
		}
		size = len(body)
	}
	slices.Sort(ds)
	return ds[len(ds)/2], ds[len(ds)*95/100], size
}

func syntheticCommit(b *testing.B, _ string, base string) string {
	var page struct {
		Commits []reporter.Commit `json:"commits"`
	}
	getJSONb(b, base+"/api/v1/commits?repo=proj&branch=b0&limit=1", &page)
	if len(page.Commits) == 0 {
		b.Fatal("no commits")
	}
	return page.Commits[0].Commit
}

func syntheticJobID(b *testing.B, base string) string {
	var page struct {
		Results []reporter.Record `json:"results"`
	}
	getJSONb(b, base+"/api/v1/results?limit=1&before=end", &page)
	if len(page.Results) == 0 {
		b.Fatal("no results")
	}
	return page.Results[0].JobID
}

func getJSONb(b *testing.B, u string, v any) {
	resp, err := http.Get(u)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		b.Fatalf("%s: %d %.500s", u, resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		b.Fatalf("%s: %v", u, err)
	}
}
