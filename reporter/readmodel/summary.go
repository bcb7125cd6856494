package readmodel

import (
	"context"
	"database/sql"
	"strings"
	"unicode/utf8"
)

// This file holds the queries of the pages that sum a branch up rather
// than list it: how many jobs of each commit have each status, and only the
// jobs a reader must see (failing, running, waiting), so that a commit of
// 1,500 jobs costs a page a few rows.

// StatusCount is how many jobs of one commit have one status, the earliest
// first_seen and the latest finished_at among them (Unix ns; 0: none).
type StatusCount struct {
	Commit, Status  string
	N               int
	FirstSeen, Last int64
}

// CommitCounts counts the jobs of the given commits of a branch by status.
func (db *DB) CommitCounts(ctx context.Context, repo, branch string, shas []string) ([]StatusCount, error) {
	if len(shas) == 0 {
		return nil, nil
	}
	args := []any{repo, branch}
	for _, s := range shas {
		args = append(args, s)
	}
	rows, err := db.query(ctx, db.q(`SELECT commit_sha, status, COUNT(*), MIN(first_seen), MAX(finished_at) FROM records
		WHERE repo = ? AND branch = ? AND commit_sha IN (`+marks(len(shas))+`) GROUP BY commit_sha, status`), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []StatusCount
	for rows.Next() {
		var c StatusCount
		if err := rows.Scan(&c.Commit, &c.Status, &c.N, &c.FirstSeen, &c.Last); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// CommitJobsOf returns at most limit records of the given commits of a
// branch: those with one of statuses (none: any), and only jobs of no
// module when noModule is set; ordered by commit, module, job and arch.
func (db *DB) CommitJobsOf(ctx context.Context, repo, branch string, shas, statuses []string, noModule bool, limit int) ([]Row, error) {
	if len(shas) == 0 {
		return nil, nil
	}
	conds := []string{"repo = ?", "branch = ?", "commit_sha IN (" + marks(len(shas)) + ")"}
	args := []any{repo, branch}
	for _, s := range shas {
		args = append(args, s)
	}
	if len(statuses) > 0 {
		conds = append(conds, "status IN ("+marks(len(statuses))+")")
		for _, s := range statuses {
			args = append(args, s)
		}
	}
	if noModule {
		conds = append(conds, "module = ''")
	}
	args = append(args, limit)
	table := "records"
	if db.dialect == SQLite {
		// Else SQLite walks the branch's records_cell index for its order
		// (module, job, arch), reading every record of the branch to find
		// one commit's: the commit's index entries are at most a few
		// thousand, checked on the index alone, and the few found sorted.
		table = "records INDEXED BY records_commit"
	}
	return db.rows(ctx, `SELECT `+recordCols+` FROM `+table+` WHERE `+strings.Join(conds, " AND ")+
		` ORDER BY commit_sha, module, job, arch LIMIT ?`, args...)
}

// TestName is a test some cell (repo, branch, module, job, arch) reported,
// and the cell's latest job (JobID; "" when the cell has none).
type TestName struct {
	Repo, Branch, Module, Job, Arch, Name string
	JobID                                 string
}

// MinTestSearch is the shortest text TestNames looks for: a trigram.
const MinTestSearch = 3

// TestNames returns at most limit tests whose name holds text, ignoring
// case, through the trigram index of schema 6 (FTS5 on SQLite, pg_trgm on
// PostgreSQL); none for text shorter than MinTestSearch characters. The
// first limit found, in no order: the caller sorts them.
func (db *DB) TestNames(ctx context.Context, text string, limit int) ([]TestName, error) {
	if utf8.RuneCountInString(text) < MinTestSearch {
		return nil, nil
	}
	var stmt string
	var arg any
	if db.dialect == SQLite {
		// One phrase of trigrams: a substring of the name.
		stmt = `SELECT t.repo, t.branch, t.module, t.job, t.arch, t.name, COALESCE(c.job_id, '') FROM
			(SELECT repo, branch, module, job, arch, name FROM test_names_text WHERE test_names_text MATCH ? LIMIT ?) t
			LEFT JOIN cells c ON c.repo = t.repo AND c.branch = t.branch AND c.module = t.module AND c.job = t.job AND c.arch = t.arch`
		arg = `name : "` + strings.ReplaceAll(text, `"`, `""`) + `"`
	} else {
		stmt = `SELECT t.repo, t.branch, t.module, t.job, t.arch, t.name, COALESCE(c.job_id, '') FROM
			(SELECT repo, branch, module, job, arch, name FROM test_names WHERE name ILIKE ? ESCAPE '\' LIMIT ?) t
			LEFT JOIN cells c ON c.repo = t.repo AND c.branch = t.branch AND c.module = t.module AND c.job = t.job AND c.arch = t.arch`
		arg = "%" + likeEscape(text) + "%"
	}
	var rows *sql.Rows
	var err error
	if db.dialect == Postgres {
		// Under a LIMIT the planner reads the table in order whenever it
		// expects matches to come soon; a name found only at the end of a
		// million (measured: 3.5 s at 1.5 million names) is then a whole
		// scan. Without that plan: the trigram index for rare text (18 ms
		// there), the primary key's order for text in most names (2 ms).
		var tx *sql.Tx
		if tx, err = db.sql.BeginTx(ctx, &sql.TxOptions{ReadOnly: true}); err != nil {
			return nil, err
		}
		defer tx.Rollback()
		if _, err = tx.ExecContext(ctx, `SET LOCAL enable_seqscan = off`); err != nil {
			return nil, err
		}
		if db.Trace != nil {
			db.Trace(db.q(stmt), []any{arg, limit})
		}
		rows, err = tx.QueryContext(ctx, db.q(stmt), arg, limit)
	} else {
		rows, err = db.query(ctx, db.q(stmt), arg, limit)
	}
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []TestName
	for rows.Next() {
		var n TestName
		if err := rows.Scan(&n.Repo, &n.Branch, &n.Module, &n.Job, &n.Arch, &n.Name, &n.JobID); err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, rows.Err()
}

// CommitsJobsOf returns, for each of the given commits of a branch, its
// first per records (by module, job and arch) with one of statuses, in one
// query: the records are chosen in the records_commit index (a row number
// per commit) and only those chosen are read. Ordered by commit, module,
// job and arch.
func (db *DB) CommitsJobsOf(ctx context.Context, repo, branch string, shas, statuses []string, per int) ([]Row, error) {
	if len(shas) == 0 || len(statuses) == 0 {
		return nil, nil
	}
	args := []any{repo, branch}
	for _, s := range shas {
		args = append(args, s)
	}
	for _, s := range statuses {
		args = append(args, s)
	}
	args = append(args, per)
	key, table := "job_id", "records"
	if db.dialect == SQLite {
		// The rowid is in every index entry: the choice reads the index alone.
		key, table = "rowid", "records INDEXED BY records_commit"
	}
	return db.rows(ctx, `SELECT `+recordCols+` FROM records WHERE `+key+` IN (
		SELECT k FROM (SELECT `+key+` AS k, ROW_NUMBER() OVER (PARTITION BY commit_sha ORDER BY module, job, arch) AS rn
			FROM `+table+` WHERE repo = ? AND branch = ? AND commit_sha IN (`+marks(len(shas))+`) AND status IN (`+marks(len(statuses))+`)) chosen
		WHERE rn <= ?)
		ORDER BY commit_sha, module, job, arch`, args...)
}
