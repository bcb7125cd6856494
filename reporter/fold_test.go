package reporter

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter/readmodel"
	"github.com/jetci/jetci/reporter/readmodel/pgtest"
)

// backends runs a test with a SQLite file and with a real PostgreSQL server;
// newDSN gives a new, empty database each call.
func backends(t *testing.T, f func(t *testing.T, newDSN func() string, pg *pgtest.Server)) {
	t.Run("sqlite", func(t *testing.T) {
		dir := t.TempDir()
		n := 0
		f(t, func() string { n++; return filepath.Join(dir, fmt.Sprint(n), DBFile) }, nil)
	})
	t.Run("postgres", func(t *testing.T) {
		pg := pgtest.Start(t)
		f(t, pg.NewDB, pg)
	})
}

// runReporter starts a reporter on dsn; stop ends it and waits.
func runReporter(t *testing.T, js jetstream.JetStream, dsn, http string) (r *Reporter, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r, err := New(ctx, Config{DB: dsn, HTTP: http}, js, brokertest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	t.Cleanup(stop)
	return r, stop
}

// publishJobs publishes the queued, started and finished events of jobs
// from..from+n-1, in the seed's shape (modules × branches × archs).
func publishJobs(t *testing.T, js jetstream.JetStream, from, n int) {
	t.Helper()
	ctx := context.Background()
	svc, run, err := SyntheticPublishers(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	for i := from; i < from+n; i++ {
		for _, ev := range SyntheticJob(i, 5, 3, 2) {
			data, err := events.Encode(ev.Event)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ev.With(svc, run).PublishAsync(ev.Subject, data); err != nil {
				t.Fatal(err)
			}
		}
	}
	select {
	case <-allComplete(svc, run):
	case <-ctx.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("publishing took too long")
	}
}

func lastSeq(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
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

// waitApplied waits until db has applied every event now in the stream.
func waitApplied(t *testing.T, js jetstream.JetStream, db *readmodel.DB) {
	t.Helper()
	want := lastSeq(t, js)
	brokertest.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
		pos, err := db.Position(context.Background(), events.StreamResults)
		if err != nil || pos < want {
			return fmt.Errorf("applied %d of %d (%v)", pos, want, err)
		}
		return nil
	})
}

func dump(t *testing.T, dsn string) string {
	t.Helper()
	db, err := readmodel.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	d, err := db.Dump(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func count(t *testing.T, db *readmodel.DB) int64 {
	t.Helper()
	n, err := db.Count(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestFoldResumesAndRebuildEqualsLive: a restarted reporter folds only the
// events after its applied position; a malformed event is recorded, not
// applied, and does not stop the fold; a rebuild from the stream equals the
// live read model.
func TestFoldResumesAndRebuildEqualsLive(t *testing.T) {
	backends(t, func(t *testing.T, newDSN func() string, _ *pgtest.Server) {
		s := brokertest.Run(t)
		ctx := context.Background()
		dsn := newDSN()
		publishJobs(t, s.JS, 0, 300)
		if _, err := s.JS.Publish(ctx, events.ResultSubject("proj", "main", events.KindFinished), []byte(`{"not":"an event"`)); err != nil {
			t.Fatal(err)
		}
		publishJobs(t, s.JS, 300, 20)
		r1, stop1 := runReporter(t, s.JS, dsn, "")
		r1.View().Repos("") // loads the cells early: the fold then keeps them
		<-r1.View().Ready()
		waitApplied(t, s.JS, r1.View().DB())
		sameCells(t, r1.View())
		if n := count(t, r1.View().DB()); n != 320 {
			t.Fatalf("%d records, want 320", n)
		}
		bad, err := r1.View().DB().BadEvents(ctx, 10)
		if err != nil || len(bad) != 1 {
			t.Fatalf("bad events %v %v", bad, err)
		}
		stop1()

		publishJobs(t, s.JS, 320, 100)
		r2, stop2 := runReporter(t, s.JS, dsn, "")
		r2.View().Repos("")
		<-r2.View().Ready()
		waitApplied(t, s.JS, r2.View().DB())
		brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
			if st := r2.View().Stats(); st.Applied != 300 || st.Bad != 0 {
				return fmt.Errorf("the restarted reporter folded %+v, want only the 300 new events", st)
			}
			return nil
		})
		if n := count(t, r2.View().DB()); n != 420 {
			t.Fatalf("%d records, want 420", n)
		}
		sameCells(t, r2.View())
		// What the pages read agrees with what was published.
		recs, _, err := r2.View().Results(ctx, Filter{Status: []events.Status{events.StatusFailed}}, readmodel.Page{Limit: 1000}, 1<<30)
		if err != nil || len(recs) != 420/7 {
			t.Fatalf("%d failed records, want %d (%v)", len(recs), 420/7, err)
		}
		stop2()
		live := dump(t, dsn)

		other := newDSN()
		st, err := Reindex(ctx, s.JS, other, brokertest.Logger(t))
		if err != nil || st.Applied != 1260 || st.Bad != 1 {
			t.Fatalf("reindex: %+v %v", st, err)
		}
		if rebuilt := dump(t, other); rebuilt != live {
			t.Fatalf("the rebuild differs from the live read model:\nlive    %.300s\nrebuilt %.300s", live, rebuilt)
		}
		// In place, too.
		if _, err := Reindex(ctx, s.JS, dsn, brokertest.Logger(t)); err != nil {
			t.Fatal(err)
		}
		if again := dump(t, dsn); again != live {
			t.Fatal("reindexing in place changed the read model")
		}
	})
}

// TestTwoReportersOnePostgres: two reporters fold the same stream into one
// database at once; each event is applied once and they agree.
func TestTwoReportersOnePostgres(t *testing.T) {
	pg := pgtest.Start(t)
	s := brokertest.Run(t)
	dsn := pg.NewDB()
	publishJobs(t, s.JS, 0, 200)
	a, _ := runReporter(t, s.JS, dsn, "")
	b, _ := runReporter(t, s.JS, dsn, "")
	publishJobs(t, s.JS, 200, 400)
	waitApplied(t, s.JS, a.View().DB())
	if n := count(t, b.View().DB()); n != 600 {
		t.Fatalf("%d records, want 600", n)
	}
	// Their counts move just after their commits.
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if sa, sb := a.View().Stats(), b.View().Stats(); sa.Applied+sb.Applied != 1800 {
			return fmt.Errorf("the two reporters applied %d + %d events, want 1800 in all", sa.Applied, sb.Applied)
		}
		return nil
	})
	ctx := context.Background()
	ra, _, err := a.View().Results(ctx, Filter{Repo: "proj", Branch: "b1"}, readmodel.Page{Limit: 50}, 0)
	if err != nil {
		t.Fatal(err)
	}
	rb, _, err := b.View().Results(ctx, Filter{Repo: "proj", Branch: "b1"}, readmodel.Page{Limit: 50}, 0)
	if err != nil || len(ra) != 50 || len(rb) != 50 {
		t.Fatalf("%d %d %v", len(ra), len(rb), err)
	}
	for i := range ra {
		if ra[i].JobID != rb[i].JobID || ra[i].Status != rb[i].Status {
			t.Fatalf("record %d: %s %s against %s %s", i, ra[i].JobID, ra[i].Status, rb[i].JobID, rb[i].Status)
		}
	}
	// Each one's cells (in memory) follow what the other applied.
	brokertest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if ca, cb := cellsOf(a.View()), cellsOf(b.View()); ca != cb {
			return fmt.Errorf("the two reporters' cells differ:\n%.300s\n%.300s", ca, cb)
		}
		return nil
	})
	sameCells(t, a.View())
	live := dump(t, dsn)
	other := pg.NewDB()
	if _, err := Reindex(ctx, s.JS, other, brokertest.Logger(t)); err != nil {
		t.Fatal(err)
	}
	if dump(t, other) != live {
		t.Fatal("two reporters' database differs from a rebuild")
	}
}

// TestPostgresUnreachable: /healthz says 503 while PostgreSQL is down; the
// reporter resumes by itself when it is back and loses no event.
func TestPostgresUnreachable(t *testing.T) {
	pg := pgtest.Start(t)
	s := brokertest.Run(t)
	dsn := pg.NewDB()
	publishJobs(t, s.JS, 0, 50)
	r, _ := runReporter(t, s.JS, dsn, "127.0.0.1:0")
	<-r.View().Ready()
	waitApplied(t, s.JS, r.View().DB())
	health := func() (int, string) {
		resp, err := http.Get("http://" + r.Addr() + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := health(); code != 200 {
		t.Fatalf("healthz %d %s", code, body)
	}
	pg.Stop()
	publishJobs(t, s.JS, 50, 50)
	brokertest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if code, body := health(); code != http.StatusServiceUnavailable {
			return fmt.Errorf("healthz %d %s with the database down", code, body)
		}
		return nil
	})
	pg.Restart()
	brokertest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		if code, body := health(); code != 200 {
			return fmt.Errorf("healthz %d %s", code, body)
		}
		return nil
	})
	waitApplied(t, s.JS, r.View().DB())
	if n := count(t, r.View().DB()); n != 100 {
		t.Fatalf("%d records after the database came back, want 100", n)
	}
}

// TestPagedAPI pages /api/v1/results and /api/v1/commits through their
// cursors and checks the filters.
func TestPagedAPI(t *testing.T) {
	s := brokertest.Run(t)
	publishJobs(t, s.JS, 0, 90)
	r, _ := runReporter(t, s.JS, filepath.Join(t.TempDir(), DBFile), "127.0.0.1:0")
	<-r.View().Ready()
	waitApplied(t, s.JS, r.View().DB())
	base := "http://" + r.Addr()
	seen := map[string]bool{}
	url := base + "/api/v1/results?repo=proj&limit=7"
	for pages := 0; ; pages++ {
		var page struct {
			Results []Record `json:"results"`
			Next    string   `json:"next"`
		}
		getJSON(t, url, &page)
		for _, rec := range page.Results {
			if seen[rec.JobID] {
				t.Fatalf("job %s on two pages", rec.JobID)
			}
			seen[rec.JobID] = true
		}
		if page.Next == "" {
			break
		}
		if pages > 20 {
			t.Fatal("paging does not end")
		}
		url = base + "/api/v1/results?repo=proj&limit=7&after=" + page.Next
	}
	if len(seen) != 90 {
		t.Fatalf("%d jobs over the pages, want 90", len(seen))
	}
	var failed struct{ Results []Record }
	getJSON(t, base+"/api/v1/results?status=failed&arch=arm64&limit=100", &failed)
	for _, rec := range failed.Results {
		if rec.Status != events.StatusFailed || rec.Arch != "arm64" {
			t.Fatalf("filter let %s %s through", rec.Status, rec.Arch)
		}
	}
	if len(failed.Results) == 0 {
		t.Fatal("no failed arm64 jobs")
	}
	var commits struct {
		Commits []Commit `json:"commits"`
		Next    string   `json:"next"`
	}
	getJSON(t, base+"/api/v1/commits?repo=proj&branch=b0&limit=2", &commits)
	if len(commits.Commits) != 2 || commits.Next == "" || !commits.Commits[0].Time.After(commits.Commits[1].Time) {
		t.Fatalf("commits page %+v", commits)
	}
	first := commits.Commits
	getJSON(t, base+"/api/v1/commits?repo=proj&branch=b0&limit=2&after="+commits.Next, &commits)
	if len(commits.Commits) == 0 || !first[1].Time.After(commits.Commits[0].Time) {
		t.Fatalf("the next commits page is not older: %+v", commits.Commits)
	}
	for _, bad := range []string{"/api/v1/results?limit=x", "/api/v1/results?after=!!", "/api/v1/results?status=great", "/api/v1/results?commit=xyz", "/api/v1/results?since=yesterday"} {
		resp, err := http.Get(base + bad)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", bad, resp.StatusCode)
		}
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("%s: %d %s", url, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", url, err)
	}
}

// cellsOf is the overview's cells, as text.
func cellsOf(v *View) string {
	var out []string
	recs, err := v.latest(context.Background(), "", "")
	if err != nil {
		return err.Error()
	}
	for _, c := range recs {
		out = append(out, fmt.Sprintf("%s %s %s/%s/%s %s %s %d", c.Repo, c.Branch, c.Module, c.Job, c.Arch, c.JobID, c.Status, c.Attempt))
	}
	for _, r := range v.Repos("") {
		for _, b := range r.Branches {
			m := "<nil>"
			if c := b.Modules; c != nil {
				m = fmt.Sprintf("%d/%d/%d %s", c.Jobs, c.Passed, c.Failing, c.Status)
				if fs := c.FailingSince; fs != nil {
					m += fmt.Sprintf(" since %s %d", fs.Commit, fs.CommitsAgo)
				}
			}
			out = append(out, fmt.Sprintf("%s %s head %s %s", r.Repo, b.Branch, b.Head, m))
		}
	}
	slices.Sort(out)
	return strings.Join(out, "\n")
}

// sameCells checks that a view's cells, kept by its fold, are those a view
// loading them from the database now sees.
func sameCells(t *testing.T, v *View) {
	t.Helper()
	fresh := NewView(v.db, nil, nil, v.log)
	if got, want := cellsOf(v), cellsOf(fresh); got != want || got == "" {
		t.Fatalf("the cells kept by the fold differ from the database's:\n%.500s\nwant\n%.500s", got, want)
	}
}

func TestCutToSize(t *testing.T) {
	var recs []Record
	for i := range 10 {
		recs = append(recs, Record{JobID: fmt.Sprintf("%020x", i), QueuedAt: t0.Add(time.Duration(i) * time.Second), Error: strings.Repeat("x", 1000)})
	}
	one, _ := json.MarshalIndent(&recs[0], "    ", "  ")
	three := 3*(len(one)+6) + 10
	got, pg := cutToSize(recs, readmodel.Paged{}, false, three)
	if len(got) != 3 || pg.Next != (readmodel.Cursor{Time: recs[2].QueuedAt.UnixNano(), ID: sortKey(&recs[2])}) {
		t.Fatalf("forward: %d records, next %+v", len(got), pg.Next)
	}
	got, pg = cutToSize(recs, readmodel.Paged{}, true, three)
	if len(got) != 3 || got[0].JobID != recs[7].JobID || pg.Prev != (readmodel.Cursor{Time: recs[7].QueuedAt.UnixNano(), ID: sortKey(&recs[7])}) {
		t.Fatalf("backwards: %d records from %s, prev %+v", len(got), got[0].JobID, pg.Prev)
	}
	if got, _ := cutToSize(recs[:1], readmodel.Paged{}, false, 10); len(got) != 1 {
		t.Fatal("a page too big for one record must still hold it")
	}
}

// allComplete is closed when every context's async publishes are acked.
func allComplete(jss ...jetstream.JetStream) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		for _, js := range jss {
			<-js.PublishAsyncComplete()
		}
		close(done)
	}()
	return done
}
