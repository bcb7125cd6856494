package readmodel

import (
	"bufio"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Filter selects records. Empty fields match everything.
type Filter struct {
	Repo, Branch string
	Commit       string // a prefix of the full sha (lower-case hex)
	Module, Job  string
	Arch         string
	Status       []string // any of these
	Author       string   // the author's name or mail, exactly
	Since, Until time.Time
	// Text searches commit subjects and authors (a substring, case-insensitive).
	Text string
}

// Cursor is a position in a list: the sort key of an item. Lists are
// ordered by (Time, ID); a page "after" a cursor continues the list, one
// "before" it goes back.
type Cursor struct {
	Time int64
	ID   string
}

// String encodes the cursor for a URL.
func (c Cursor) String() string {
	if c == (Cursor{}) {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(c.Time, 10) + "." + c.ID))
}

// End is a cursor after every item: "before=end" reads a list's last page.
var End = Cursor{Time: math.MaxInt64, ID: "\U0010FFFF"}

// ParseCursor decodes a cursor from String; "" is the zero cursor, "end"
// is End.
func ParseCursor(s string) (Cursor, error) {
	if s == "" {
		return Cursor{}, nil
	}
	if s == "end" {
		return End, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return Cursor{}, fmt.Errorf("bad cursor %q", s)
	}
	t, id, ok := strings.Cut(string(b), ".")
	n, err := strconv.ParseInt(t, 10, 64)
	if !ok || err != nil || id == "" || len(id) > 4096 {
		return Cursor{}, fmt.Errorf("bad cursor %q", s)
	}
	return Cursor{Time: n, ID: id}, nil
}

// Page asks for one page of a list: at most Limit items after After, or
// before Before (at most one of the two).
type Page struct {
	Limit         int
	After, Before Cursor
}

// Paged is what a list answer says about its neighbours: cursors for the
// page before and after it, when there are more items there.
type Paged struct {
	Prev, Next Cursor
}

// commitsFirst, when set (tests), replaces the bound of commitsBound.
var commitsFirst = -1

// commitsBound is how many commits a commit-level filter (text, author,
// commit prefix) may select for the records to be read commit by commit,
// through the records_commit index, and sorted; when it selects more, the
// list is read in its order (an index on time) keeping the records of those
// commits. With m of the T commits selected, N records (J = N/T a commit)
// and a page of L: commit by commit reads m·J records, the list's order
// about L·T/m (the records of the commits found are m/T of them); the first
// is the cheaper while m² ≤ L·T/J, and either then reads at most about
// √(L·N) records, whatever the filter.
func commitsBound(limit int, total, records int64) int {
	if commitsFirst >= 0 {
		return commitsFirst
	}
	j := max(float64(records)/float64(max(total, 1)), 1)
	return max(int(math.Sqrt(float64(limit)*float64(total)/j)), 8)
}

// records estimates how many records there are, without counting them.
func (db *DB) records(ctx context.Context) (int64, error) {
	var n int64
	if db.dialect == Postgres {
		// What the last ANALYZE (autovacuum's) saw; -1 before any.
		if err := db.queryRow(ctx, `SELECT reltuples::bigint FROM pg_class WHERE oid = 'records'::regclass`).Scan(&n); err != nil {
			return 0, err
		}
		if n >= 0 {
			return n, nil
		}
		err := db.queryRow(ctx, `SELECT count(*) FROM (SELECT 1 FROM records LIMIT 100000) s`).Scan(&n)
		return n, err
	}
	// The largest rowid: the records written, fewer those deleted last.
	err := db.queryRow(ctx, `SELECT COALESCE(max(rowid), 0) FROM records`).Scan(&n)
	return n, err
}

// where returns the condition on records that f makes; none says that no
// record can match (a commit-level filter selected no commit).
// table is what to select from: "records", with an index to use when the
// planner would not see it.
func (f Filter) where(ctx context.Context, db *DB, limit int) (cond string, args []any, table string, none bool, err error) {
	table = "records"
	var conds []string
	eq := func(col, v string) {
		if v != "" {
			conds = append(conds, col+" = ?")
			args = append(args, v)
		}
	}
	eq("repo", f.Repo)
	eq("branch", f.Branch)
	eq("module", f.Module)
	eq("job", f.Job)
	eq("arch", f.Arch)
	if len(f.Status) > 0 {
		// Known statuses inline, so that the planner sees when the partial
		// index of live records (records_live) covers them.
		var in []string
		for _, s := range f.Status {
			if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyz") == "" {
				in = append(in, "'"+s+"'")
			} else {
				in = append(in, "?")
				args = append(args, s)
			}
		}
		conds = append(conds, "status IN ("+strings.Join(in, ", ")+")")
	}
	if !f.Since.IsZero() {
		conds = append(conds, "first_seen >= ?")
		args = append(args, f.Since.UnixNano())
	}
	if !f.Until.IsZero() {
		conds = append(conds, "first_seen < ?")
		args = append(args, f.Until.UnixNano())
	}
	if f.Commit == "" && f.Author == "" && f.Text == "" {
		return strings.Join(conds, " AND "), args, table, false, nil
	}
	// The commit, author and text are the commit's: looked up in the
	// commits table, through its indexes, then the records of the commits
	// found.
	var cc []string
	var ca []any
	if f.Repo != "" {
		cc, ca = append(cc, "repo = ?"), append(ca, f.Repo)
	}
	if f.Branch != "" {
		cc, ca = append(cc, "branch = ?"), append(ca, f.Branch)
	}
	if f.Commit != "" {
		// The range uses the index (a hex prefix: "g" sorts after every
		// hex digit in any collation); LIKE keeps the prefix exact.
		if strings.Trim(f.Commit, "0123456789abcdef") == "" {
			cc = append(cc, `commit_sha >= ? AND commit_sha < ?`)
			ca = append(ca, f.Commit, f.Commit+"g")
		}
		cc = append(cc, `commit_sha LIKE ? ESCAPE '\'`)
		ca = append(ca, likeEscape(f.Commit)+"%")
	}
	if f.Author != "" {
		cc = append(cc, "(author = ? OR author_email = ?)")
		ca = append(ca, f.Author, f.Author)
	}
	if f.Text != "" {
		c, a := db.textCond(f.Text)
		cc, ca = append(cc, c), append(ca, a...)
	}
	commits := "FROM commits WHERE " + strings.Join(cc, " AND ")
	// How many commits the repo and branch filters leave (cc and ca start
	// with those two).
	scope, n0 := "SELECT count(*) FROM commits", 0
	for _, v := range []string{f.Repo, f.Branch} {
		if v != "" {
			n0++
		}
	}
	if n0 > 0 {
		scope += " WHERE " + strings.Join(cc[:n0], " AND ")
	}
	var total int64
	if err := db.queryRow(ctx, db.q(scope), ca[:n0]...).Scan(&total); err != nil {
		return "", nil, "", false, err
	}
	records, err := db.records(ctx)
	if err != nil {
		return "", nil, "", false, err
	}
	bound := commitsBound(limit, total, records)
	rows, err := db.query(ctx, db.q("SELECT repo, branch, commit_sha "+commits+" LIMIT ?"), append(slices.Clip(ca), bound+1)...)
	if err != nil {
		return "", nil, "", false, err
	}
	var repos, branches, shas []string
	n := 0
	for rows.Next() {
		var repo, branch, sha string
		if err := rows.Scan(&repo, &branch, &sha); err != nil {
			rows.Close()
			return "", nil, "", false, err
		}
		repos, branches, shas = appendNew(repos, repo), appendNew(branches, branch), appendNew(shas, sha)
		n++
	}
	if err := rows.Close(); err != nil {
		return "", nil, "", false, err
	}
	switch {
	case n == 0:
		return "", nil, "", true, nil
	case n <= bound:
		// A few commits: their records, through the records_commit index. A
		// commit's subject and author are the same on every branch, so the
		// product of repos, branches and shas selects no other commit.
		if db.dialect == SQLite {
			// Else SQLite may walk the whole branch in order (records_branch)
			// to spare itself sorting a few commits' records.
			table = "records INDEXED BY records_commit"
		}
		for i, vs := range [][]string{repos, branches, shas} {
			conds = append(conds, []string{"repo", "branch", "commit_sha"}[i]+" IN ("+marks(len(vs))+")")
			for _, v := range vs {
				args = append(args, v)
			}
		}
	default:
		plus := "+" // SQLite: no index for this term, the list's order leads
		if db.dialect == Postgres {
			plus = ""
		}
		conds = append(conds, plus+"commit_sha IN (SELECT commit_sha "+commits+")")
		args = append(args, ca...)
	}
	return strings.Join(conds, " AND "), args, table, false, nil
}

func appendNew(s []string, v string) []string {
	if slices.Contains(s, v) {
		return s
	}
	return append(s, v)
}

// textCond is the condition on commits that their subject, author name or
// mail holds text, ignoring case, through the trigram index of schema 4:
// FTS5 on SQLite, pg_trgm on PostgreSQL. On SQLite, text shorter than three
// characters (no whole trigram) reads the commits table instead, and ignores
// the case of ASCII letters only.
func (db *DB) textCond(text string) (string, []any) {
	if db.dialect == SQLite && utf8.RuneCountInString(text) >= 3 {
		// One phrase, in those columns: a phrase of trigrams is a substring.
		return `(repo, branch, commit_sha) IN (SELECT repo, branch, commit_sha FROM commits_text WHERE commits_text MATCH ?)`,
			[]any{`{subject author author_email} : "` + strings.ReplaceAll(text, `"`, `""`) + `"`}
	}
	like := "LIKE"
	if db.dialect == Postgres {
		like = "ILIKE" // SQLite's LIKE ignores ASCII case already
	}
	p := "%" + likeEscape(text) + "%"
	return fmt.Sprintf(`(subject %[1]s ? ESCAPE '\' OR author %[1]s ? ESCAPE '\' OR author_email %[1]s ? ESCAPE '\')`, like),
		[]any{p, p, p}
}

func likeEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}

// page runs a keyset-paged query: base selects from table with where;
// (timeCol, idCol) order the list, ascending when asc.
func (db *DB) page(ctx context.Context, cols, table, where string, args []any, timeCol, idCol string, asc bool, p Page,
	scan func(*sql.Rows) (Cursor, error)) (Paged, error) {
	if p.Limit <= 0 {
		return Paged{}, errors.New("readmodel: a page needs a limit")
	}
	conds := []string{}
	if where != "" {
		conds = append(conds, where)
	}
	fwd := p.Before == (Cursor{}) // going forward in the list's order
	if fwd && p.After != (Cursor{}) {
		op := ">"
		if !asc {
			op = "<"
		}
		conds = append(conds, fmt.Sprintf("(%s, %s) %s (?, ?)", timeCol, idCol, op))
		args = append(args, p.After.Time, p.After.ID)
	}
	if !fwd && p.Before != End { // before the end: the last page, no bound
		op := "<"
		if !asc {
			op = ">"
		}
		conds = append(conds, fmt.Sprintf("(%s, %s) %s (?, ?)", timeCol, idCol, op))
		args = append(args, p.Before.Time, p.Before.ID)
	}
	dir := "ASC"
	if asc != fwd {
		dir = "DESC"
	}
	stmt := "SELECT " + cols + " FROM " + table
	if len(conds) > 0 {
		stmt += " WHERE " + strings.Join(conds, " AND ")
	}
	stmt += fmt.Sprintf(" ORDER BY %s %s, %s %s LIMIT ?", timeCol, dir, idCol, dir)
	args = append(args, p.Limit+1)
	rows, err := db.query(ctx, db.q(stmt), args...)
	if err != nil {
		return Paged{}, err
	}
	defer rows.Close()
	var keys []Cursor
	for rows.Next() {
		k, err := scan(rows)
		if err != nil {
			return Paged{}, err
		}
		keys = append(keys, k)
	}
	if err := rows.Err(); err != nil {
		return Paged{}, err
	}
	more := len(keys) > p.Limit
	if more {
		keys = keys[:p.Limit]
	}
	var pg Paged
	if len(keys) == 0 {
		return pg, nil
	}
	if fwd {
		if more {
			pg.Next = keys[len(keys)-1]
		}
		if p.After != (Cursor{}) {
			pg.Prev = keys[0]
		}
	} else {
		// Read backwards: the caller reverses its items; keys[0] is the
		// newest in list order.
		pg.Next = keys[0]
		if more {
			pg.Prev = keys[len(keys)-1]
		}
	}
	return pg, nil
}

const recordCols = "job_id, repo, branch, commit_sha, module, job, arch, status, author, author_email, subject, first_seen, finished_at, sort_key, data"

func scanRow(rows interface{ Scan(...any) error }) (Row, error) {
	var r Row
	err := rows.Scan(&r.JobID, &r.Repo, &r.Branch, &r.Commit, &r.Module, &r.Job, &r.Arch, &r.Status,
		&r.Author, &r.AuthorEmail, &r.Subject, &r.FirstSeen, &r.FinishedAt, &r.SortKey, &r.Data)
	return r, err
}

// Records returns one page of the records f selects, ordered by when they
// were first queued (oldest first), then job id.
func (db *DB) Records(ctx context.Context, f Filter, p Page) ([]Row, Paged, error) {
	where, args, table, none, err := f.where(ctx, db, p.Limit)
	if err != nil || none {
		return nil, Paged{}, err
	}
	var out []Row
	pg, err := db.page(ctx, recordCols, table, where, args, "first_seen", "sort_key", true, p, func(rows *sql.Rows) (Cursor, error) {
		r, err := scanRow(rows)
		if err != nil {
			return Cursor{}, err
		}
		if len(out) < p.Limit {
			out = append(out, r)
		}
		return Cursor{r.FirstSeen, r.SortKey}, nil
	})
	if p.Before != (Cursor{}) {
		slices.Reverse(out)
	}
	return out, pg, err
}

// query and queryRow run the lists' queries, telling Trace of them.
func (db *DB) query(ctx context.Context, stmt string, args ...any) (*sql.Rows, error) {
	if db.Trace != nil {
		db.Trace(stmt, args)
	}
	return db.sql.QueryContext(ctx, stmt, args...)
}

func (db *DB) queryRow(ctx context.Context, stmt string, args ...any) *sql.Row {
	if db.Trace != nil {
		db.Trace(stmt, args)
	}
	return db.sql.QueryRowContext(ctx, stmt, args...)
}

// Explain returns the database's plan for a statement (as Trace gives it):
// EXPLAIN QUERY PLAN on SQLite, EXPLAIN on PostgreSQL, one line a step.
func (db *DB) Explain(ctx context.Context, stmt string, args ...any) (string, error) {
	prefix := "EXPLAIN QUERY PLAN "
	if db.dialect == Postgres {
		prefix = "EXPLAIN "
	}
	rows, err := db.sql.QueryContext(ctx, prefix+stmt, args...)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var b strings.Builder
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return "", err
		}
		// SQLite: id, parent, notused, detail; PostgreSQL: one text column.
		fmt.Fprintf(&b, "%v\n", vals[len(vals)-1])
	}
	return b.String(), rows.Err()
}

// ErrNotFound is returned for a job no record has.
var ErrNotFound = errors.New("not found")

// Job returns the record of one job.
func (db *DB) Job(ctx context.Context, id string) (Row, error) {
	r, err := scanRow(db.queryRow(ctx, db.q(`SELECT `+recordCols+` FROM records WHERE job_id = ?`), id))
	if errors.Is(err, sql.ErrNoRows) {
		return r, ErrNotFound
	}
	return r, err
}

// CommitRow is one commit of a branch.
type CommitRow struct {
	Repo, Branch, Commit string
	FirstSeen            int64
	Subject, Author      string
}

// Commits returns one page of a branch's commits, newest first (a page
// "after" a cursor is older). prefix, when set, selects commits whose sha
// starts with it.
func (db *DB) Commits(ctx context.Context, repo, branch, prefix string, p Page) ([]CommitRow, Paged, error) {
	where := "repo = ? AND branch = ?"
	args := []any{repo, branch}
	if prefix != "" {
		where += " AND commit_sha LIKE ?"
		args = append(args, likeEscape(prefix)+"%")
	}
	var out []CommitRow
	pg, err := db.page(ctx, "repo, branch, commit_sha, first_seen, subject, author", "commits", where, args,
		"first_seen", "commit_sha", false, p, func(rows *sql.Rows) (Cursor, error) {
			var c CommitRow
			if err := rows.Scan(&c.Repo, &c.Branch, &c.Commit, &c.FirstSeen, &c.Subject, &c.Author); err != nil {
				return Cursor{}, err
			}
			if len(out) < p.Limit {
				out = append(out, c)
			}
			return Cursor{c.FirstSeen, c.Commit}, nil
		})
	if p.Before != (Cursor{}) {
		slices.Reverse(out)
	}
	return out, pg, err
}

// CommitJobs returns the records of the given commits of a branch.
func (db *DB) CommitJobs(ctx context.Context, repo, branch string, shas []string) ([]Row, error) {
	if len(shas) == 0 {
		return nil, nil
	}
	args := []any{repo, branch}
	for _, s := range shas {
		args = append(args, s)
	}
	return db.rows(ctx, `SELECT `+recordCols+` FROM records WHERE repo = ? AND branch = ? AND commit_sha IN (`+marks(len(shas))+`)`, args...)
}

func (db *DB) rows(ctx context.Context, stmt string, args ...any) ([]Row, error) {
	rows, err := db.query(ctx, db.q(stmt), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Row
	for rows.Next() {
		r, err := scanRow(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// BranchRow is one branch jetci has records of.
type BranchRow struct{ Repo, Branch string }

// Branches returns the branches of repo (every repo's when ""), by repo and
// branch name.
func (db *DB) Branches(ctx context.Context, repo string) ([]BranchRow, error) {
	stmt := `SELECT DISTINCT repo, branch FROM cells`
	var args []any
	if repo != "" {
		stmt += ` WHERE repo = ?`
		args = append(args, repo)
	}
	rows, err := db.query(ctx, db.q(stmt+` ORDER BY repo, branch`), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []BranchRow
	for rows.Next() {
		var b BranchRow
		if err := rows.Scan(&b.Repo, &b.Branch); err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, rows.Err()
}

// Cells returns the latest record of every module × job × arch of a branch.
func (db *DB) Cells(ctx context.Context, repo, branch string) ([]Row, error) {
	return db.rows(ctx, `SELECT r.job_id, r.repo, r.branch, r.commit_sha, r.module, r.job, r.arch, r.status, r.author,
		r.author_email, r.subject, r.first_seen, r.finished_at, r.sort_key, r.data
		FROM cells c JOIN records r ON r.job_id = c.job_id WHERE c.repo = ? AND c.branch = ?`, repo, branch)
}

// Head returns the newest commit of a branch.
func (db *DB) Head(ctx context.Context, repo, branch string) (CommitRow, error) {
	var c CommitRow
	err := db.queryRow(ctx, db.q(`SELECT repo, branch, commit_sha, first_seen, subject, author FROM commits
		WHERE repo = ? AND branch = ? ORDER BY first_seen DESC, commit_sha DESC LIMIT 1`), repo, branch).
		Scan(&c.Repo, &c.Branch, &c.Commit, &c.FirstSeen, &c.Subject, &c.Author)
	if errors.Is(err, sql.ErrNoRows) {
		return c, ErrNotFound
	}
	return c, err
}

// Live returns the records of jobs queued, running or held, by when they
// were first queued: as many as jobs wait or run, not history.
func (db *DB) Live(ctx context.Context) ([]Row, error) {
	return db.rows(ctx, `SELECT `+recordCols+` FROM records WHERE status IN ('queued', 'running', 'held') ORDER BY first_seen, sort_key`)
}

// Count returns how many records there are.
func (db *DB) Count(ctx context.Context) (int64, error) {
	var n int64
	err := db.sql.QueryRowContext(ctx, `SELECT COUNT(*) FROM records`).Scan(&n)
	return n, err
}

// Dump returns every table's rows in a fixed order, as text: two read
// models that agree dump the same (tests compare a rebuild with the live one).
func (db *DB) Dump(ctx context.Context) (string, error) {
	var b strings.Builder
	err := db.dump(ctx, &b)
	return b.String(), err
}

// Digest is a SHA-256 of Dump, read a row at a time: it compares read
// models of any size.
func (db *DB) Digest(ctx context.Context) (string, error) {
	h := sha256.New()
	w := bufio.NewWriterSize(h, 1<<16)
	if err := db.dump(ctx, w); err != nil {
		return "", err
	}
	if err := w.Flush(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func (db *DB) dump(ctx context.Context, b io.Writer) error {
	for _, q := range []string{
		`SELECT ` + recordCols + ` FROM records ORDER BY job_id`,
	} {
		rows, err := db.sql.QueryContext(ctx, q)
		if err != nil {
			return err
		}
		for rows.Next() {
			r, err := scanRow(rows)
			if err != nil {
				rows.Close()
				return err
			}
			fmt.Fprintf(b, "record %s %s %s %s %s %s %s %s %q %q %q %d %d %q %s\n", r.JobID, r.Repo, r.Branch, r.Commit, r.Module, r.Job,
				r.Arch, r.Status, r.Author, r.AuthorEmail, r.Subject, r.FirstSeen, r.FinishedAt, r.SortKey, r.Data)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
	}
	for _, q := range []string{
		`SELECT repo || ' ' || branch || ' ' || commit_sha || ' ' || first_seen || ' ' || subject || ' ' || author || ' ' || author_email FROM commits ORDER BY repo, branch, commit_sha`,
		`SELECT repo || ' ' || branch || ' ' || module || ' ' || job || ' ' || arch || ' ' || job_id || ' ' || first_seen FROM cells ORDER BY repo, branch, module, job, arch`,
	} {
		rows, err := db.sql.QueryContext(ctx, q)
		if err != nil {
			return err
		}
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				rows.Close()
				return err
			}
			io.WriteString(b, s+"\n")
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
	}
	return nil
}
