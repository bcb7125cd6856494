package readmodel

import (
	"context"
	"database/sql"
	"errors"
)

// CellRef names one cell: a module × job × arch of a branch.
type CellRef struct{ Repo, Branch, Module, Job, Arch string }

// FirstFailing returns the record where a cell's current failing streak
// began: the oldest failed or error record after the newest passed record
// before at (the cell's record whose streak is asked about, by first_seen
// and sort key, itself included). Records neither passed nor failing
// (cancelled, waiting, running) neither begin nor end a streak. It is
// ErrNotFound when no failing record is there.
//
// Each step is one seek of the records_cell index: the last pass, then the
// first failure after it (once per failing status), whatever the history.
func (db *DB) FirstFailing(ctx context.Context, c CellRef, at Cursor) (Row, error) {
	cell := []any{c.Repo, c.Branch, c.Module, c.Job, c.Arch}
	// SQLite, without statistics, may take records_branch (a range of the
	// branch's whole history since the last pass): name the index.
	from := "records"
	if db.dialect == SQLite {
		from = "records INDEXED BY records_cell"
	}
	const where = `repo = ? AND branch = ? AND module = ? AND job = ? AND arch = ? AND status = ?`
	var pass Cursor
	err := db.sql.QueryRowContext(ctx, db.q(`SELECT first_seen, sort_key FROM `+from+` WHERE `+where+
		` AND (first_seen, sort_key) <= (?, ?) ORDER BY first_seen DESC, sort_key DESC LIMIT 1`),
		append(cell, "passed", at.Time, at.ID)...).Scan(&pass.Time, &pass.ID)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return Row{}, err
	}
	var first Row
	found := false
	for _, st := range []string{"failed", "error"} {
		args := append(append([]any{}, cell...), st)
		stmt := `SELECT ` + recordCols + ` FROM ` + from + ` WHERE ` + where + ` AND (first_seen, sort_key) <= (?, ?)`
		args = append(args, at.Time, at.ID)
		if pass != (Cursor{}) {
			stmt += ` AND (first_seen, sort_key) > (?, ?)`
			args = append(args, pass.Time, pass.ID)
		}
		r, err := scanRow(db.sql.QueryRowContext(ctx, db.q(stmt+` ORDER BY first_seen, sort_key LIMIT 1`), args...))
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return Row{}, err
		}
		if !found || r.FirstSeen < first.FirstSeen || r.FirstSeen == first.FirstSeen && r.SortKey < first.SortKey {
			first, found = r, true
		}
	}
	if !found {
		return Row{}, ErrNotFound
	}
	return first, nil
}

// CommitsAfter counts the commits of a branch first seen after commit (the
// branch's newer commits): how many commits ago it was. It is a range of
// the commits_time index.
func (db *DB) CommitsAfter(ctx context.Context, repo, branch, commit string) (int, error) {
	var first int64
	err := db.sql.QueryRowContext(ctx, db.q(`SELECT first_seen FROM commits WHERE repo = ? AND branch = ? AND commit_sha = ?`),
		repo, branch, commit).Scan(&first)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, ErrNotFound
	}
	if err != nil {
		return 0, err
	}
	n := 0
	err = db.sql.QueryRowContext(ctx, db.q(`SELECT COUNT(*) FROM commits WHERE repo = ? AND branch = ? AND (first_seen, commit_sha) > (?, ?)`),
		repo, branch, first, commit).Scan(&n)
	return n, err
}
