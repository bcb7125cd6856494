package readmodel

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Row is one job's record as stored: the columns lists filter and order on,
// and the record itself (JSON) in Data.
type Row struct {
	JobID, Repo, Branch, Commit string
	Module, Job, Arch, Status   string
	Author, AuthorEmail         string
	Subject                     string
	// FirstSeen is when the job was first queued, in Unix nanoseconds (0:
	// unknown); FinishedAt when its current attempt ended (0: not yet).
	FirstSeen, FinishedAt int64
	// SortKey orders records first queued at the same time (unique: it
	// ends with the job id); lists are ordered by (FirstSeen, SortKey).
	SortKey string
	Data    []byte
	// Tests names the tests the record reports (not stored in the
	// record's row: each name is added to the cell's searchable names).
	Tests []string
}

// BadEvent is an event the fold could not use: recorded, never applied.
type BadEvent struct {
	Seq     uint64 `json:"seq"`
	Subject string `json:"subject"`
	Error   string `json:"error"`
	Data    []byte `json:"-"`
	At      int64  `json:"at"`
}

// Tx is one batch of the fold, inside one transaction.
type Tx struct {
	db *DB
	tx *sql.Tx
}

// Apply runs fold in one transaction together with moving the applied
// position of stream to last. fold gets the position already applied (by
// this or another reporter sharing the database) and must skip events at or
// below it. Two reporters on one Postgres database take turns: the
// position's row is locked for the transaction.
func (db *DB) Apply(ctx context.Context, stream string, last uint64, fold func(tx *Tx, applied uint64) error) error {
	tx, err := db.sql.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	lock := ""
	if db.dialect == Postgres {
		lock = " FOR UPDATE"
		// Make sure the row exists so that it can be locked.
		if _, err := tx.ExecContext(ctx, `INSERT INTO position (stream, seq) VALUES ($1, 0) ON CONFLICT (stream) DO NOTHING`, stream); err != nil {
			return err
		}
	}
	var applied uint64
	err = tx.QueryRowContext(ctx, db.q(`SELECT seq FROM position WHERE stream = ?`+lock), stream).Scan(&applied)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	if last <= applied {
		return nil // all of it is in already
	}
	if err := fold(&Tx{db: db, tx: tx}, applied); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, db.q(`INSERT INTO position (stream, seq) VALUES (?, ?)
		ON CONFLICT (stream) DO UPDATE SET seq = excluded.seq`), stream, last); err != nil {
		return err
	}
	return tx.Commit()
}

// Revise runs fold in one transaction that changes records without moving
// the applied position of stream (the fold judging again the events its
// records hold waiting). Like Apply, it takes its turn on the position's
// row with other reporters sharing a Postgres database.
func (db *DB) Revise(ctx context.Context, stream string, fold func(tx *Tx, applied uint64) error) error {
	tx, err := db.sql.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	lock := ""
	if db.dialect == Postgres {
		lock = " FOR UPDATE"
	}
	var applied uint64
	err = tx.QueryRowContext(ctx, db.q(`SELECT seq FROM position WHERE stream = ?`+lock), stream).Scan(&applied)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	if err := fold(&Tx{db: db, tx: tx}, applied); err != nil {
		return err
	}
	return tx.Commit()
}

// SetWaiting notes the jobs whose record now holds events waiting to be
// judged (wait), and those whose record no longer does (done).
func (t *Tx) SetWaiting(ctx context.Context, wait, done []string) error {
	for len(done) > 0 {
		n := min(500, len(done))
		args := make([]any, n)
		for i, id := range done[:n] {
			args[i] = id
		}
		if _, err := t.tx.ExecContext(ctx, t.db.q(`DELETE FROM waiting WHERE job_id IN (`+marks(n)+`)`), args...); err != nil {
			return err
		}
		done = done[n:]
	}
	args := make([]any, len(wait))
	for i, id := range wait {
		args[i] = id
	}
	return t.upsert(ctx, `INSERT INTO waiting (job_id)`, 1, `ON CONFLICT (job_id) DO NOTHING`, args)
}

// Waiting returns up to limit jobs whose record holds events waiting to be
// judged (see Tx.SetWaiting).
func (db *DB) Waiting(ctx context.Context, limit int) ([]string, error) {
	rows, err := db.sql.QueryContext(ctx, db.q(`SELECT job_id FROM waiting ORDER BY job_id LIMIT ?`), limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// Position returns the stream sequence applied last (0: none).
func (db *DB) Position(ctx context.Context, stream string) (uint64, error) {
	var seq uint64
	err := db.sql.QueryRowContext(ctx, db.q(`SELECT seq FROM position WHERE stream = ?`), stream).Scan(&seq)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return seq, err
}

// Load returns the stored records of the given jobs, by job id.
func (t *Tx) Load(ctx context.Context, ids []string) (map[string][]byte, error) {
	out := make(map[string][]byte, len(ids))
	const chunk = 500
	for len(ids) > 0 {
		n := min(chunk, len(ids))
		args := make([]any, n)
		for i, id := range ids[:n] {
			args[i] = id
		}
		rows, err := t.tx.QueryContext(ctx, t.db.q(`SELECT job_id, data FROM records WHERE job_id IN (`+marks(n)+`)`), args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var id string
			var data []byte
			if err := rows.Scan(&id, &data); err != nil {
				rows.Close()
				return nil, err
			}
			out[id] = data
		}
		if err := rows.Close(); err != nil {
			return nil, err
		}
		ids = ids[n:]
	}
	return out, nil
}

func marks(n int) string {
	return strings.TrimSuffix(strings.Repeat("?,", n), ",")
}

// Put stores records (at most one per job id), and updates the commits
// they belong to and the cells they are the latest of.
func (t *Tx) Put(ctx context.Context, rows []Row) error {
	if err := t.putRecords(ctx, rows); err != nil {
		return err
	}
	if err := t.putCommits(ctx, rows); err != nil {
		return err
	}
	if err := t.putTests(ctx, rows); err != nil {
		return err
	}
	return t.putCells(ctx, rows)
}

// putTests adds the test names of rows to their cells' names, each once.
func (t *Tx) putTests(ctx context.Context, rows []Row) error {
	type key struct{ repo, branch, module, job, arch, name string }
	seen := map[key]bool{}
	var args []any
	for _, r := range rows {
		for _, n := range r.Tests {
			k := key{r.Repo, r.Branch, r.Module, r.Job, r.Arch, n}
			if n == "" || seen[k] {
				continue
			}
			seen[k] = true
			args = append(args, k.repo, k.branch, k.module, k.job, k.arch, k.name)
		}
	}
	if len(args) == 0 {
		return nil
	}
	return t.upsert(ctx, `INSERT INTO test_names (repo, branch, module, job, arch, name)`, 6, `ON CONFLICT DO NOTHING`, args)
}

// upsert writes rows of n columns each, in statements of at most 100 rows.
func (t *Tx) upsert(ctx context.Context, head string, cols int, tail string, args []any) error {
	const perStmt = 100
	for len(args) > 0 {
		n := min(perStmt, len(args)/cols)
		row := "(" + marks(cols) + ")"
		stmt := head + " VALUES " + strings.TrimSuffix(strings.Repeat(row+",", n), ",") + " " + tail
		if _, err := t.tx.ExecContext(ctx, t.db.q(stmt), args[:n*cols]...); err != nil {
			return err
		}
		args = args[n*cols:]
	}
	return nil
}

func (t *Tx) putRecords(ctx context.Context, rows []Row) error {
	args := make([]any, 0, len(rows)*15)
	for _, r := range rows {
		args = append(args, r.JobID, r.Repo, r.Branch, r.Commit, r.Module, r.Job, r.Arch, r.Status,
			r.Author, r.AuthorEmail, r.Subject, r.FirstSeen, r.FinishedAt, r.SortKey, r.Data)
	}
	return t.upsert(ctx, `INSERT INTO records (job_id, repo, branch, commit_sha, module, job, arch, status,
		author, author_email, subject, first_seen, finished_at, sort_key, data)`, 15,
		`ON CONFLICT (job_id) DO UPDATE SET status = excluded.status, author = excluded.author,
		author_email = excluded.author_email, subject = excluded.subject, first_seen = excluded.first_seen,
		finished_at = excluded.finished_at, sort_key = excluded.sort_key, data = excluded.data`, args)
}

func (t *Tx) putCommits(ctx context.Context, rows []Row) error {
	type key struct{ repo, branch, commit string }
	type val struct {
		first                  int64
		subject, author, email string
	}
	by := map[key]val{}
	var order []key
	for _, r := range rows {
		k := key{r.Repo, r.Branch, r.Commit}
		v, ok := by[k]
		if !ok {
			order = append(order, k)
			v.first = r.FirstSeen
		} else if r.FirstSeen != 0 && (v.first == 0 || r.FirstSeen < v.first) {
			v.first = r.FirstSeen
		}
		if v.subject == "" {
			v.subject = r.Subject
		}
		if v.author == "" {
			v.author = r.Author
		}
		if v.email == "" {
			v.email = r.AuthorEmail
		}
		by[k] = v
	}
	args := make([]any, 0, len(order)*7)
	for _, k := range order {
		v := by[k]
		args = append(args, k.repo, k.branch, k.commit, v.first, v.subject, v.author, v.email)
	}
	return t.upsert(ctx, `INSERT INTO commits (repo, branch, commit_sha, first_seen, subject, author, author_email)`, 7,
		`ON CONFLICT (repo, branch, commit_sha) DO UPDATE SET
		first_seen = CASE WHEN commits.first_seen = 0 OR (excluded.first_seen <> 0 AND excluded.first_seen < commits.first_seen)
			THEN excluded.first_seen ELSE commits.first_seen END,
		subject = CASE WHEN commits.subject = '' THEN excluded.subject ELSE commits.subject END,
		author = CASE WHEN commits.author = '' THEN excluded.author ELSE commits.author END,
		author_email = CASE WHEN commits.author_email = '' THEN excluded.author_email ELSE commits.author_email END`, args)
}

func (t *Tx) putCells(ctx context.Context, rows []Row) error {
	type key struct{ repo, branch, module, job, arch string }
	type val struct {
		id    string
		first int64
	}
	by := map[key]val{}
	var order []key
	for _, r := range rows {
		k := key{r.Repo, r.Branch, r.Module, r.Job, r.Arch}
		v, ok := by[k]
		if !ok {
			order = append(order, k)
		}
		if !ok || r.FirstSeen >= v.first {
			by[k] = val{r.JobID, r.FirstSeen}
		}
	}
	args := make([]any, 0, len(order)*7)
	for _, k := range order {
		v := by[k]
		args = append(args, k.repo, k.branch, k.module, k.job, k.arch, v.id, v.first)
	}
	// The latest job of a cell is the one first queued last; a job seen
	// again (a re-check) keeps its place.
	return t.upsert(ctx, `INSERT INTO cells (repo, branch, module, job, arch, job_id, first_seen)`, 7,
		`ON CONFLICT (repo, branch, module, job, arch) DO UPDATE SET job_id = excluded.job_id, first_seen = excluded.first_seen
		WHERE excluded.first_seen >= cells.first_seen`, args)
}

// Bad records an event that is not applied.
func (t *Tx) Bad(ctx context.Context, e BadEvent) error {
	if e.At == 0 {
		e.At = time.Now().UnixNano()
	}
	_, err := t.tx.ExecContext(ctx, t.db.q(`INSERT INTO bad_events (seq, subject, error, data, at) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (seq) DO NOTHING`), int64(e.Seq), e.Subject, e.Error, e.Data, e.At)
	if err != nil {
		return fmt.Errorf("record bad event %d: %w", e.Seq, err)
	}
	return nil
}

// BadEvents returns the malformed events recorded, newest first, at most limit.
func (db *DB) BadEvents(ctx context.Context, limit int) ([]BadEvent, error) {
	rows, err := db.sql.QueryContext(ctx, db.q(`SELECT seq, subject, error, at FROM bad_events ORDER BY seq DESC LIMIT ?`), limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []BadEvent
	for rows.Next() {
		var e BadEvent
		if err := rows.Scan(&e.Seq, &e.Subject, &e.Error, &e.At); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// PruneBatch is how many records one transaction of Prune deletes: the
// fold, which writes to the same tables, waits for one batch at most.
const PruneBatch = 1000

// Prune deletes finished records that ended before t (retention), unless a
// record is still the latest of its cell, and the commits left without
// records. It deletes in transactions of at most PruneBatch records, oldest
// first, calling between (when set) after each; it returns how many records
// went. A page's cursor stays good: lists are keyed by (time, id), not by
// position.
func (db *DB) Prune(ctx context.Context, t time.Time, final []string, between func(ctx context.Context) error) (int64, error) {
	var total int64
	for {
		n, err := db.pruneBatch(ctx, t.UnixNano(), final, PruneBatch)
		total += n
		if err != nil || n < PruneBatch {
			return total, err
		}
		if between != nil {
			if err := between(ctx); err != nil {
				return total, err
			}
		}
	}
}

func (db *DB) pruneBatch(ctx context.Context, before int64, final []string, limit int) (int64, error) {
	tx, err := db.sql.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	args := []any{before}
	for _, s := range final {
		args = append(args, s)
	}
	// The oldest finished ones first, through records_finished; the cells'
	// latest records (a small table) stay.
	rows, err := tx.QueryContext(ctx, db.q(`SELECT job_id, repo, branch, commit_sha FROM records
		WHERE finished_at > 0 AND finished_at < ? AND status IN (`+marks(len(final))+`)
		AND job_id NOT IN (SELECT job_id FROM cells) ORDER BY finished_at LIMIT ?`), append(args, limit)...)
	if err != nil {
		return 0, err
	}
	type commit struct{ repo, branch, sha string }
	var ids []any
	var commits []commit
	seen := map[commit]bool{}
	for rows.Next() {
		var id string
		var c commit
		if err := rows.Scan(&id, &c.repo, &c.branch, &c.sha); err != nil {
			rows.Close()
			return 0, err
		}
		ids = append(ids, id)
		if !seen[c] {
			seen[c] = true
			commits = append(commits, c)
		}
	}
	if err := rows.Close(); err != nil {
		return 0, err
	}
	if len(ids) == 0 {
		return 0, nil
	}
	var n int64
	for chunk := range slices.Chunk(ids, 500) {
		// The conditions again: on PostgreSQL the fold may have changed a
		// record since (a re-check), and the delete sees its new version.
		del := append(slices.Clone(chunk), args...)
		res, err := tx.ExecContext(ctx, db.q(`DELETE FROM records WHERE job_id IN (`+marks(len(chunk))+`)
			AND finished_at > 0 AND finished_at < ? AND status IN (`+marks(len(final))+`)
			AND job_id NOT IN (SELECT job_id FROM cells)`), del...)
		if err != nil {
			return 0, err
		}
		k, _ := res.RowsAffected()
		n += k
		if _, err := tx.ExecContext(ctx, db.q(`DELETE FROM waiting WHERE job_id IN (`+marks(len(chunk))+`)`), chunk...); err != nil {
			return 0, err
		}
	}
	for _, c := range commits {
		if _, err := tx.ExecContext(ctx, db.q(`DELETE FROM commits WHERE repo = ? AND branch = ? AND commit_sha = ? AND NOT EXISTS
			(SELECT 1 FROM records r WHERE r.repo = commits.repo AND r.branch = commits.branch AND r.commit_sha = commits.commit_sha)`),
			c.repo, c.branch, c.sha); err != nil {
			return 0, err
		}
	}
	return n, tx.Commit()
}
