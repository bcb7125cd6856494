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
		// 5 commits × 3 branches × 10 jobs, or fewer if the test ran slowly
		// (the reporter's cut is later than cut by as long as the test ran
		// before it pruned).
		brokertest.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
			if n := count(t, db); n > 150 {
				return fmt.Errorf("%d records, want at most 150", n)
			}
			return nil
		})
		// Kept: at least the commits that finished within the retention now.
		left := count(t, db)
		kept := 0
		for n := range 20 {
			if syntheticEpoch.Add(time.Duration(n)*time.Minute + 2*time.Second).After(time.Now().Add(-keep)) {
				kept += 30
			}
		}
		if left < int64(kept) || left < 30 {
			t.Fatalf("%d records left, want at least %d and the 30 cells' latest", left, kept)
		}
		for _, br := range []string{"b0", "b1", "b2"} {
			cs, _, err := db.Commits(ctx, "proj", br, "", readmodel.Page{Limit: 100})
			if err != nil || int64(len(cs)) != left/30 {
				t.Fatalf("%s: %d commits after the retention, want %d (%v)", br, len(cs), left/30, err)
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
		if int64(len(page.Results)) != left || page.Next != "" {
			t.Fatalf("the API lists %d records (next %q), want %d", len(page.Results), page.Next, left)
		}
		for _, rec := range page.Results {
			if !rec.FinishedAt.After(cut) || rec.Status == events.StatusQueued {
				t.Fatalf("record %s finished at %v, before the retention's cut %v", rec.JobID, rec.FinishedAt, cut)
			}
		}
	})
}
