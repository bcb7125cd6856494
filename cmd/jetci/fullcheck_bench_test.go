package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
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
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/internal/procstat"
	"github.com/jetci/jetci/reporter"
)

// BenchmarkFullCheck15k is the build-check system's full check end to end, in
// real processes: a `jetci server`, a `jetci dispatcher`, a `jetci reporter` and
// three `jetci runner`s with 8 slots in all (amd64 3, arm64 3, riscv64 2; a
// runner refuses an arch this machine cannot run, even emulated, so not ia64). The
// 5,000 module × branch heads are 5,000 commit events, each a no-op job
// (`true`) on 3 archs: 15,000 jobs. All heads name one small real commit of one
// repository, so runners never fetch: what is measured is jetci's own path per
// job (queue, deliver, lease, checkout of an unchanged workspace, `sh`, log,
// result, ack, record). The steps run on the host (--exec host), as the
// baseline's do: a sandboxed step costs ~8 ms more (BenchmarkStepStart), which
// is the sandbox's cost, not the path's. The clock starts when the dispatcher
// starts.
//
// It reports when the last job was queued, when the last result was stored
// (drained) and when the reporter's last record was final, the peak resident
// set (VmHWM) of every process, and two baselines measured in the same run: 15,000 bare
// awaited publishes (the floor of storing jobs one by one) and 15,000 `sh -c
// true` run 8 at a time (the floor of running the no-op steps on this machine).
// It also checks that every job has exactly one result and that all passed.
//
//	go test -run '^$' -bench FullCheck15k -benchtime 1x ./cmd/jetci
func BenchmarkFullCheck15k(b *testing.B) {
	for range b.N {
		fullCheck(b, 5000, []runnerSpec{{"amd64", 3}, {"arm64", 3}, {"riscv64", 2}}, true)
	}
}

// BenchmarkGrowth is the full check's path with 1, 2, 4 and 8 runner
// processes of one slot each (amd64), 1,000 heads × 1 arch each
// (JETCI_BENCH_HEADS to change it), for BENCHMARKS' growth section: jobs per
// second, server CPU, messages, JetStream API requests and KV writes per job,
// and the consumers the server holds. No baselines here (the full check has
// them); the runs are sub-benchmarks, one after another.
//
//	go test -run '^$' -bench Growth -benchtime 1x ./cmd/jetci
func BenchmarkGrowth(b *testing.B) {
	heads := 1000
	if v, err := strconv.Atoi(os.Getenv("JETCI_BENCH_HEADS")); err == nil && v > 0 {
		heads = v
	}
	for _, n := range []int{1, 2, 4, 8} {
		b.Run(fmt.Sprintf("runners=%d", n), func(b *testing.B) {
			var rs []runnerSpec
			for i := 0; i < n; i++ {
				rs = append(rs, runnerSpec{"amd64", 1})
			}
			for range b.N {
				fullCheck(b, heads, rs, false)
			}
		})
	}
}

// runnerSpec is one runner process of the full check: its arch and slots.
type runnerSpec struct {
	arch  string
	slots int
}

// fullCheck runs one full check of heads commit events, each a no-op job on
// every arch the runners serve, through real processes, and reports its
// metrics; with baselines, also the bare publishes and steps of that many jobs.
func fullCheck(b *testing.B, heads int, runners []runnerSpec, baselines bool) {
	var archList []string
	slots := 0
	for _, r := range runners {
		slots += r.slots
		if !slices.Contains(archList, r.arch) {
			archList = append(archList, r.arch)
		}
	}
	jobs := heads * len(archList)
	bin := jetciBinary(b)
	{
		repo := newGitRepo(b)
		commit := repo.Commit("no-op", map[string]string{"a.txt": "a\n"})
		dir := b.TempDir()
		addr := reserveAddr(b)
		url := "nats://" + addr
		procs := map[string]*child{}
		start := func(name string, args ...string) {
			c := &child{cmd: exec.Command(bin, args...), logs: &syncBuffer{}}
			c.cmd.Stdout, c.cmd.Stderr = c.logs, c.logs
			if err := c.cmd.Start(); err != nil {
				b.Fatal(err)
			}
			procs[name] = c
			b.Cleanup(func() {
				c.kill(syscall.SIGKILL)
				if b.Failed() {
					b.Logf("%s log (tail):\n%s", name, tail(c.logs.String(), 3000))
				}
			})
		}
		monitor := reserveAddr(b)
		start("server", "server", "--listen", addr, "--store", dir+"/nats", "--monitor", monitor, "--log-format", "json")
		var nc interface{ Close() }
		var js jetstream.JetStream
		brokertest.CheckFor(b, 30*time.Second, 20*time.Millisecond, func() error {
			c, j, err := events.Connect(url, events.ConnectOptions{Name: "bench", Log: zerolog.Nop()})
			if err != nil {
				return err
			}
			nc, js = c, j
			return nil
		})
		defer nc.Close()
		ctx := context.Background()
		if err := events.DefaultSetup().Ensure(ctx, js); err != nil {
			b.Fatal(err)
		}
		pipeline := "jobs:\n  check:\n    steps: [\"true\"]\n    arch: [" + strings.Join(archList, ", ") + "]\n"
		for i := 0; i < heads; i++ {
			ev := &events.CommitDetected{Repo: "proj", Branch: fmt.Sprintf("mod%03d/b%d", i%500, i/500), RepoURL: repo.Dir,
				Commit: commit, Class: events.ClassPeriodic, PipelinePath: ".jetci.yml", Pipeline: pipeline, DetectedAt: time.Now()}
			data, _ := events.Encode(ev)
			if _, err := js.PublishAsync(events.CommitSubject(ev.Repo, ev.Branch), data); err != nil {
				b.Fatal(err)
			}
		}
		<-js.PublishAsyncComplete()

		// Baseline 1: 15,000 awaited publishes of a job-sized message.
		payload := []byte(strings.Repeat("x", 600))
		t0 := time.Now()
		for i := 0; baselines && i < jobs; i++ {
			if _, err := js.Publish(ctx, "jetci.job.bench.amd64.user.x.y", payload); err != nil {
				b.Fatal(err)
			}
		}
		basePublish := time.Since(t0)
		jst, err := js.Stream(ctx, events.StreamJobs)
		if err != nil {
			b.Fatal(err)
		}
		if err := jst.Purge(ctx); err != nil {
			b.Fatal(err)
		}
		info, _ := jst.Info(ctx)
		jobsBefore := info.State.LastSeq

		// Baseline 2: the no-op steps alone, 8 at a time.
		var baseSteps time.Duration
		if baselines {
			baseSteps = spawnFloor(b, jobs, slots)
		}

		for i, r := range runners {
			id := "r-" + r.arch // one runner per arch: the names BENCHMARKS and benchtable use
			if len(runners) > len(archList) {
				id = fmt.Sprintf("r-%s-%d", r.arch, i)
			}
			start("runner-"+r.arch+strings.TrimPrefix(id, "r-"+r.arch), "runner", "--nats", url, "--arch", r.arch, "--slots", strconv.Itoa(r.slots), "--id", id,
				"--work", filepath.Join(dir, id), "--exec", "host", "--log-level", "warn", "--log-format", "json")
		}
		start("reporter", "reporter", "--nats", url, "--http", "", "--log-level", "warn", "--log-format", "json")
		kv, err := js.KeyValue(ctx, events.BucketResults)
		if err != nil {
			b.Fatal(err)
		}
		records := watchFinal(b, kv, jobs)
		// The results stored are counted by a consumer that is never pulled
		// (its pending count): a stream info with a subject filter walks
		// every subject of the stream (5,000 branches here), and polling
		// it every 50 ms took 16 % of the server's CPU in the drain.
		finished, err := js.CreateOrUpdateConsumer(ctx, events.StreamResults, jetstream.ConsumerConfig{
			Name: "bench-finished", FilterSubject: events.SubjectResults + ".*.*." + string(events.KindFinished),
			AckPolicy: jetstream.AckNonePolicy, DeliverPolicy: jetstream.DeliverAllPolicy, InactiveThreshold: time.Hour})
		if err != nil {
			b.Fatal(err)
		}
		api0, kv0 := serverAPI(b, monitor)
		msgs0 := serverMsgs(b, monitor)
		cpu0 := procstat.CPUSeconds(procs["server"].cmd.Process.Pid)
		began := time.Now()
		start("dispatcher", "dispatcher", "--nats", url, "--log-level", "warn", "--log-format", "json")
		var queuedAt, drainedAt time.Time
		brokertest.CheckFor(b, 15*time.Minute, 50*time.Millisecond, func() error {
			if queuedAt.IsZero() {
				info, err := jst.Info(ctx)
				if err != nil {
					return err
				}
				if info.State.LastSeq-jobsBefore >= uint64(jobs) {
					queuedAt = time.Now()
				}
			}
			ci, err := finished.Info(ctx)
			if err != nil {
				return err
			}
			if ci.NumPending < uint64(jobs) {
				return fmt.Errorf("%d of %d results", ci.NumPending, jobs)
			}
			drainedAt = time.Now()
			return nil
		})
		if queuedAt.IsZero() {
			queuedAt = drainedAt
		}
		var recordsAt time.Time
		select {
		case recordsAt = <-records:
		case <-time.After(10 * time.Minute):
			b.Fatal("the reporter did not fold every result in 10 minutes")
		}
		msgs := serverMsgs(b, monitor) - msgs0
		api1, kv1 := serverAPI(b, monitor)
		consumers := serverConsumers(b, monitor)
		serverCPU := procstat.CPUSeconds(procs["server"].cmd.Process.Pid) - cpu0
		passed, ids := finishedTally(b, js)
		if ids != jobs || passed != jobs {
			b.Fatalf("%d distinct jobs with results (%d passed), want %d each", ids, passed, jobs)
		}
		b.ReportMetric(float64(jobs)/drainedAt.Sub(began).Seconds(), "jobs/s")
		b.ReportMetric(float64(api1-api0)/float64(jobs), "js_api/job")
		b.ReportMetric(float64(kv1-kv0)/float64(jobs), "kv_writes/job")
		b.ReportMetric(float64(consumers), "consumers")
		b.ReportMetric(queuedAt.Sub(began).Seconds(), "enqueue_s")
		b.ReportMetric(drainedAt.Sub(began).Seconds(), "drain_s")
		b.ReportMetric(recordsAt.Sub(began).Seconds(), "records_s")
		if baselines {
			b.ReportMetric(basePublish.Seconds(), "base_publish_s")
			b.ReportMetric(baseSteps.Seconds(), "base_steps_s")
		}
		// The server's messages in and out, and its CPU, per job from the
		// dispatcher's start until every record is final (the tally
		// after it is not counted).
		b.ReportMetric(float64(msgs)/float64(jobs), "server_msgs/job")
		b.ReportMetric(serverCPU*1e6/float64(jobs), "server_cpu_us/job")
		for name, c := range procs {
			b.ReportMetric(float64(procstat.MemoryKB(c.cmd.Process.Pid, "VmHWM"))/1024, name+"_MB")
			b.ReportMetric(procstat.CPUSeconds(c.cmd.Process.Pid), name+"_cpu_s")
		}
	}
}

// serverAPI is the JetStream API requests a server answered so far and the
// messages ever stored in its KV buckets' streams (their last sequences:
// every put and delete), from its monitoring endpoint's /jsz.
func serverAPI(tb testing.TB, monitor string) (api, kvWrites int64) {
	tb.Helper()
	var v struct {
		API struct {
			Total int64 `json:"total"`
		} `json:"api"`
		Accounts []struct {
			Streams []struct {
				Name  string `json:"name"`
				State struct {
					LastSeq int64 `json:"last_seq"`
				} `json:"state"`
			} `json:"stream_detail"`
		} `json:"account_details"`
	}
	monitorJSON(tb, "http://"+monitor+"/jsz?streams=true", &v)
	for _, a := range v.Accounts {
		for _, s := range a.Streams {
			if strings.HasPrefix(s.Name, "KV_") {
				kvWrites += s.State.LastSeq
			}
		}
	}
	return v.API.Total, kvWrites
}

// serverConsumers is the consumers a server holds (/jsz).
func serverConsumers(tb testing.TB, monitor string) int {
	tb.Helper()
	var v struct {
		Consumers int `json:"consumers"`
	}
	monitorJSON(tb, "http://"+monitor+"/jsz", &v)
	return v.Consumers
}

func monitorJSON(tb testing.TB, url string, v any) {
	tb.Helper()
	resp, err := http.Get(url)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		tb.Fatal(err)
	}
}

// serverMsgs is the messages a NATS server received and sent so far, from
// its monitoring endpoint's /varz.
func serverMsgs(tb testing.TB, monitor string) int64 {
	tb.Helper()
	resp, err := http.Get("http://" + monitor + "/varz")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	var v struct {
		InMsgs  int64 `json:"in_msgs"`
		OutMsgs int64 `json:"out_msgs"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		tb.Fatal(err)
	}
	return v.InMsgs + v.OutMsgs
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// watchFinal watches the results bucket and sends the time when n distinct
// records are final.
func watchFinal(tb testing.TB, kv jetstream.KeyValue, n int) <-chan time.Time {
	tb.Helper()
	w, err := kv.WatchAll(context.Background(), jetstream.UpdatesOnly())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = w.Stop() })
	at := make(chan time.Time, 1)
	go func() {
		final := map[string]bool{}
		for e := range w.Updates() {
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var r reporter.Record
			if json.Unmarshal(e.Value(), &r) == nil && r.Status.Final() && !final[e.Key()] {
				final[e.Key()] = true
				if len(final) == n {
					at <- time.Now()
					return
				}
			}
		}
	}()
	return at
}

// finishedTally reads every finished event and returns how many passed and how
// many distinct jobs they name.
func finishedTally(tb testing.TB, js jetstream.JetStream) (passed, jobs int) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := js.OrderedConsumer(ctx, events.StreamResults, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.SubjectResults + ".*.*." + string(events.KindFinished)}})
	if err != nil {
		tb.Fatal(err)
	}
	seen := map[string]bool{}
	for {
		batch, err := c.FetchNoWait(1000)
		if err != nil {
			tb.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			f, err := events.DecodeAs[events.JobFinished](m.Data())
			if err != nil {
				tb.Fatal(err)
			}
			if seen[f.JobID] {
				tb.Fatalf("job %s has two results", f.JobID)
			}
			seen[f.JobID] = true
			if f.Status == events.StatusPassed {
				passed++
			}
		}
		if n == 0 {
			return passed, len(seen)
		}
	}
}

// spawnFloor runs `sh -c true` n times, par at a time, and returns the time.
func spawnFloor(tb testing.TB, n, par int) time.Duration {
	tb.Helper()
	t0 := time.Now()
	work := make(chan struct{})
	done := make(chan error)
	for range par {
		go func() {
			for range work {
				done <- exec.Command("sh", "-c", "true").Run()
			}
		}()
	}
	go func() {
		for range n {
			work <- struct{}{}
		}
		close(work)
	}()
	for range n {
		if err := <-done; err != nil {
			tb.Fatal(err)
		}
	}
	return time.Since(t0)
}
