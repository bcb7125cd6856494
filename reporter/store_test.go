package reporter

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

func TestStoreConcurrentAppliesKeepTheNewest(t *testing.T) {
	s := brokertest.Run(t)
	ctx := context.Background()
	st, err := OpenStore(ctx, s.JS)
	if err != nil {
		t.Fatal(err)
	}
	// Two "reporters" fold the same job's events in different orders at once.
	evs := []any{queued(5), started(5, 1, "a"), finished(5, 1, "a", events.StatusFailed), started(5, 2, "b"), finished(5, 2, "b", events.StatusPassed)}
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := range evs {
				ev := evs[(i+w)%len(evs)]
				if _, _, err := st.Apply(ctx, ev); err != nil {
					t.Errorf("apply: %v", err)
				}
			}
		}(w)
	}
	wg.Wait()
	recs, err := st.List(ctx, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 {
		t.Fatalf("%d records, want 1", len(recs))
	}
	if r := recs[0]; r.Status != events.StatusPassed || r.Attempt != 2 || r.Runner != "b" || r.Pool != "default" {
		t.Fatalf("record %+v, want passed attempt 2 on b", r)
	}
}

func TestStoreListFilters(t *testing.T) {
	s := brokertest.Run(t)
	ctx := context.Background()
	st, err := OpenStore(ctx, s.JS)
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range []string{"main", "a>b", "fix/ünï"} {
		for _, commit := range []string{"aaaa1111", "bbbb2222"} {
			r := events.JobRef{Repo: "r", Branch: b, Commit: commit, Job: "test", Arch: "amd64"}
			r.JobID = events.JobID(r.Repo, r.Branch, r.Commit, r.Job, r.Arch)
			st.Apply(ctx, &events.JobFinished{JobRef: r, QueueSeq: uint64(i + 1), Attempt: 1, Status: events.StatusPassed, FinishedAt: time.Now()})
		}
	}
	r2 := events.JobRef{Repo: "other", Branch: "main", Commit: "cccc", Job: "test", Arch: "amd64", JobID: events.JobID("other", "main", "cccc", "test", "amd64")}
	st.Apply(ctx, &events.JobQueued{JobRef: r2, Pool: "default", Class: events.ClassFirst, QueueSeq: 9})
	for _, tt := range []struct {
		f    Filter
		want int
	}{
		{Filter{}, 6}, {Filter{All: true}, 7}, {Filter{Repo: "r"}, 6}, {Filter{Repo: "r", Branch: "a>b"}, 2},
		{Filter{Branch: "fix/ünï"}, 2}, {Filter{Commit: "bbbb"}, 3}, {Filter{Repo: "other"}, 0}, {Filter{Repo: "other", All: true}, 1},
	} {
		recs, err := st.List(ctx, tt.f)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != tt.want {
			t.Errorf("List(%+v) = %d records, want %d", tt.f, len(recs), tt.want)
		}
	}
}

func TestReporterFoldsResultsAndServesThem(t *testing.T) {
	s := brokertest.Run(t)
	ctx, cancel := context.WithCancel(context.Background())
	rep, err := New(ctx, Config{HTTP: "127.0.0.1:0"}, s.JS, brokertest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- rep.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	sign := newTestSigner(s.JS)
	publish := func(ev any, kind string) {
		t.Helper()
		sign.publish(ctx, t, events.ResultSubject("r", "main", kind), ev)
	}
	// A malformed message is terminated and does not block the ones after it.
	if _, err := s.JS.Publish(ctx, events.ResultSubject("r", "main", events.KindFinished), []byte("not json")); err != nil {
		t.Fatal(err)
	}
	publish(queued(5), events.KindQueued)
	publish(started(5, 1, "a"), events.KindStarted)
	publish(finished(5, 1, "a", events.StatusFailed), events.KindFinished)
	// A redelivered result (the same event twice) must not add a record.
	publish(finished(5, 1, "a", events.StatusFailed), events.KindFinished)

	url := fmt.Sprintf("http://%s/api/v1/results?repo=r", rep.Addr())
	brokertest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		resp, err := http.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var body struct{ Results []Record }
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			return err
		}
		if len(body.Results) != 1 || body.Results[0].Status != events.StatusFailed {
			return fmt.Errorf("results %+v, want one failed", body.Results)
		}
		return nil
	})
	for path, code := range map[string]int{
		"/": 200, "/healthz": 200, "/nope": 404,
		"/api/v1/logs/zz/1": 400, "/api/v1/logs/" + ref.JobID + "/1": 404,
	} {
		rr := httptest.NewRecorder()
		rep.Handler().ServeHTTP(rr, httptest.NewRequest("GET", path, nil))
		if rr.Code != code {
			t.Errorf("GET %s = %d, want %d", path, rr.Code, code)
		}
	}
}

func TestQueuedJobsSayWhyTheyWait(t *testing.T) {
	s := brokertest.Run(t)
	ctx := context.Background()
	st, err := OpenStore(ctx, s.JS)
	if err != nil {
		t.Fatal(err)
	}
	for _, arch := range []string{"amd64", "riscv64"} {
		r := events.JobRef{Repo: "r", Branch: "main", Commit: "c1", Job: "test", Arch: arch}
		r.JobID = events.JobID(r.Repo, r.Branch, r.Commit, r.Job, r.Arch)
		st.Apply(ctx, &events.JobQueued{JobRef: r, Pool: "default", Class: events.ClassFirst, QueueSeq: 1})
	}
	kv, _ := s.JS.KeyValue(ctx, events.BucketRunners)
	lease, _ := json.Marshal(events.Lease{ID: "r1", Arch: "amd64", Pool: "default", Slots: 1, Busy: 1})
	kv.Put(ctx, events.LeaseKey("r1"), lease)
	recs, err := st.List(ctx, Filter{All: true})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, r := range recs {
		got[r.Arch] = r.Reason
	}
	if !strings.Contains(got["riscv64"], "no runner for arch riscv64 in pool") || !strings.Contains(got["amd64"], "busy") {
		t.Fatalf("reasons %q", got)
	}
}
