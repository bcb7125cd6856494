package readmodel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jetci/jetci/reporter/readmodel/pgtest"
)

// backends runs a test against a SQLite file and a real PostgreSQL server.
func backends(t *testing.T, f func(t *testing.T, open func() string)) {
	t.Run("sqlite", func(t *testing.T) {
		dir := t.TempDir()
		n := 0
		f(t, func() string { n++; return filepath.Join(dir, fmt.Sprintf("db%d", n), "reporter.db") })
	})
	t.Run("postgres", func(t *testing.T) {
		srv := pgtest.Start(t)
		f(t, srv.NewDB)
	})
}

func mustOpen(t testing.TB, dsn string) *DB {
	t.Helper()
	db, err := Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func row(i int, branch, status string) Row {
	id := fmt.Sprintf("%020x", i)
	return Row{JobID: id, Repo: "proj", Branch: branch, Commit: fmt.Sprintf("%040x", i/3), Module: fmt.Sprintf("m%d", i%3), Job: "test",
		Arch: "amd64", Status: status, Author: "Ann", AuthorEmail: "ann@example.com", Subject: fmt.Sprintf("Fix bug %d", i/3),
		FirstSeen: int64(1000 + i/3), FinishedAt: int64(2000 + i), SortKey: id, Data: []byte(`{"job_id":"` + id + `"}`)}
}

func put(t *testing.T, db *DB, seq uint64, rows ...Row) {
	t.Helper()
	err := db.Apply(context.Background(), "S", seq, func(tx *Tx, applied uint64) error { return tx.Put(context.Background(), rows) })
	if err != nil {
		t.Fatal(err)
	}
}

func TestApplyAndPage(t *testing.T) {
	backends(t, func(t *testing.T, open func() string) {
		ctx := context.Background()
		db := mustOpen(t, open())
		var rows []Row
		for i := range 30 {
			st := "passed"
			if i%5 == 0 {
				st = "failed"
			}
			rows = append(rows, row(i, "main", st))
		}
		put(t, db, 10, rows[:20]...)
		put(t, db, 20, rows[20:]...)
		if pos, err := db.Position(ctx, "S"); err != nil || pos != 20 {
			t.Fatalf("position %d %v", pos, err)
		}
		// An old batch again: skipped whole.
		called := false
		if err := db.Apply(ctx, "S", 15, func(*Tx, uint64) error { called = true; return nil }); err != nil || called {
			t.Fatalf("a batch at or below the position was folded: %v", err)
		}
		// Page forward through everything, 7 at a time.
		var got []string
		p := Page{Limit: 7}
		for {
			rs, pg, err := db.Records(ctx, Filter{Repo: "proj"}, p)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rs {
				got = append(got, r.JobID)
			}
			if pg.Next == (Cursor{}) {
				break
			}
			p.After = pg.Next
		}
		if len(got) != 30 || got[0] != rows[0].JobID || got[29] != rows[29].JobID {
			t.Fatalf("paged %d records: %v", len(got), got)
		}
		// And back from the end.
		rs, pg, err := db.Records(ctx, Filter{}, Page{Limit: 4, Before: End})
		if err != nil || len(rs) != 4 || rs[3].JobID != rows[29].JobID || pg.Prev == (Cursor{}) {
			t.Fatalf("last page %v %+v %v", rs, pg, err)
		}
		rs2, _, err := db.Records(ctx, Filter{}, Page{Limit: 4, Before: pg.Prev})
		if err != nil || len(rs2) != 4 || rs2[3].JobID != rows[25].JobID {
			t.Fatalf("page before the last %v %v", rs2, err)
		}
		// Filters.
		for _, c := range []struct {
			f    Filter
			want int
		}{
			{Filter{Status: []string{"failed"}}, 6},
			{Filter{Module: "m1"}, 10},
			{Filter{Commit: fmt.Sprintf("%040x", 2)}, 3},
			{Filter{Commit: "0000000"}, 30},
			{Filter{Text: "bug 1"}, 3}, // commit 1's three jobs
			{Filter{Text: "ANN@"}, 30},
			{Filter{Text: "100%"}, 0},
			{Filter{Author: "ann@example.com", Status: []string{"failed"}}, 6},
			{Filter{Branch: "dev"}, 0},
		} {
			rs, _, err := db.Records(ctx, c.f, Page{Limit: 100})
			if err != nil || len(rs) != c.want {
				t.Errorf("%+v: %d records, want %d (%v)", c.f, len(rs), c.want, err)
			}
		}
		// Commits, newest first, and cells.
		cs, pg, err := db.Commits(ctx, "proj", "main", "", Page{Limit: 4})
		if err != nil || len(cs) != 4 || cs[0].Commit != fmt.Sprintf("%040x", 9) || pg.Next == (Cursor{}) {
			t.Fatalf("commits %+v %+v %v", cs, pg, err)
		}
		cs, _, err = db.Commits(ctx, "proj", "main", "", Page{Limit: 4, After: pg.Next})
		if err != nil || len(cs) != 4 || cs[0].Commit != fmt.Sprintf("%040x", 5) {
			t.Fatalf("older commits %+v %v", cs, err)
		}
		cells, err := db.Cells(ctx, "proj", "main")
		if err != nil || len(cells) != 3 {
			t.Fatalf("cells %d %v", len(cells), err)
		}
		for _, c := range cells {
			if c.Commit != fmt.Sprintf("%040x", 9) {
				t.Fatalf("cell %s of %s is not the newest commit's", c.Module, c.Commit)
			}
		}
		if h, err := db.Head(ctx, "proj", "main"); err != nil || h.Commit != fmt.Sprintf("%040x", 9) {
			t.Fatalf("head %+v %v", h, err)
		}
		// Retention keeps the latest cells.
		n, err := db.Prune(ctx, timeAt(2000+25), []string{"passed", "failed"}, nil)
		if err != nil || n != 25 {
			t.Fatalf("pruned %d, want 25 (%v)", n, err)
		}
		if c, _ := db.Count(ctx); c != 5 {
			t.Fatalf("%d records left, want 5", c)
		}
	})
}

// TestTwoWritersAgree: two handles on one database apply the same batches
// concurrently (two reporters on one Postgres); each event goes in once.
func TestTwoWritersAgree(t *testing.T) {
	backends(t, func(t *testing.T, open func() string) {
		ctx := context.Background()
		dsn := open()
		a, b := mustOpen(t, dsn), mustOpen(t, dsn)
		var mu sync.Mutex
		folded := map[uint64]int{}
		var wg sync.WaitGroup
		for _, db := range []*DB{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for batch := uint64(1); batch <= 40; batch++ {
					last := batch * 10
					err := db.Apply(ctx, "S", last, func(tx *Tx, applied uint64) error {
						var rows []Row
						mu.Lock()
						for seq := last - 9; seq <= last; seq++ {
							if seq > applied {
								folded[seq]++
								rows = append(rows, row(int(seq), "main", "passed"))
							}
						}
						mu.Unlock()
						return tx.Put(ctx, rows)
					})
					if err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		if len(folded) != 400 {
			t.Fatalf("%d events folded, want 400", len(folded))
		}
		// A rolled-back transaction may have counted an event; what
		// committed is what the database holds.
		if n, _ := a.Count(ctx); n != 400 {
			t.Fatalf("%d records", n)
		}
		da, _ := a.Dump(ctx)
		db, _ := b.Dump(ctx)
		if da != db {
			t.Fatal("the two handles disagree")
		}
	})
}

func TestMigrateFromVersion1(t *testing.T) {
	backends(t, func(t *testing.T, open func() string) {
		ctx := context.Background()
		dsn := open()
		old, err := openAt(ctx, dsn, 1)
		if err != nil {
			t.Fatal(err)
		}
		if v, _ := old.Version(ctx); v != 1 {
			t.Fatalf("version %d", v)
		}
		// A version 1 record, written as version 1 wrote it.
		if _, err := old.sql.ExecContext(ctx, old.q(`INSERT INTO records (job_id, repo, branch, commit_sha, module, job, arch, status,
			author, subject, first_seen, finished_at, sort_key, data) VALUES (?, 'proj', 'main', 'abc', '', 'test', 'amd64', 'passed', 'Ann', 's', 1, 2, 'k', ?)`),
			"00000000000000000001", []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := old.sql.ExecContext(ctx, old.q(`INSERT INTO position (stream, seq) VALUES ('S', 7)`)); err != nil {
			t.Fatal(err)
		}
		old.Close()
		db := mustOpen(t, dsn)
		if v, _ := db.Version(ctx); v != SchemaVersion {
			t.Fatalf("migrated to %d, want %d", v, SchemaVersion)
		}
		if pos, _ := db.Position(ctx, "S"); pos != 7 {
			t.Fatalf("position %d after the migration", pos)
		}
		r, err := db.Job(ctx, "00000000000000000001")
		if err != nil || r.AuthorEmail != "" || r.Status != "passed" {
			t.Fatalf("%+v %v", r, err)
		}
		put(t, db, 8, row(2, "main", "failed"))
		if rs, _, err := db.Records(ctx, Filter{Author: "ann@example.com"}, Page{Limit: 10}); err != nil || len(rs) != 1 {
			t.Fatalf("%v %v", rs, err)
		}
		if err := db.Apply(ctx, "S", 9, func(tx *Tx, _ uint64) error {
			return tx.Bad(ctx, BadEvent{Seq: 9, Subject: "x", Error: "bad", Data: []byte("{")})
		}); err != nil {
			t.Fatal(err)
		}
		if bad, err := db.BadEvents(ctx, 10); err != nil || len(bad) != 1 || bad[0].Seq != 9 {
			t.Fatalf("%v %v", bad, err)
		}
	})
}

// openAt opens a new database at an older schema version.
func openAt(ctx context.Context, dsn string, version int) (*DB, error) {
	db, err := openRaw(ctx, dsn)
	if err != nil {
		return nil, err
	}
	if _, err := db.sql.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
		return nil, err
	}
	return db, db.migrateTo(ctx, version)
}

func timeAt(n int64) time.Time { return time.Unix(0, n) }

func TestCorruptAndUnwritableFile(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	bad := filepath.Join(dir, "reporter.db")
	if err := os.WriteFile(bad, []byte(strings.Repeat("not a database ", 1000)), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Open(ctx, bad)
	if err == nil || !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "jetci reindex") {
		t.Fatalf("a corrupt file: %v", err)
	}
	if os.Geteuid() == 0 {
		t.Log("root writes read-only files: the unwritable case is not checked")
		return
	}
	ro := filepath.Join(dir, "ro", "reporter.db")
	db := mustOpen(t, ro)
	db.Close()
	os.Chmod(ro, 0o444)
	if _, err := Open(ctx, ro); err == nil || !strings.Contains(err.Error(), ro) {
		t.Fatalf("a read-only file: %v", err)
	}
}

func TestCursorRoundTrip(t *testing.T) {
	for _, c := range []Cursor{{1, "a"}, {-5, "x.y"}, {1 << 60, "00000000000000000001"}} {
		got, err := ParseCursor(c.String())
		if err != nil || got != c {
			t.Fatalf("%+v → %q → %+v %v", c, c.String(), got, err)
		}
	}
	for _, s := range []string{"!", "YQ", "LjE"} {
		if _, err := ParseCursor(s); err == nil {
			t.Errorf("%q parsed", s)
		}
	}
}

func FuzzParseCursor(f *testing.F) {
	f.Add("")
	f.Add("end")
	f.Add(Cursor{12, "abc"}.String())
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCursor(s)
		if err == nil && c != (Cursor{}) && c != End {
			if back, err := ParseCursor(c.String()); err != nil || back != c {
				t.Fatalf("%q: %+v does not round-trip", s, c)
			}
		}
	})
}
