package dispatcher

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

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
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			if len(ids) != len(jobs) {
				t.Fatal("two jobs share a job id")
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
