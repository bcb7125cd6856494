package readmodel

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jetci/jetci/reporter/readmodel/pgtest"
)

// The seed's shape (reporter.SyntheticJob): 50 modules × 3 archs of a
// commit per branch, 10 branches, a new commit a minute, 5 authors, one job
// in 7 failed.
const seedModules, seedArchs, seedBranches = 50, 3, 10

var seedEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()

// seedRow is job i of the seed's history, as the fold stores it, with a
// record of a realistic size.
func seedRow(i int) Row {
	module := fmt.Sprintf("m%03d", i%seedModules)
	arch := []string{"amd64", "arm64", "riscv64"}[(i/seedModules)%seedArchs]
	branch := fmt.Sprintf("b%d", (i/(seedModules*seedArchs))%seedBranches)
	n := i / (seedModules * seedArchs * seedBranches)
	sum := sha1.Sum([]byte(branch + "/" + strconv.Itoa(n)))
	commit := hex.EncodeToString(sum[:])
	idSum := sha1.Sum([]byte("job/" + strconv.Itoa(i)))
	id := hex.EncodeToString(idSum[:10])
	status := "passed"
	if i%7 == 0 {
		status = "failed"
	}
	first := seedEpoch + int64(n)*int64(time.Minute)
	data := fmt.Sprintf(`{"job_id":%q,"repo":"proj","branch":%q,"commit":%q,"module":%q,"job":"test","arch":%q,"status":%q,`+
		`"subject":"change %d of %s","author":{"name":"Dev %d","email":"dev%d@example.com"},"pool":"default","class":"first",`+
		`"queue_seq":%d,"attempt":1,"runner":"synthetic","duration_ms":1000,"tests":{"total":10,"passed":10},"padding":%q}`,
		id, branch, commit, module, arch, status, n, branch, n%5, n%5, i+1, strings.Repeat("x", 300))
	return Row{JobID: id, Repo: "proj", Branch: branch, Commit: commit, Module: module, Job: "test", Arch: arch, Status: status,
		Author: fmt.Sprintf("Dev %d", n%5), AuthorEmail: fmt.Sprintf("dev%d@example.com", n%5), Subject: fmt.Sprintf("change %d of %s", n, branch),
		FirstSeen: first, FinishedAt: first + 2*int64(time.Second),
		SortKey: strings.Join([]string{"proj", branch, module, "test", arch, id}, "\x01"), Data: []byte(data), Tests: seedTests(module)}
}

// seedTests are the tests a module's job reports: seedTestsPerJob of them.
func seedTests(module string) []string {
	out := make([]string, seedTestsPerJob)
	for k := range out {
		out[k] = fmt.Sprintf("example.com/proj/%s.TestCase%02d", module, k)
	}
	return out
}

const seedTestsPerJob = 20

// fillSeed writes jobs from..from+n-1 of the seed's history in batches of
// 4096, as the fold does, moving the position of stream "S" to from+n.
func fillSeed(tb testing.TB, db *DB, from, n int) {
	tb.Helper()
	ctx := context.Background()
	for i := from; i < from+n; {
		k := min(4096, from+n-i)
		rows := make([]Row, k)
		for j := range rows {
			rows[j] = seedRow(i + j)
		}
		if err := db.Apply(ctx, "S", uint64(i+k), func(tx *Tx, _ uint64) error { return tx.Put(ctx, rows) }); err != nil {
			tb.Fatal(err)
		}
		i += k
	}
}

func benchJobs() int {
	if s := os.Getenv("JETCI_BENCH_JOBS"); s != "" {
		n, err := strconv.Atoi(s)
		if err == nil && n > 0 {
			return n
		}
	}
	return 100000
}

// benchBackends runs b on the backends JETCI_BENCH_DB names (sqlite,
// postgres, or both: the default).
func benchBackends(b *testing.B, f func(b *testing.B, dsn string)) {
	want := os.Getenv("JETCI_BENCH_DB")
	if want == "" || want == "sqlite" {
		b.Run("sqlite", func(b *testing.B) { f(b, b.TempDir()+"/reporter.db") })
	}
	if want == "" || want == "postgres" {
		b.Run("postgres", func(b *testing.B) { f(b, pgtest.Start(b).NewDB()) })
	}
}

// listQuery is one query a page or an API list makes.
type listQuery struct {
	name string
	run  func(ctx context.Context, db *DB) error
}

// listQueries are the read model's queries behind every page, API list and
// `jetci results`, on the seed's history of n jobs.
func listQueries(n int) []listQuery {
	last := seedRow(n - 1)
	mid := seedRow(n / 2)
	rare := fmt.Sprintf("change %d of %s", (n/2)/(seedModules*seedArchs*seedBranches), mid.Branch)
	records := func(f Filter, p Page) func(ctx context.Context, db *DB) error {
		return func(ctx context.Context, db *DB) error {
			if f.Status == nil {
				f.Status = []string{"passed", "failed", "error", "cancelled"} // the API's default: finished jobs
			}
			rs, pg, err := db.Records(ctx, f, p)
			if err == nil && len(rs) == 0 {
				err = fmt.Errorf("no records for %+v", f)
			}
			if err == nil && p.Limit < 1000 && len(rs) == p.Limit && pg.Next == (Cursor{}) && p.Before == (Cursor{}) {
				err = fmt.Errorf("a full page of %+v without a next cursor", f)
			}
			return err
		}
	}
	midCursor := Cursor{mid.FirstSeen, mid.SortKey}
	return []listQuery{
		{"results (first page)", records(Filter{}, Page{Limit: 100})},
		{"results before=end limit=1000", records(Filter{}, Page{Limit: 1000, Before: End})},
		{"results after=middle", records(Filter{}, Page{Limit: 100, After: midCursor})},
		{"results before=middle", records(Filter{}, Page{Limit: 100, Before: midCursor})},
		{"results repo branch limit=100 (jetci results)", records(Filter{Repo: "proj", Branch: "b4"}, Page{Limit: 100})},
		{"results repo branch before=end", records(Filter{Repo: "proj", Branch: "b4"}, Page{Limit: 100, Before: End})},
		{"results repo branch module", records(Filter{Repo: "proj", Branch: "b3", Module: "m007"}, Page{Limit: 100})},
		{"results repo module", records(Filter{Repo: "proj", Module: "m007"}, Page{Limit: 100, Before: End})},
		{"results module job arch", records(Filter{Module: "m007", Job: "test", Arch: "arm64"}, Page{Limit: 100, Before: End})},
		{"results status=failed arch=arm64", records(Filter{Status: []string{"failed"}, Arch: "arm64"}, Page{Limit: 100})},
		{"results status=failed before=end", records(Filter{Status: []string{"failed"}}, Page{Limit: 100, Before: End})},
		{"results commit prefix", records(Filter{Commit: mid.Commit[:8]}, Page{Limit: 100})},
		{"results author", records(Filter{Author: "dev3@example.com"}, Page{Limit: 100, Before: End})},
		{"results since/until", records(Filter{Since: time.Unix(0, mid.FirstSeen), Until: time.Unix(0, mid.FirstSeen+int64(time.Hour))}, Page{Limit: 100})},
		{"results q= common (dev3@)", records(Filter{Text: "dev3@"}, Page{Limit: 100})},
		{"results q= common before=end", records(Filter{Text: "dev3@"}, Page{Limit: 100, Before: End})},
		{"results q= one commit", records(Filter{Text: rare}, Page{Limit: 100})},
		{"results q= one commit, branch", records(Filter{Text: rare, Repo: "proj", Branch: mid.Branch}, Page{Limit: 100})},
		{"results q= short (b3)", records(Filter{Text: "b3"}, Page{Limit: 100, Before: End})},
		{"results running (all=1 queue)", func(ctx context.Context, db *DB) error {
			_, _, err := db.Records(ctx, Filter{Status: []string{"queued", "running", "held"}}, Page{Limit: 100})
			return err
		}},
		{"commits of a branch", func(ctx context.Context, db *DB) error {
			cs, pg, err := db.Commits(ctx, "proj", "b0", "", Page{Limit: 20})
			if err == nil && len(cs) != min(20, n/(seedModules*seedArchs*seedBranches)) {
				err = fmt.Errorf("%d commits", len(cs))
			}
			if err == nil {
				cs, _, err = db.Commits(ctx, "proj", "b0", "", Page{Limit: 20, After: pg.Next})
			}
			return err
		}},
		{"commit by prefix", func(ctx context.Context, db *DB) error {
			cs, _, err := db.Commits(ctx, "proj", mid.Branch, mid.Commit[:7], Page{Limit: 1})
			if err == nil && len(cs) != 1 {
				err = fmt.Errorf("%d commits", len(cs))
			}
			return err
		}},
		{"a commit's jobs", func(ctx context.Context, db *DB) error {
			rs, err := db.CommitJobs(ctx, "proj", mid.Branch, []string{mid.Commit})
			if err == nil && len(rs) == 0 {
				err = fmt.Errorf("no jobs")
			}
			return err
		}},
		{"a branch page's commit counts (20 commits)", func(ctx context.Context, db *DB) error {
			cs, _, err := db.Commits(ctx, "proj", "b0", "", Page{Limit: 20})
			if err != nil {
				return err
			}
			var shas []string
			for _, c := range cs {
				shas = append(shas, c.Commit)
			}
			counts, err := db.CommitCounts(ctx, "proj", "b0", shas)
			if err == nil && len(counts) < len(shas) {
				err = fmt.Errorf("%d counts for %d commits", len(counts), len(shas))
			}
			return err
		}},
		{"a branch page's listed jobs (20 commits, one query)", func(ctx context.Context, db *DB) error {
			cs, _, err := db.Commits(ctx, "proj", "b0", "", Page{Limit: 20})
			if err != nil {
				return err
			}
			st := []string{"failed", "error", "running", "queued", "held", "cancelled"}
			var shas, want []string
			for _, c := range cs {
				shas = append(shas, c.Commit)
				one, err := db.CommitJobsOf(ctx, "proj", "b0", []string{c.Commit}, st, false, 13)
				if err != nil {
					return err
				}
				for _, r := range one {
					want = append(want, r.JobID)
				}
			}
			rs, err := db.CommitsJobsOf(ctx, "proj", "b0", shas, st, 13)
			var got []string
			for _, r := range rs {
				got = append(got, r.JobID)
			}
			slices.Sort(got) // the page groups them by commit
			slices.Sort(want)
			if err == nil && (len(got) == 0 || !slices.Equal(got, want)) {
				err = fmt.Errorf("one query: %d jobs, one per commit: %d", len(got), len(want))
			}
			return err
		}},
		{"a commit's jobs not passed (branch page)", func(ctx context.Context, db *DB) error {
			rs, err := db.CommitJobsOf(ctx, "proj", mid.Branch, []string{mid.Commit}, []string{"failed", "error", "running", "queued", "held", "cancelled"}, false, 13)
			if err == nil && len(rs) == 0 {
				err = fmt.Errorf("no failing jobs")
			}
			return err
		}},
		{"a commit's jobs of no module (branch page)", func(ctx context.Context, db *DB) error {
			_, err := db.CommitJobsOf(ctx, "proj", mid.Branch, []string{mid.Commit}, nil, true, 200)
			return err
		}},
		{"test names: one test (m007.TestCase03)", func(ctx context.Context, db *DB) error {
			ns, err := db.TestNames(ctx, "m007.TestCase03", 300)
			if err == nil && len(ns) != seedArchs*min(seedBranches, n/(seedModules*seedArchs)) {
				err = fmt.Errorf("%d places", len(ns))
			}
			return err
		}},
		{"test names: every test (TestCase, first 300)", func(ctx context.Context, db *DB) error {
			ns, err := db.TestNames(ctx, "TestCase", 300)
			if err == nil && len(ns) != 300 {
				err = fmt.Errorf("%d names", len(ns))
			}
			return err
		}},
		{"a job", func(ctx context.Context, db *DB) error { _, err := db.Job(ctx, last.JobID); return err }},
		{"branches", func(ctx context.Context, db *DB) error { _, err := db.Branches(ctx, ""); return err }},
		{"a branch's cells", func(ctx context.Context, db *DB) error {
			rs, err := db.Cells(ctx, "proj", "b0")
			if err == nil && len(rs) != seedModules*seedArchs {
				err = fmt.Errorf("%d cells", len(rs))
			}
			return err
		}},
		{"a branch's head", func(ctx context.Context, db *DB) error { _, err := db.Head(ctx, "proj", "b0"); return err }},
		{"live jobs (queue)", func(ctx context.Context, db *DB) error { _, err := db.Live(ctx); return err }},
		{"waiting claims", func(ctx context.Context, db *DB) error { _, err := db.Waiting(ctx, 100); return err }},
	}
}

// BenchmarkListQueries fills a read model with the seed's history of
// JETCI_BENCH_JOBS jobs (default 100,000) and, for every query behind a page,
// an API list or `jetci results`: logs the database's plan, says which
// steps read a whole table, and times it (p50, p95 of 20 runs).
//
//	JETCI_BENCH_JOBS=1000000 go test -run '^$' -bench ListQueries -benchtime 1x -timeout 60m ./reporter/readmodel
func BenchmarkListQueries(b *testing.B) {
	n := benchJobs()
	benchBackends(b, func(b *testing.B, dsn string) {
		ctx := context.Background()
		db := mustOpen(b, dsn)
		t0 := time.Now()
		fillSeed(b, db, 0, n)
		b.Logf("%s: wrote %d records in %v (%.0f/s)", db.Dialect(), n, time.Since(t0).Round(time.Millisecond), float64(n)/time.Since(t0).Seconds())
		if db.Dialect() == Postgres {
			// What autovacuum's analyze does after such a load.
			if _, err := db.sql.ExecContext(ctx, `ANALYZE`); err != nil {
				b.Fatal(err)
			}
		}
		var worst time.Duration
		var scans []string
		for range b.N {
			for _, q := range listQueries(n) {
				var stmts []string
				var argss [][]any
				db.Trace = func(s string, a []any) { stmts, argss = append(stmts, s), append(argss, a) }
				if err := q.run(ctx, db); err != nil {
					b.Fatalf("%s: %v", q.name, err)
				}
				db.Trace = nil
				var plan strings.Builder
				for i, s := range stmts {
					p, err := db.Explain(ctx, s, argss[i]...)
					if err != nil {
						b.Fatalf("%s: explain: %v", q.name, err)
					}
					plan.WriteString(p)
					if sc := tableScans(db.Dialect(), p); len(sc) > 0 {
						scans = append(scans, q.name+": "+strings.Join(sc, "; "))
					}
				}
				var ds []time.Duration
				for range 20 {
					t := time.Now()
					if err := q.run(ctx, db); err != nil {
						b.Fatal(err)
					}
					ds = append(ds, time.Since(t))
				}
				slices.Sort(ds)
				p95 := ds[len(ds)*95/100]
				worst = max(worst, p95)
				b.Logf("%-48s p50 %7.2f ms  p95 %7.2f ms\n\t%s", q.name, ms(ds[len(ds)/2]), ms(p95),
					strings.ReplaceAll(strings.TrimSpace(plan.String()), "\n", "\n\t"))
			}
		}
		for _, s := range scans {
			b.Logf("reads a whole table: %s", s)
		}
		b.ReportMetric(ms(worst), "worst_p95_ms")
		b.ReportMetric(float64(len(scans)), "table_scans")
	})
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// tableScans returns the steps of a plan that read a whole big table.
func tableScans(d Dialect, plan string) []string {
	var out []string
	for _, line := range strings.Split(plan, "\n") {
		l := strings.TrimSpace(line)
		switch d {
		case SQLite:
			// "SCAN records" reads the table; "SCAN records USING INDEX"
			// walks an index in order, stopping when the page is full.
			// "SCAN commits_text VIRTUAL TABLE INDEX 0:M…" is an FTS5 match.
			if (strings.HasPrefix(l, "SCAN records") || strings.HasPrefix(l, "SCAN commits") || strings.HasPrefix(l, "SCAN r ")) &&
				!strings.Contains(l, "USING") && !strings.Contains(l, "VIRTUAL TABLE") || l == "SCAN r" {
				out = append(out, l)
			}
		case Postgres:
			if strings.Contains(l, "Seq Scan on records") || strings.Contains(l, "Seq Scan on commits") {
				out = append(out, l)
			}
		}
	}
	return out
}
