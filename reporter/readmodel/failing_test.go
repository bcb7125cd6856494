package readmodel

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// cellRow is the record of one commit (number i of the branch) of the cell
// proj main core/test amd64.
func cellRow(i int, status, author string) Row {
	id := fmt.Sprintf("%020x", 1000+i)
	return Row{JobID: id, Repo: "proj", Branch: "main", Commit: fmt.Sprintf("%040x", i), Module: "core", Job: "test", Arch: "amd64",
		Status: status, Author: author, Subject: fmt.Sprintf("commit %d", i), FirstSeen: int64(100 + i), SortKey: id,
		Data: []byte(`{"job_id":"` + id + `"}`)}
}

func TestFirstFailingAndCommitsAfter(t *testing.T) {
	backends(t, func(t *testing.T, open func() string) {
		ctx := context.Background()
		db := mustOpen(t, open())
		// 0 passed, 1 failed (flaky break), 2 passed, 3 failed by Bob (the
		// break), 4 cancelled, 5 error, 6 failed; then commits 7 and 8 of
		// the branch that did not touch the module (no record of the cell).
		sts := []string{"passed", "failed", "passed", "failed", "cancelled", "error", "failed"}
		var rows []Row
		for i, st := range sts {
			author := "Ann"
			if i == 3 {
				author = "Bob"
			}
			rows = append(rows, cellRow(i, st, author))
		}
		other := cellRow(7, "passed", "Cy")
		other.Module, other.JobID, other.SortKey = "docs", "d7", "d7"
		other8 := cellRow(8, "passed", "Cy")
		other8.Module, other8.JobID, other8.SortKey = "docs", "d8", "d8"
		// Another cell failing since commit 0, which must not mix in.
		arm := cellRow(0, "failed", "Zed")
		arm.Arch, arm.JobID, arm.SortKey = "arm64", "a0", "a0"
		put(t, db, 1, append(rows, other, other8, arm)...)

		cell := CellRef{"proj", "main", "core", "test", "amd64"}
		at := func(r Row) Cursor { return Cursor{r.FirstSeen, r.SortKey} }
		for _, tt := range []struct {
			at   Row
			want string // the job id of the first failing record; "" none
		}{
			{rows[6], rows[3].JobID},
			{rows[5], rows[3].JobID},
			{rows[3], rows[3].JobID},
			{rows[1], rows[1].JobID},
			{rows[2], ""},
			{rows[0], ""},
		} {
			got, err := db.FirstFailing(ctx, cell, at(tt.at))
			switch {
			case tt.want == "" && !errors.Is(err, ErrNotFound):
				t.Errorf("at %s: %v %s, want none", tt.at.Subject, err, got.JobID)
			case tt.want != "" && (err != nil || got.JobID != tt.want):
				t.Errorf("at %s: %v %s, want %s", tt.at.Subject, err, got.JobID, tt.want)
			}
		}
		if got, err := db.FirstFailing(ctx, CellRef{"proj", "main", "core", "test", "arm64"}, at(arm)); err != nil || got.Author != "Zed" {
			t.Errorf("arm64: %v %+v", err, got)
		}
		if n, err := db.CommitsAfter(ctx, "proj", "main", rows[3].Commit); err != nil || n != 5 {
			t.Errorf("commits after 3: %d %v, want 5", n, err)
		}
		if n, err := db.CommitsAfter(ctx, "proj", "main", other8.Commit); err != nil || n != 0 {
			t.Errorf("commits after the head: %d %v", n, err)
		}
		if _, err := db.CommitsAfter(ctx, "proj", "main", strings.Repeat("f", 40)); !errors.Is(err, ErrNotFound) {
			t.Errorf("unknown commit: %v", err)
		}
		if db.Dialect() == SQLite {
			// Each step seeks the index: no step scans the records.
			for _, st := range []string{
				`SELECT first_seen, sort_key FROM records INDEXED BY records_cell WHERE repo = 'proj' AND branch = 'main' AND module = 'core' AND job = 'test' AND arch = 'amd64' AND status = 'passed' AND (first_seen, sort_key) <= (1, 'x') ORDER BY first_seen DESC, sort_key DESC LIMIT 1`,
				`SELECT job_id FROM records INDEXED BY records_cell WHERE repo = 'proj' AND branch = 'main' AND module = 'core' AND job = 'test' AND arch = 'amd64' AND status = 'failed' AND (first_seen, sort_key) <= (1, 'x') AND (first_seen, sort_key) > (0, 'a') ORDER BY first_seen, sort_key LIMIT 1`,
			} {
				plan := explain(t, db, st)
				if !strings.Contains(plan, "records_cell") || strings.Contains(plan, "TEMP B-TREE") {
					t.Errorf("plan of %s:\n%s", st, plan)
				}
			}
		}
	})
}

func explain(t *testing.T, db *DB, stmt string) string {
	t.Helper()
	rows, err := db.sql.QueryContext(context.Background(), "EXPLAIN QUERY PLAN "+stmt)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatal(err)
		}
		b.WriteString(detail + "\n")
	}
	return b.String()
}

// BenchmarkFirstFailing: a branch of 1,000 commits × 100 cells (100,000
// records); one cell failing for its last 500 commits. Finding where its
// streak began reads two index entries, not the history.
func BenchmarkFirstFailing(b *testing.B) {
	ctx := context.Background()
	db, err := Open(ctx, b.TempDir()+"/bench.db")
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	const commits, cells = 1000, 100
	var last Row
	for c := 0; c < commits; c++ {
		rows := make([]Row, 0, cells)
		for m := 0; m < cells; m++ {
			id := fmt.Sprintf("%08x%04x", c, m)
			st := "passed"
			if m == 7 && c >= commits-500 {
				st = "failed"
			}
			r := Row{JobID: id, Repo: "proj", Branch: "main", Commit: fmt.Sprintf("%040x", c), Module: fmt.Sprintf("m%03d", m), Job: "test",
				Arch: "amd64", Status: st, Author: "Ann", FirstSeen: int64(1000 + c), SortKey: id, Data: []byte(`{}`)}
			rows = append(rows, r)
			if m == 7 {
				last = r
			}
		}
		if err := db.Apply(ctx, "S", uint64(c+1), func(tx *Tx, _ uint64) error { return tx.Put(ctx, rows) }); err != nil {
			b.Fatal(err)
		}
	}
	cell := CellRef{"proj", "main", "m007", "test", "amd64"}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r, err := db.FirstFailing(ctx, cell, Cursor{last.FirstSeen, last.SortKey})
		if err != nil || r.FirstSeen != int64(1000+commits-500) {
			b.Fatalf("%v %+v", err, r)
		}
		if n, err := db.CommitsAfter(ctx, "proj", "main", r.Commit); err != nil || n != 499 {
			b.Fatalf("%d %v", n, err)
		}
	}
}
