package main

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter"
	"github.com/jetci/jetci/reporter/readmodel"
	"github.com/jetci/jetci/reporter/readmodel/pgtest"
)

// publishSynthetic publishes the events of jobs from..from+n-1 of the
// synthetic history (reporter.SyntheticJob: 10 modules × 3 branches × 2
// archs), and returns the stream's last sequence.
func publishSynthetic(t testing.TB, js jetstream.JetStream, from, n int) uint64 {
	t.Helper()
	svc, run, err := reporter.SyntheticPublishers(context.Background(), js)
	if err != nil {
		t.Fatal(err)
	}
	for i := from; i < from+n; i++ {
		for _, ev := range reporter.SyntheticJob(i, 10, 3, 2) {
			data, err := events.Encode(ev.Event)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ev.With(svc, run).PublishAsync(ev.Subject, data); err != nil {
				t.Fatal(err)
			}
		}
		if i%1000 == 0 {
			<-svc.PublishAsyncComplete()
			<-run.PublishAsyncComplete()
		}
	}
	done := make(chan struct{})
	go func() { <-svc.PublishAsyncComplete(); <-run.PublishAsyncComplete(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("publishing took too long")
	}
	s, err := js.Stream(context.Background(), events.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

func foldingReporter(t *testing.T, bin, url, db string) *child {
	t.Helper()
	c := &child{cmd: exec.Command(bin, "reporter", "--nats", url, "--http", "", "--db", db, "--log-format", "json"), logs: &syncBuffer{}}
	c.cmd.Stdout, c.cmd.Stderr = c.logs, c.logs
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.kill(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("reporter log:\n%.5000s", c.logs.String())
		}
	})
	return c
}

func readDB(t *testing.T, dsn string, f func(db *readmodel.DB) error) error {
	t.Helper()
	db, err := readmodel.Open(context.Background(), dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	return f(db)
}

// TestReporterKilledMidBatch kills the reporter process (kill -9) three
// times while it folds a large history into its read model; after the
// last restart the read model holds every job exactly once, and equals a
// rebuild from the stream.
func TestReporterKilledMidBatch(t *testing.T) {
	bin := jetciBinary(t)
	for _, backend := range []string{"sqlite", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			var newDSN func() string
			if backend == "postgres" {
				newDSN = pgtest.Start(t).NewDB
			} else {
				dir, n := t.TempDir(), 0
				newDSN = func() string { n++; return filepath.Join(dir, fmt.Sprint(n), reporter.DBFile) }
			}
			s := brokertest.Run(t)
			url := s.URL
			const jobs = 20000
			last := publishSynthetic(t, s.JS, 0, jobs)
			dsn := newDSN()
			var killedAt []uint64
			for round := 0; round < 3; round++ {
				c := foldingReporter(t, bin, url, dsn)
				// Kill it once it has applied some more, while it folds.
				var before uint64
				if len(killedAt) > 0 {
					before = killedAt[len(killedAt)-1]
				}
				brokertest.CheckFor(t, 60*time.Second, 2*time.Millisecond, func() error {
					return readDB(t, dsn, func(db *readmodel.DB) error {
						pos, err := db.Position(context.Background(), events.StreamResults)
						if err != nil || pos <= before {
							return fmt.Errorf("applied %d (%v)", pos, err)
						}
						return nil
					})
				})
				c.kill(syscall.SIGKILL)
				var pos uint64
				_ = readDB(t, dsn, func(db *readmodel.DB) (err error) {
					pos, err = db.Position(context.Background(), events.StreamResults)
					return err
				})
				killedAt = append(killedAt, pos)
			}
			t.Logf("killed at applied positions %v of %d", killedAt, last)
			if killedAt[len(killedAt)-1] >= last {
				t.Log("the fold finished before the last kill: it is faster than this test's polling")
			}
			foldingReporter(t, bin, url, dsn)
			// The fold must go on to the end; how fast depends on the machine
			// (-race on a loaded one: minutes), so what fails is a fold that
			// stops moving for a minute, not a slow one.
			waitApplied(t, dsn, last, time.Minute)
			var live string
			_ = readDB(t, dsn, func(db *readmodel.DB) error {
				n, err := db.Count(context.Background())
				if err != nil || n != jobs {
					t.Fatalf("%d records after the kills, want %d (%v)", n, jobs, err)
				}
				// Every job went through all three events exactly as
				// published: finished, attempt 1, one attempt in its history.
				rows, _, err := db.Records(context.Background(), readmodel.Filter{Status: []string{"queued", "running"}}, readmodel.Page{Limit: 10})
				if err != nil || len(rows) != 0 {
					t.Fatalf("%d jobs not finished (%v)", len(rows), err)
				}
				live, err = db.Dump(context.Background())
				return err
			})
			if strings.Count(live, `"attempts":[{"n":1,`) != jobs || strings.Contains(live, `"n":2,`) {
				t.Fatal("some record's attempts were doubled")
			}
			other := newDSN()
			var out, errb bytes.Buffer
			m := &Main{Stdout: &out, Stderr: &errb}
			if code := m.Run(context.Background(), []string{"reindex", "--nats", url, "--db", other}); code != 0 {
				t.Fatalf("jetci reindex: %d %s", code, errb.String())
			}
			_ = readDB(t, other, func(db *readmodel.DB) error {
				rebuilt, err := db.Dump(context.Background())
				if err != nil {
					return err
				}
				if rebuilt != live {
					t.Fatal("the read model after the kills differs from a rebuild")
				}
				return nil
			})
		})
	}
}

// TestResultsThroughTheService: jetci results asks the reporter's results
// service: --limit gives the newest, in order; --since and the filters work.
func TestResultsThroughTheService(t *testing.T) {
	s := brokertest.Run(t)
	url := s.URL
	last := publishSynthetic(t, s.JS, 0, 3000)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rep, err := reporter.New(ctx, reporter.Config{DB: filepath.Join(t.TempDir(), reporter.DBFile)}, s.JS, brokertest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- rep.Run(ctx) }()
	defer func() { cancel(); <-done }()
	// 9,000 events: seconds, but minutes under -race on a loaded machine.
	brokertest.CheckFor(t, 3*time.Minute, 20*time.Millisecond, func() error {
		pos, err := rep.View().DB().Position(ctx, events.StreamResults)
		if err != nil || pos < last {
			return fmt.Errorf("applied %d of %d", pos, last)
		}
		return nil
	})
	recs, err := resultsJSON(t, url, "--repo", "proj", "--branch", "b1", "--limit", "100")
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 100 {
		t.Fatalf("%d records, want 100", len(recs))
	}
	for i, r := range recs {
		if r.Branch != "b1" || i > 0 && r.FirstQueuedAt.Before(recs[i-1].FirstQueuedAt) {
			t.Fatalf("record %d: %s %v", i, r.Branch, r.FirstQueuedAt)
		}
	}
	// The newest: the last commit of b1 is among them.
	newest := reporter.SyntheticJob(2999-20, 10, 3, 2)[0].Event.(*events.JobQueued)
	if recs[len(recs)-1].FirstQueuedAt.Before(newest.QueuedAt) {
		t.Fatalf("the newest record is from %v, want at least %v", recs[len(recs)-1].FirstQueuedAt, newest.QueuedAt)
	}
	all, err := resultsJSON(t, url, "--limit", "0", "--status", "failed")
	if err != nil || len(all) != 3000/7+1 {
		t.Fatalf("%d failed records, want %d (%v)", len(all), 3000/7+1, err)
	}
	since := newest.QueuedAt.Format(time.RFC3339)
	recent, err := resultsJSON(t, url, "--since", since, "--limit", "0")
	if err != nil || len(recent) == 0 || len(recent) > 200 {
		t.Fatalf("%d records since %s (%v)", len(recent), since, err)
	}
	if _, err := resultsJSON(t, url, "--commit", "nothex"); err == nil || !strings.Contains(err.Error(), "not a sha") {
		t.Fatalf("a bad commit prefix: %v", err)
	}
}

// waitApplied polls the read model at dsn until it has applied the results
// stream up to last, and fails if its position stays put for stall.
func waitApplied(t *testing.T, dsn string, last uint64, stall time.Duration) {
	t.Helper()
	var seen uint64
	moved := time.Now()
	for {
		var pos uint64
		err := readDB(t, dsn, func(db *readmodel.DB) (err error) {
			pos, err = db.Position(context.Background(), events.StreamResults)
			return err
		})
		if err == nil && pos >= last {
			return
		}
		if pos > seen {
			seen, moved = pos, time.Now()
		}
		if time.Since(moved) > stall {
			t.Fatalf("the fold stopped at %d of %d for %v (%v)", seen, last, stall, err)
		}
		time.Sleep(20 * time.Millisecond) // a poll interval, not a wait for an outcome
	}
}
