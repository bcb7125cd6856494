package dispatcher

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

func commit(pipeline string) *events.CommitDetected {
	ev := &events.CommitDetected{Repo: "proj", RepoURL: "/src/proj", Branch: "a>b", Commit: "c0ffee00", Class: events.ClassFirst,
		Author: events.Person{Name: "Dev", Email: "dev@example.com"}, Subject: "change"}
	if pipeline != "" {
		ev.PipelinePath, ev.Pipeline = ".jetci.yml", pipeline
	}
	return ev
}

func TestExpand(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Arch = []string{"amd64", "arm64"}
	d, err := New(cfg, nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		ev   *events.CommitDetected
		want []string // job/arch/pool/timeout
		err  string
	}{
		{"config matrix", commit("jobs:\n  a:\n    steps: x\n  b:\n    steps: y\n"),
			[]string{"a/amd64/default/30m0s", "a/arm64/default/30m0s", "b/amd64/default/30m0s", "b/arm64/default/30m0s"}, ""},
		{"file arch and pool", commit("arch: [riscv64]\npool: big\njobs:\n  a:\n    steps: x\n"), []string{"a/riscv64/big/30m0s"}, ""},
		{"job over file", commit("arch: [riscv64]\njobs:\n  a:\n    steps: x\n    arch: [s390x]\n    timeout: 5s\n"), []string{"a/s390x/default/5s"}, ""},
		{"detected", &events.CommitDetected{Repo: "p", Branch: "main", Commit: "c1", Class: events.ClassFirst, Probe: events.Probe{Root: []string{"go.mod"}}},
			[]string{"test/amd64/default/30m0s", "test/arm64/default/30m0s"}, ""},
		{"bad file", commit("jobs:\n  t:\n    stesp: x\n"), nil, ".jetci.yml:3: unknown field"},
		{"too big", &events.CommitDetected{Repo: "p", Branch: "main", Commit: "c1", Class: events.ClassFirst, PipelinePath: ".jetci.yml", PipelineErr: ".jetci.yml is 9 MB; the limit is 256 KiB"}, nil, "9 MB"},
		{"nothing", &events.CommitDetected{Repo: "p", Branch: "main", Commit: "c1", Class: events.ClassFirst}, nil, "no pipeline: add .jetci.yml"},
		{"too many jobs", commit("jobs:\n" + manyJobs(MaxJobs/2+1)), nil, fmt.Sprintf("%d jobs (each job times each arch); the limit is %d", MaxJobs+2, MaxJobs)},
		{"just enough jobs", commit("jobs:\n" + manyJobs(MaxJobs/2)), nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			jobs, fail := d.Expand(tt.ev)
			if tt.err != "" {
				if fail == nil || !strings.Contains(fail.Error, tt.err) || fail.Status != events.StatusError || fail.Job != "pipeline" || fail.Commit != tt.ev.Commit {
					t.Fatalf("got jobs %v, fail %+v; want an error result with %q", jobs, fail, tt.err)
				}
				if _, err := events.Encode(fail); err != nil {
					t.Fatal(err)
				}
				return
			}
			if fail != nil {
				t.Fatalf("unexpected error result %s", fail.Error)
			}
			var got []string
			ids := map[string]bool{}
			for _, j := range jobs {
				got = append(got, fmt.Sprintf("%s/%s/%s/%s", j.Job, j.Arch, j.Pool, time.Duration(j.TimeoutMs)*time.Millisecond))
				ids[j.JobID] = true
				if j.Branch != tt.ev.Branch || j.Class != events.ClassFirst || j.JobID != events.JobID(j.Repo, j.Branch, j.Commit, j.Job, j.Arch) {
					t.Errorf("job %+v: wrong identity", j)
				}
			}
			if tt.want == nil {
				if len(jobs) != MaxJobs {
					t.Fatalf("%d jobs, want %d", len(jobs), MaxJobs)
				}
				return
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			if len(ids) != len(jobs) {
				t.Fatal("two jobs share a job id")
			}
		})
	}
}

func manyJobs(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "  j%d:\n    steps: x\n", i)
	}
	return b.String()
}

func TestExpandCarriesTheCommit(t *testing.T) {
	d, err := New(DefaultConfig(), nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	d.now = func() time.Time { return now }
	ev := commit("jobs:\n  build:\n    steps: [make, make check]\n    arch: [arm64]\n    env: {A: 1}\n    artifacts: [out/*]\n    timeout: 90s\n" +
		"    secrets: [TOKEN]\n    limits: {memory: 1GiB, processes: 9}\n")
	ev.Class, ev.TriggerID = events.ClassUser, "trig1"
	jobs, fail := d.Expand(ev)
	if fail != nil || len(jobs) != 1 {
		t.Fatalf("got %v, %+v", jobs, fail)
	}
	want := &events.JobQueued{
		JobRef: events.JobRef{JobID: events.JobID("proj", "a>b", "c0ffee00", "build", "arm64"), Repo: "proj", Branch: "a>b",
			Commit: "c0ffee00", Job: "build", Arch: "arm64"},
		RepoURL: "/src/proj", Pool: "default", Class: events.ClassUser, Steps: []string{"make", "make check"},
		Env: map[string]string{"A": "1"}, TimeoutMs: 90_000, Artifacts: []string{"out/*"}, Author: ev.Author,
		Subject: "change", TriggerID: "trig1", QueuedAt: now,
		Secrets: []string{"TOKEN"}, Limits: &events.Limits{MemoryBytes: 1 << 30, Processes: 9},
	}
	if !reflect.DeepEqual(jobs[0], want) {
		t.Fatalf("got  %+v\nwant %+v", jobs[0], want)
	}
	if _, err := events.DecodeAs[events.JobQueued](mustEncode(t, jobs[0])); err != nil {
		t.Fatalf("the job does not decode: %v", err)
	}

	jobs, fail = d.Expand(commit("jobs:\n  build:\n    stesp: x\n"))
	wantFail := &events.JobFinished{
		JobRef: events.JobRef{JobID: events.JobID("proj", "a>b", "c0ffee00", "pipeline", "any"), Repo: "proj", Branch: "a>b",
			Commit: "c0ffee00", Job: "pipeline", Arch: "any"},
		Attempt: 1, Runner: "dispatcher", Status: events.StatusError, ExitCode: -1, FinishedAt: now, Author: ev.Author, Subject: "change",
		Class: events.ClassFirst,
		Error: ".jetci.yml:3: unknown field \"stesp\" in job \"build\" (want steps, arch, pool, timeout, env, artifacts, reports, retry, secrets, limits, image, network)\n    3 |     stesp: x",
	}
	if jobs != nil || !reflect.DeepEqual(fail, wantFail) {
		t.Fatalf("got %v,\n %+v\nwant %+v", jobs, fail, wantFail)
	}
	if _, err := events.DecodeAs[events.JobFinished](mustEncode(t, fail)); err != nil {
		t.Fatalf("the error result does not decode: %v", err)
	}
}

func mustEncode(t *testing.T, m any) []byte {
	t.Helper()
	data, err := events.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	tests := []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no arch", func(c *Config) { c.Arch = nil }, "Arch is empty"},
		{"bad arch", func(c *Config) { c.Arch = []string{"amd64", "X86"} }, `Arch: invalid arch "X86"`},
		{"arch twice", func(c *Config) { c.Arch = []string{"amd64", "amd64"} }, `Arch: "amd64" is listed twice`},
		{"bad pool", func(c *Config) { c.Pool = "" }, `Pool: invalid pool ""`},
		{"no timeout", func(c *Config) { c.DefaultTimeout = 0 }, "DefaultTimeout 0s"},
		{"long timeout", func(c *Config) { c.DefaultTimeout = 25 * time.Hour }, "DefaultTimeout 25h0m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tt.edit(&cfg)
			err := cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want %q", err, tt.want)
			}
			if _, err := New(cfg, nil, zerolog.Nop()); err == nil {
				t.Fatal("New accepted a bad config")
			}
		})
	}
}

// streamCount counts the messages on a stream matching subject.
func streamCount(t *testing.T, js jetstream.JetStream, stream, subject string) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background(), jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n
}

func runDispatcher(t *testing.T, js jetstream.JetStream, cfg Config) context.CancelFunc {
	t.Helper()
	d, err := New(cfg, js, brokertest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	t.Cleanup(func() {
		select {
		case <-ctx.Done():
		default:
			stop()
		}
	})
	return stop
}

func publishCommit(t *testing.T, js jetstream.JetStream, ev *events.CommitDetected) {
	t.Helper()
	data, err := events.Encode(ev)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(context.Background(), events.CommitSubject(ev.Repo, ev.Branch), data,
		jetstream.WithMsgID(events.CommitMsgID(ev.Repo, ev.Branch, ev.Commit, ev.TriggerID))); err != nil {
		t.Fatal(err)
	}
}

func TestDispatcherQueuesJobsOnTheirPartitions(t *testing.T) {
	s := brokertest.Run(t)
	cfg := DefaultConfig()
	cfg.Arch = []string{"amd64", "arm64"}
	stop := runDispatcher(t, s.JS, cfg)
	// A malformed message first: it is terminated and does not block the next one.
	if _, err := s.JS.Publish(context.Background(), "jetci.commit.x.y", []byte(`{"type":"jetci.commit.detected.v1"}`)); err != nil {
		t.Fatal(err)
	}
	publishCommit(t, s.JS, commit("jobs:\n  test:\n    steps: [\"true\"]\n"))
	bad := commit("jobs:\n  test:\n    stesp: [true]\n")
	bad.Commit = "bad00000"
	publishCommit(t, s.JS, bad)

	amd := events.JobSubject("default", "amd64", events.ClassFirst, "proj", "a>b")
	arm := events.JobSubject("default", "arm64", events.ClassFirst, "proj", "a>b")
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := streamCount(t, s.JS, events.StreamJobs, amd) + streamCount(t, s.JS, events.StreamJobs, arm); n != 2 {
			return fmt.Errorf("%d jobs queued, want 2", n)
		}
		if n := streamCount(t, s.JS, events.StreamResults, events.ResultSubject("proj", "a>b", events.KindQueued)); n != 2 {
			return fmt.Errorf("%d queued events, want 2", n)
		}
		if n := streamCount(t, s.JS, events.StreamResults, events.ResultSubject("proj", "a>b", events.KindFinished)); n != 1 {
			return fmt.Errorf("%d error results, want 1", n)
		}
		return nil
	})
	// Each queued event names the work-queue sequence of its job.
	jobs, err := s.JS.Stream(context.Background(), events.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	results, err := s.JS.OrderedConsumer(context.Background(), events.StreamResults,
		jetstream.OrderedConsumerConfig{FilterSubjects: []string{events.ResultSubject("proj", "a>b", events.KindQueued)}})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := results.FetchNoWait(10)
	if err != nil {
		t.Fatal(err)
	}
	arches := map[string]bool{}
	for m := range batch.Messages() {
		q, err := events.DecodeAs[events.JobQueued](m.Data())
		if err != nil {
			t.Fatal(err)
		}
		raw, err := jobs.GetMsg(context.Background(), q.QueueSeq)
		if err != nil {
			t.Fatalf("queued event %s/%s: job at sequence %d: %v", q.Job, q.Arch, q.QueueSeq, err)
		}
		j, err := events.DecodeAs[events.JobQueued](raw.Data)
		if err != nil || j.JobID != q.JobID || raw.Subject != events.JobSubject("default", q.Arch, events.ClassFirst, "proj", "a>b") {
			t.Fatalf("job at sequence %d on %s is %+v (%v), want %s", q.QueueSeq, raw.Subject, j, err, q.JobID)
		}
		arches[q.Arch] = true
	}
	if len(arches) != 2 {
		t.Fatalf("queued events for arches %v, want amd64 and arm64", arches)
	}

	// The error result quotes the line.
	m, err := s.JS.Stream(context.Background(), events.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := m.GetLastMsgForSubject(context.Background(), events.ResultSubject("proj", "a>b", events.KindFinished))
	if err != nil {
		t.Fatal(err)
	}
	fin, err := events.DecodeAs[events.JobFinished](raw.Data)
	if err != nil || !strings.Contains(fin.Error, ".jetci.yml:3") || fin.Commit != "bad00000" {
		t.Fatalf("error result %+v, %v", fin, err)
	}
	// The consumers of both partitions exist, though no runner ever ran.
	for _, a := range cfg.Arch {
		if _, err := s.JS.Consumer(context.Background(), events.StreamJobs, events.JobConsumerName("default", a, events.ClassFirst)); err != nil {
			t.Errorf("consumer for %s: %v", a, err)
		}
	}

	// A restarted dispatcher does not dispatch again, and the same commit
	// published again (a redelivery) is not queued twice.
	stop()
	runDispatcher(t, s.JS, cfg)
	ev := commit("jobs:\n  test:\n    steps: [\"true\"]\n")
	data, _ := events.Encode(ev)
	if _, err := s.JS.Publish(context.Background(), events.CommitSubject(ev.Repo, ev.Branch), data, jetstream.WithMsgID("another-id")); err != nil {
		t.Fatal(err)
	}
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		c, err := s.JS.Consumer(context.Background(), events.StreamCommits, events.ConsumerDispatcher)
		if err != nil {
			return err
		}
		info, err := c.Info(context.Background())
		if err != nil {
			return err
		}
		if info.NumPending != 0 || info.NumAckPending != 0 {
			return fmt.Errorf("dispatcher has %d pending, %d unacked", info.NumPending, info.NumAckPending)
		}
		return nil
	})
	if n := streamCount(t, s.JS, events.StreamJobs, amd); n != 1 {
		t.Fatalf("%d amd64 jobs after a restart and a duplicate commit, want 1", n)
	}
}

// syncBuffer is a log sink the test reads while the dispatcher writes.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) count(sub string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Count(s.b.String(), sub)
}

func TestDispatcherWarnsOncePerMinuteWhenNoRunnerServesAPartition(t *testing.T) {
	s := brokertest.Run(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// A live runner serves default/amd64: its lease is refreshed until the test ends.
	kv, err := s.JS.KeyValue(ctx, events.BucketRunners)
	if err != nil {
		t.Fatal(err)
	}
	lease, _ := json.Marshal(events.Lease{ID: "r1", Arch: "amd64", Pool: "default", Slots: 1})
	if _, err := kv.Put(ctx, events.LeaseKey("r1"), lease); err != nil {
		t.Fatal(err)
	}
	go func() {
		tick := time.NewTicker(events.LeaseRenew / 2)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				_, _ = kv.Put(ctx, events.LeaseKey("r1"), lease)
			}
		}
	}()

	var logs syncBuffer
	cfg := DefaultConfig()
	cfg.Arch = []string{"amd64", "arm64"}
	d, err := New(cfg, s.JS, zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	var clock atomic.Int64
	clock.Store(time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC).UnixNano())
	d.now = func() time.Time { return time.Unix(0, clock.Load()) }
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	arm := "no runner serves pool default arch arm64: its jobs wait in the queue until one joins"
	dispatch := func(sha string, jobs uint64) {
		t.Helper()
		ev := commit("jobs:\n  test:\n    steps: x\n")
		ev.Commit = sha
		publishCommit(t, s.JS, ev)
		brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
			if n := streamCount(t, s.JS, events.StreamJobs, events.SubjectJobs+".>"); n != jobs {
				return fmt.Errorf("%d jobs queued, want %d", n, jobs)
			}
			return nil
		})
	}
	dispatch("c1", 2)
	if n := logs.count(arm); n != 1 {
		t.Fatalf("%d warnings for arm64, want 1; logs:\n%s", n, logs.String())
	}
	if n := logs.count("arch amd64:"); n != 0 {
		t.Fatalf("a warning for amd64, which a runner serves; logs:\n%s", logs.String())
	}
	dispatch("c2", 4) // within the minute: no second warning
	if n := logs.count(arm); n != 1 {
		t.Fatalf("%d warnings for arm64 within a minute, want 1", n)
	}
	clock.Add(int64(2 * time.Minute))
	dispatch("c3", 6)
	if n := logs.count(arm); n != 2 {
		t.Fatalf("%d warnings for arm64 two minutes later, want 2", n)
	}
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := logs.count(`"jobs":2,"class":"first"`); n != 3 {
			return fmt.Errorf("%d commits logged as dispatched, want 3", n)
		}
		return nil
	})
}

func TestExpandOnlyOneJobForARecheck(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Arch = []string{"amd64", "arm64"}
	d, err := New(cfg, nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	pipeline := "jobs:\n  test:\n    steps: [x]\n  lint:\n    steps: [y]\n"
	for _, tt := range []struct {
		job, arch string
		want      []string
	}{
		{"", "", []string{"test/amd64", "test/arm64", "lint/amd64", "lint/arm64"}},
		{"lint", "", []string{"lint/amd64", "lint/arm64"}},
		{"test", "arm64", []string{"test/arm64"}},
		{"", "arm64", []string{"test/arm64", "lint/arm64"}},
	} {
		ev := commit(pipeline)
		ev.OnlyJob, ev.OnlyArch = tt.job, tt.arch
		jobs, fail := d.Expand(ev)
		if fail != nil {
			t.Fatalf("%s/%s: %s", tt.job, tt.arch, fail.Error)
		}
		var got []string
		for _, j := range jobs {
			got = append(got, j.Job+"/"+j.Arch)
		}
		if strings.Join(got, " ") != strings.Join(tt.want, " ") {
			t.Errorf("only %q/%q: got %v, want %v", tt.job, tt.arch, got, tt.want)
		}
	}
	ev := commit(pipeline)
	ev.OnlyJob = "gone"
	if jobs, fail := d.Expand(ev); jobs != nil || fail == nil || !strings.Contains(fail.Error, `no job "gone"`) {
		t.Fatalf("a re-check of a job the commit lacks: %v %+v", jobs, fail)
	}
}

// TestAgingMovesAWaitingJobUp: a periodic job nobody takes climbs one class per
// AgeAfter, and its record follows.
func TestAgingMovesAWaitingJobUp(t *testing.T) {
	s := brokertest.Run(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := events.DefaultSetup().Ensure(ctx, s.JS); err != nil {
		t.Fatal(err)
	}
	if _, err := events.EnsureJobConsumers(ctx, s.JS, "default", "amd64"); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Arch, cfg.AgeAfter = []string{"amd64"}, 300*time.Millisecond
	d, err := New(cfg, s.JS, brokertest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = d.Run(ctx) }()
	defer func() { cancel(); <-done }()

	var mu sync.Mutex
	var climbed, origins []events.Class // the classes and origins of the queued events aging publishes
	sub, err := s.NC.Subscribe(events.SubjectResults+".*.*."+string(events.KindQueued), func(m *nats.Msg) {
		if q, err := events.DecodeAs[events.JobQueued](m.Data); err == nil {
			mu.Lock()
			climbed, origins = append(climbed, q.Class), append(origins, q.Origin)
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	job := &events.JobQueued{JobRef: events.JobRef{Repo: "proj", Branch: "main", Commit: "c1", Job: "nightly", Arch: "amd64"},
		Pool: "default", Class: events.ClassPeriodic, Steps: []string{"true"}}
	job.JobID = events.JobID(job.Repo, job.Branch, job.Commit, job.Job, job.Arch)
	if _, err := s.JS.Publish(ctx, events.JobSubject("default", "amd64", events.ClassPeriodic, "proj", "main"), mustEncode(t, job)); err != nil {
		t.Fatal(err)
	}
	pending := func(c events.Class) uint64 {
		cons, err := s.JS.Consumer(ctx, events.StreamJobs, events.JobConsumerName("default", "amd64", c))
		if err != nil {
			return 0
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return 0
		}
		return info.NumPending
	}
	for _, c := range []events.Class{events.ClassSecond, events.ClassFirst, events.ClassUser} {
		brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
			if pending(c) != 1 {
				return fmt.Errorf("class %s: %d waiting", c, pending(c))
			}
			return nil
		})
	}
	for _, c := range []events.Class{events.ClassPeriodic, events.ClassSecond, events.ClassFirst, events.ClassBisect} {
		if n := pending(c); n != 0 {
			t.Errorf("class %s still holds %d", c, n)
		}
	}
	// The ladder skips bisect: a commit's own check never becomes a culprit
	// search's run.
	brokertest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if !slices.Equal(climbed, []events.Class{events.ClassSecond, events.ClassFirst, events.ClassUser}) {
			return fmt.Errorf("aged through %v, want second, first, user", climbed)
		}
		if !slices.Equal(origins, []events.Class{events.ClassPeriodic, events.ClassPeriodic, events.ClassPeriodic}) {
			return fmt.Errorf("origins %v: an aged job is still a periodic one", origins)
		}
		return nil
	})
}

// TestPeriodicFullCheckFiresOnce: two dispatchers on one schedule queue each
// branch head once per tick of the schedule, at the periodic class; with
// skip-passed, a head that passed since the last check is left out.
func TestPeriodicFullCheckFiresOnce(t *testing.T) {
	s := brokertest.Run(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := events.DefaultSetup().Ensure(ctx, s.JS); err != nil {
		t.Fatal(err)
	}
	heads, _ := s.JS.KeyValue(ctx, events.BucketHeads)
	for _, b := range []string{"main", "release/1"} {
		v, _ := json.Marshal(map[string]string{"repo": "proj", "branch": b, "commit": "c-" + b})
		if _, err := heads.Put(ctx, events.HeadKey("proj", b), v); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	asked := map[string]int{}
	sub, err := s.NC.Subscribe(events.TriggerSubject("proj"), func(m *nats.Msg) {
		req, _ := events.DecodeAs[events.TriggerRequest](m.Data)
		mu.Lock()
		if req.Class == events.ClassPeriodic && req.Commit == "c-"+req.Branch {
			asked[req.Branch]++
		}
		mu.Unlock()
		data, _ := events.Encode(&events.TriggerReply{Commit: req.Commit, TriggerID: "t"})
		_ = m.Respond(data)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	cfg := DefaultConfig()
	cfg.Periodic, cfg.PeriodicTick = "@every 1s", 20*time.Millisecond
	var wg sync.WaitGroup
	for i := 0; i < 2; i++ {
		d, err := New(cfg, s.JS, brokertest.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = d.Run(ctx) }()
	}
	// Poll until three checks went out, then see that none went out twice.
	brokertest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if asked["main"] < 3 {
			return fmt.Errorf("asked %v", asked)
		}
		return nil
	})
	mu.Lock()
	got := map[string]int{"main": asked["main"], "release/1": asked["release/1"]}
	mu.Unlock()
	cancel()
	wg.Wait()
	if got["main"] > 4 || got["release/1"] < got["main"]-1 || got["release/1"] > got["main"]+1 {
		t.Fatalf("checks per branch %v: a schedule tick fired twice, or a branch was left out", got)
	}
}

func TestPassedSince(t *testing.T) {
	s := brokertest.Run(t)
	ctx := context.Background()
	if err := events.DefaultSetup().Ensure(ctx, s.JS); err != nil {
		t.Fatal(err)
	}
	kv, _ := s.JS.KeyValue(ctx, events.BucketResults)
	now := time.Now()
	put := func(commit, job string, st events.Status, at time.Time) {
		id := events.JobID("proj", "main", commit, job, "amd64")
		v, _ := json.Marshal(map[string]any{"job_id": id, "commit": commit, "status": st, "finished_at": at})
		if _, err := kv.Put(ctx, events.RecordKey("proj", "main", id), v); err != nil {
			t.Fatal(err)
		}
	}
	put("good", "a", events.StatusPassed, now)
	put("good", "b", events.StatusPassed, now)
	put("bad", "a", events.StatusPassed, now)
	put("bad", "b", events.StatusFailed, now)
	put("old", "a", events.StatusPassed, now.Add(-time.Hour))
	d, _ := New(DefaultConfig(), s.JS, brokertest.Logger(t))
	since := now.Add(-time.Minute)
	for commit, want := range map[string]bool{"good": true, "bad": false, "old": false, "unknown": false} {
		if got := d.passedSince(ctx, "proj", "main", commit, since); got != want {
			t.Errorf("passedSince(%s) = %v, want %v", commit, got, want)
		}
	}

	// With modules, the head's jobs passing is not enough: every module
	// job's latest check on the branch must have passed since.
	mod := func(branch, commit, module string, st events.Status, at time.Time) {
		id := events.JobID("proj", branch, commit, module+"/test", "amd64")
		v, _ := json.Marshal(map[string]any{"job_id": id, "commit": commit, "job": "test", "arch": "amd64", "module": module, "status": st, "finished_at": at})
		if _, err := kv.Put(ctx, events.RecordKey("proj", branch, id), v); err != nil {
			t.Fatal(err)
		}
	}
	// m1: x failed at c1, c2 checked only y.
	mod("m1", "c1", "x", events.StatusFailed, now)
	mod("m1", "c1", "y", events.StatusPassed, now)
	mod("m1", "c2", "y", events.StatusPassed, now.Add(time.Second))
	// m2: x failed at c1 and passed at c2.
	mod("m2", "c1", "x", events.StatusFailed, now)
	mod("m2", "c1", "y", events.StatusPassed, now)
	mod("m2", "c2", "x", events.StatusPassed, now.Add(time.Second))
	// m3: x failed at c3 (the head); a culprit search then ran x on the old c1,
	// which passed later than the head's failure: x is still broken.
	mod("m3", "c3", "x", events.StatusFailed, now)
	mod("m3", "c3", "y", events.StatusPassed, now)
	bisectRun := func(branch, commit, module string, st events.Status, at time.Time) {
		id := events.JobID("proj", branch, commit, module+"/test", "amd64")
		v, _ := json.Marshal(map[string]any{"job_id": id, "commit": commit, "job": "test", "arch": "amd64", "module": module,
			"status": st, "finished_at": at, "class": events.ClassBisect})
		if _, err := kv.Put(ctx, events.RecordKey("proj", branch, id), v); err != nil {
			t.Fatal(err)
		}
	}
	bisectRun("m3", "c1", "x", events.StatusPassed, now.Add(2*time.Second))
	mod("m3", "c4", "y", events.StatusPassed, now.Add(3*time.Second))
	for branch, want := range map[string]bool{"m1": false, "m2": true, "m3": false} {
		head := "c2"
		if branch == "m3" {
			head = "c4"
		}
		if got := d.passedSince(ctx, "proj", branch, head, since); got != want {
			t.Errorf("branch %s: passedSince(%s) = %v, want %v", branch, head, got, want)
		}
	}
}

// TestDispatcherQueuesTheLargestCommit: a commit of MaxJobs jobs (more than
// the client lets be published asynchronously at once) is queued whole, each
// job with its queued event, in file order.
func TestDispatcherQueuesTheLargestCommit(t *testing.T) {
	s := brokertest.Run(t)
	cfg := DefaultConfig()
	cfg.Arch = []string{"amd64", "arm64"}
	runDispatcher(t, s.JS, cfg)
	publishCommit(t, s.JS, commit("jobs:\n"+manyJobs(MaxJobs/2)))
	brokertest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		jobs := streamCount(t, s.JS, events.StreamJobs, events.SubjectJobs+".>")
		queued := streamCount(t, s.JS, events.StreamResults, events.SubjectResults+".*.*."+string(events.KindQueued))
		if jobs != MaxJobs || queued != MaxJobs {
			return fmt.Errorf("%d jobs and %d queued events of %d", jobs, queued, MaxJobs)
		}
		return nil
	})
	st, err := s.JS.Stream(context.Background(), events.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	first, err := st.GetMsg(context.Background(), info.State.FirstSeq)
	if err != nil {
		t.Fatal(err)
	}
	if j, err := events.DecodeAs[events.JobQueued](first.Data); err != nil || j.Job != "j0" || j.Arch != "amd64" {
		t.Errorf("first job in the queue %+v (%v), want j0 on amd64", j, err)
	}
}

// TestSupersedeGoesByCommitOrder: with --coalesce, a newer commit cancels an
// older commit's waiting job, and an older commit that a dispatcher queues
// late (dispatchers take commits in parallel) cancels nothing of a newer one:
// it finds the newer one's job already waiting and supersedes its own.
func TestSupersedeGoesByCommitOrder(t *testing.T) {
	s := brokertest.Run(t)
	ctx := context.Background()
	if err := events.DefaultSetup().Ensure(ctx, s.JS); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Arch = []string{"amd64"}
	cfg.Coalesce = []GateRule{{Repo: "proj"}}
	d, err := New(cfg, s.JS, brokertest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ev := func(sha string) *events.CommitDetected {
		e := commit("jobs:\n  test:\n    steps: [\"true\"]\n")
		e.Commit = sha
		return e
	}
	waiting := func() map[string]bool {
		st, _ := s.JS.Stream(ctx, events.StreamJobs)
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
			if m, err := st.GetMsg(ctx, seq); err == nil {
				j, _ := events.DecodeAs[events.JobQueued](m.Data)
				out[j.Commit] = true
			}
		}
		return out
	}
	log := zerolog.Nop()
	// The newest commit (sequence 30) is queued first, then an older one (20):
	// the older one must not cancel the newer one's job, and its own is
	// superseded by it.
	if err := d.dispatch(ctx, ev("c30"), 30, "", log); err != nil {
		t.Fatal(err)
	}
	if err := d.dispatch(ctx, ev("c20"), 20, "", log); err != nil {
		t.Fatal(err)
	}
	if w := waiting(); len(w) != 1 || !w["c30"] {
		t.Fatalf("waiting %v: want only c30 (an older commit queued late cancelled the newer one's job, or kept its own)", w)
	}
	// A newer commit (40) still supersedes both.
	if err := d.dispatch(ctx, ev("c40"), 40, "", log); err != nil {
		t.Fatal(err)
	}
	if w := waiting(); len(w) != 1 || !w["c40"] {
		t.Fatalf("waiting %v, want only c40", w)
	}
}
