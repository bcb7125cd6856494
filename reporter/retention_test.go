package reporter

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter/readmodel"
	"github.com/jetci/jetci/reporter/readmodel/pgtest"
)

// TestHistoryRetention: a reporter with --history-retention deletes the
// finished records older than it, keeps the newer ones and the latest of
// each cell, and serves its pages and lists from what is left.
func TestHistoryRetention(t *testing.T) {
	// 600 jobs of 20 commits a branch, a minute apart; the retention keeps
	// the last five (each job finishes 2 s after its commit's minute).
	cut := syntheticEpoch.Add(14*time.Minute + 30*time.Second)
	keep := time.Since(cut)
	if keep <= 0 {
		t.Skip("this machine's clock is before the synthetic history")
	}
	backends(t, func(t *testing.T, newDSN func() string, _ *pgtest.Server) {
		s := brokertest.Run(t)
		publishJobs(t, s.JS, 0, 600)
		ctx, cancel := context.WithCancel(context.Background())
		r, err := New(ctx, Config{DB: newDSN(), HTTP: "127.0.0.1:0", HistoryRetention: keep}, s.JS, brokertest.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		defer func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}()
		<-r.View().Ready()
		db := r.View().DB()
		// 5 commits × 3 branches × 10 jobs.
		brokertest.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
			if n := count(t, db); n != 150 {
				return fmt.Errorf("%d records, want 150", n)
			}
			return nil
		})
		for _, br := range []string{"b0", "b1", "b2"} {
			cs, _, err := db.Commits(ctx, "proj", br, "", readmodel.Page{Limit: 100})
			if err != nil || len(cs) != 5 {
				t.Fatalf("%s: %d commits after the retention, want 5 (%v)", br, len(cs), err)
			}
			cells, err := db.Cells(ctx, "proj", br)
			if err != nil || len(cells) != 10 {
				t.Fatalf("%s: %d cells, want 10 (%v)", br, len(cells), err)
			}
		}
		var page struct {
			Results []Record `json:"results"`
			Next    string   `json:"next"`
		}
		getJSON(t, "http://"+r.Addr()+"/api/v1/results?limit=1000", &page)
		if len(page.Results) != 150 || page.Next != "" {
			t.Fatalf("the API lists %d records (next %q), want 150", len(page.Results), page.Next)
		}
		for _, rec := range page.Results {
			if !rec.FinishedAt.After(cut) || rec.Status == events.StatusQueued {
				t.Fatalf("record %s finished at %v, before the retention's cut %v", rec.JobID, rec.FinishedAt, cut)
			}
		}
	})
}
