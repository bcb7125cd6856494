package readmodel

import (
	"context"
	"os"
	"slices"
	"testing"
)

var finalStatuses = []string{"passed", "failed", "error", "cancelled"}

// cutAfter is the retention's cut that keeps the records of seedRow(i)'s
// commit and later ones.
func cutAfter(i int) int64 { return seedRow(i).FirstSeen }

func count1(t testing.TB, db *DB, stmt string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := db.sql.QueryRowContext(context.Background(), db.q(stmt), args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", stmt, err)
	}
	return n
}

// size is what the read model takes on disk: the SQLite file (its WAL
// checkpointed), or PostgreSQL's tables and indexes after a VACUUM (what
// autovacuum does).
func size(t testing.TB, db *DB, path string) int64 {
	t.Helper()
	ctx := context.Background()
	if db.dialect == SQLite {
		if _, err := db.sql.ExecContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return st.Size()
	}
	if _, err := db.sql.ExecContext(ctx, `VACUUM`); err != nil {
		t.Fatal(err)
	}
	return count1(t, db, `SELECT pg_total_relation_size('records') + pg_total_relation_size('commits')`)
}

// TestRetentionAtScale: a history rolls on, 6 × 12,000 jobs in the seed's
// shape (a quarter of that under the race detector), pruned after each to
// the last 24,000. Every time: no finished
// record older than the cut is left but the latest of each cell, those all
// stay, no commit is left without records (nor in the text index), the
// number of records is bounded and so is the size on disk; the prune works
// in batches and the fold writes between them.
func TestRetentionAtScale(t *testing.T) {
	if testing.Short() {
		t.Skip("a history of 72,000 jobs")
	}
	backends(t, func(t *testing.T, open func() string) {
		ctx := context.Background()
		dsn := open()
		db := mustOpen(t, dsn)
		step, keep, cycles := 12000, 24000, 6
		if raceOn {
			step, keep = 3000, 6000
		}
		var sizes []int64
		for c := range cycles {
			fillSeed(t, db, c*step, step)
			end := (c + 1) * step
			cut := cutAfter(max(end-keep, 0))
			batches := 0
			folded := 0
			n, err := db.Prune(ctx, timeAt(cut), finalStatuses, func(ctx context.Context) error {
				batches++
				// The fold's turn between two batches: a batch of new jobs goes in.
				if batches == 1 {
					fillSeed(t, db, end, 10)
					folded = 10
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if folded == 0 && n >= PruneBatch {
				t.Fatalf("cycle %d: the fold had no turn between the prune's batches", c)
			}
			if want := int(n) / PruneBatch; c > 1 && batches < want {
				t.Fatalf("cycle %d: %d records pruned between only %d pauses", c, n, batches)
			}
			if old := count1(t, db, `SELECT count(*) FROM records WHERE finished_at < ? AND job_id NOT IN (SELECT job_id FROM cells)`, cut); old != 0 {
				t.Fatalf("cycle %d: %d records older than the retention left", c, old)
			}
			cells := count1(t, db, `SELECT count(*) FROM cells`)
			if kept := count1(t, db, `SELECT count(*) FROM cells c JOIN records r ON r.job_id = c.job_id`); kept != cells || cells != seedModules*seedArchs*seedBranches {
				t.Fatalf("cycle %d: %d of %d cells keep their latest record", c, kept, cells)
			}
			if orphans := count1(t, db, `SELECT count(*) FROM commits c WHERE NOT EXISTS (SELECT 1 FROM records r
				WHERE r.repo = c.repo AND r.branch = c.branch AND r.commit_sha = c.commit_sha)`); orphans != 0 {
				t.Fatalf("cycle %d: %d commits without records", c, orphans)
			}
			if db.dialect == SQLite {
				if a, b := count1(t, db, `SELECT count(*) FROM commits_text`), count1(t, db, `SELECT count(*) FROM commits`); a != b {
					t.Fatalf("cycle %d: the text index has %d commits, the table %d", c, a, b)
				}
			}
			total := count1(t, db, `SELECT count(*) FROM records`)
			if total > int64(keep+seedModules*seedArchs*seedBranches) {
				t.Fatalf("cycle %d: %d records, more than the retention's %d and the cells", c, total, keep)
			}
			// What survives is what a search finds.
			if got := searchCount(t, db, "of b0"); got == 0 {
				t.Fatalf("cycle %d: no record found by text", c)
			}
			sizes = append(sizes, size(t, db, dsn))
			t.Logf("cycle %d: pruned %d in %d batches; %d records, %d commits; %d KB", c, n, batches+1, total,
				count1(t, db, `SELECT count(*) FROM commits`), sizes[c]>>10)
		}
		// Steady from the third cycle (the window is full): the space of
		// deleted rows is used again.
		if steady, last := slices.Max(sizes[2:4]), sizes[len(sizes)-1]; last > steady*5/4 {
			t.Fatalf("the read model grows under retention: %d KB at cycle 3, %d KB at cycle %d (%v)", steady>>10, last>>10, cycles-1, sizes)
		}
	})
}

// TestPruneKeepsPagesAndCursors: a reader paging through results and
// commits while the retention deletes records, including the ones its
// cursors point at, goes on where it was: no survivor is skipped or shown
// twice, in either direction.
func TestPruneKeepsPagesAndCursors(t *testing.T) {
	backends(t, func(t *testing.T, open func() string) {
		ctx := context.Background()
		db := mustOpen(t, open())
		const n = 6000
		fillSeed(t, db, 0, n)
		f := Filter{Status: finalStatuses}
		ids := func(rs []Row) []string {
			var out []string
			for _, r := range rs {
				out = append(out, r.JobID)
			}
			return out
		}
		// Forward, 100 at a time; after three pages, the first 3,000 jobs'
		// commits go (but the latest cells, which are in the last commits).
		var got []string
		p := Page{Limit: 100}
		var cursorAtPrune Cursor
		for page := 0; ; page++ {
			rs, pg, err := db.Records(ctx, f, p)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, ids(rs)...)
			if page == 2 {
				cursorAtPrune = pg.Next
				if k, err := db.Prune(ctx, timeAt(cutAfter(3000)), finalStatuses, nil); err != nil || k == 0 {
					t.Fatalf("pruned %d (%v)", k, err)
				}
			}
			if pg.Next == (Cursor{}) {
				break
			}
			p.After = pg.Next
		}
		// Expected: the first three pages as read, then every survivor after
		// the cursor, in order.
		var rest []string
		q := Page{Limit: 1000, After: cursorAtPrune}
		for {
			rs, pg, err := db.Records(ctx, f, q)
			if err != nil {
				t.Fatal(err)
			}
			rest = append(rest, ids(rs)...)
			if pg.Next == (Cursor{}) {
				break
			}
			q.After = pg.Next
		}
		if want := n - 3000 + 300; len(rest)+300 != want || !slices.Equal(got[300:], rest) {
			t.Fatalf("paging across the prune read %d records after the first pages, want %d", len(got)-300, len(rest))
		}
		// Backwards from a cursor whose record is gone: the survivors before it.
		rs, _, err := db.Records(ctx, f, Page{Limit: 100, Before: cursorAtPrune})
		if err != nil || len(rs) != 0 {
			t.Fatalf("before a pruned cursor: %d records (%v), want none (all older were pruned)", len(rs), err)
		}
		rs, pg, err := db.Records(ctx, f, Page{Limit: 100, Before: End})
		if err != nil || len(rs) != 100 || pg.Prev == (Cursor{}) {
			t.Fatalf("last page %d %v", len(rs), err)
		}
		// Commits: newest first, one at a time; prune under the reader.
		var commits []string
		cp := Page{Limit: 1}
		for page := 0; ; page++ {
			cs, pg, err := db.Commits(ctx, "proj", "b0", "", cp)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range cs {
				if slices.Contains(commits, c.Commit) {
					t.Fatalf("commit %s shown twice", c.Commit)
				}
				commits = append(commits, c.Commit)
			}
			if page == 0 {
				if _, err := db.Prune(ctx, timeAt(cutAfter(n-3000)), finalStatuses, nil); err != nil {
					t.Fatal(err)
				}
			}
			if pg.Next == (Cursor{}) {
				break
			}
			cp.After = pg.Next
		}
		left := count1(t, db, `SELECT count(*) FROM commits WHERE repo = 'proj' AND branch = 'b0'`)
		if left != 2 || len(commits) != 2 {
			t.Fatalf("paged %d commits of b0 across the prune; %d are left", len(commits), left)
		}
	})
}
