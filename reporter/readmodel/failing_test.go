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
