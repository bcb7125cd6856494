// Package readmodel is the reporter's read model: every job record, the
// commits of every branch and the latest cell of every module × job × arch, in
// a SQL database with indexes, so that a page, an API answer or `jetci
// results` reads what it shows and no more, whatever the history.
//
// Two backends share one code path through database/sql: an embedded SQLite
// file (modernc.org/sqlite, pure Go) and PostgreSQL (pgx's stdlib adapter),
// which several reporters may share. The SQL differs only in placeholders
// ("?" against "$n") and in the type of the record column.
//
// JetStream stays the source of truth: Apply writes a batch of folded
// records together with the stream sequence of the last event in it, in one
// transaction, so a restart resumes after the last applied event and a batch
// is applied whole or not at all. The database can be dropped and rebuilt
// from the streams (Reset).
//
// This package knows records only as rows: indexed columns and the record's
// JSON. Folding events into records is the reporter's (reporter/record.go).
package readmodel

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	_ "modernc.org/sqlite"             // database/sql driver "sqlite"
)

// Dialect names a backend.
type Dialect string

const (
	SQLite   Dialect = "sqlite"
	Postgres Dialect = "postgres"
)

// DB is an open read model.
type DB struct {
	sql     *sql.DB
	dialect Dialect
	// where names the database for messages: the SQLite file, or the
	// Postgres URL without its password.
	where string
	// Trace, when set, hears of every list query before it runs (the
	// statement as sent, and its arguments): benchmarks explain them.
	Trace func(stmt string, args []any)
}

// ErrCorrupt says the SQLite file is not a database jetci can use.
var ErrCorrupt = errors.New("the read model database is unusable")

// IsPostgres says whether dsn names a PostgreSQL database rather than a file.
func IsPostgres(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// Open opens (creating it if needed) the read model at dsn: a postgres://
// URL, or the path of a SQLite file. It migrates an older schema. A file that
// is not a database, or cannot be written, is an error naming the file and
// the way out (jetci reindex).
func Open(ctx context.Context, dsn string) (*DB, error) {
	db, err := openRaw(ctx, dsn)
	if err != nil {
		return nil, err
	}
	err = db.migrate(ctx)
	if err == nil && db.dialect == SQLite {
		// A file that reads but cannot be written fails here, not in the fold.
		_, err = db.sql.ExecContext(ctx, `UPDATE schema_version SET version = version`)
	}
	if err != nil {
		db.sql.Close()
		if db.dialect == SQLite {
			return nil, fmt.Errorf("%w: %s: %v (stop the reporter, then remove the file or run `jetci reindex`, which rebuilds it from the streams)",
				ErrCorrupt, db.where, err)
		}
		return nil, fmt.Errorf("read model %s: %w", db.where, err)
	}
	return db, nil
}

// openRaw opens the database without looking at its schema.
func openRaw(ctx context.Context, dsn string) (*DB, error) {
	if IsPostgres(dsn) {
		s, err := sql.Open("pgx", dsn)
		if err != nil {
			return nil, fmt.Errorf("read model %s: %w", redact(dsn), err)
		}
		s.SetMaxOpenConns(8)
		s.SetConnMaxIdleTime(time.Minute)
		return &DB{sql: s, dialect: Postgres, where: redact(dsn)}, nil
	}
	path := dsn
	if path == "" {
		return nil, errors.New("readmodel: no database file")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("read model %s: %w", path, err)
	}
	// WAL: readers do not wait for the fold. Writers take the lock at
	// BEGIN (immediate), so two processes on one file take turns.
	s, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("read model %s: %w", path, err)
	}
	s.SetMaxOpenConns(4)
	return &DB{sql: s, dialect: SQLite, where: path}, nil
}

// redact drops the password of a URL, for messages.
func redact(dsn string) string {
	at := strings.LastIndexByte(dsn, '@')
	scheme := strings.Index(dsn, "://")
	if at < 0 || scheme < 0 {
		return dsn
	}
	user := dsn[scheme+3 : at]
	if i := strings.IndexByte(user, ':'); i >= 0 {
		user = user[:i] + ":xxx"
	}
	return dsn[:scheme+3] + user + dsn[at:]
}

// Close closes the database.
func (db *DB) Close() error { return db.sql.Close() }

// Dialect is the backend.
func (db *DB) Dialect() Dialect { return db.dialect }

// Where names the database (the file, or the URL without its password).
func (db *DB) Where() string { return db.where }

// Ping checks that the database answers (for /healthz).
func (db *DB) Ping(ctx context.Context) error { return db.sql.PingContext(ctx) }

// q rewrites "?" placeholders to "$n" for Postgres.
func (db *DB) q(s string) string {
	if db.dialect != Postgres {
		return s
	}
	var b strings.Builder
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// SchemaVersion is the version this code writes.
const SchemaVersion = 6

// migrations[i] takes a database from version i to i+1. A database is
// brought to SchemaVersion on Open; never edit a released step, add one.
var migrations = []func(d Dialect) []string{
	// 0 → 1: records, commits, cells, the applied position.
	func(d Dialect) []string {
		blob := "BLOB"
		if d == Postgres {
			blob = "BYTEA"
		}
		return []string{
			`CREATE TABLE position (stream TEXT PRIMARY KEY, seq BIGINT NOT NULL)`,
			`CREATE TABLE records (
				job_id TEXT PRIMARY KEY,
				repo TEXT NOT NULL, branch TEXT NOT NULL, commit_sha TEXT NOT NULL,
				module TEXT NOT NULL, job TEXT NOT NULL, arch TEXT NOT NULL,
				status TEXT NOT NULL, author TEXT NOT NULL, subject TEXT NOT NULL,
				first_seen BIGINT NOT NULL, finished_at BIGINT NOT NULL,
				sort_key TEXT NOT NULL,
				data ` + blob + ` NOT NULL)`,
			`CREATE INDEX records_time ON records (first_seen, sort_key)`,
			`CREATE INDEX records_branch ON records (repo, branch, first_seen, sort_key)`,
			`CREATE INDEX records_commit ON records (repo, branch, commit_sha)`,
			// Only live records by status: nearly every record is final, and an
			// index on every status would lead the planner to sort the whole
			// history for a page of final ones.
			`CREATE INDEX records_live ON records (first_seen, sort_key) WHERE status IN ('queued', 'running', 'held')`,
			`CREATE TABLE commits (
				repo TEXT NOT NULL, branch TEXT NOT NULL, commit_sha TEXT NOT NULL,
				first_seen BIGINT NOT NULL, subject TEXT NOT NULL, author TEXT NOT NULL,
				PRIMARY KEY (repo, branch, commit_sha))`,
			`CREATE INDEX commits_time ON commits (repo, branch, first_seen, commit_sha)`,
			`CREATE TABLE cells (
				repo TEXT NOT NULL, branch TEXT NOT NULL, module TEXT NOT NULL, job TEXT NOT NULL, arch TEXT NOT NULL,
				job_id TEXT NOT NULL, first_seen BIGINT NOT NULL,
				PRIMARY KEY (repo, branch, module, job, arch))`,
		}
	},
	// 1 → 2: malformed events are kept (never applied); the author's mail
	// is searchable; finished records by time for retention.
	func(d Dialect) []string {
		blob := "BLOB"
		if d == Postgres {
			blob = "BYTEA"
		}
		return []string{
			`CREATE TABLE bad_events (seq BIGINT PRIMARY KEY, subject TEXT NOT NULL, error TEXT NOT NULL, data ` + blob + ` NOT NULL, at BIGINT NOT NULL)`,
			`ALTER TABLE records ADD COLUMN author_email TEXT NOT NULL DEFAULT ''`,
			`CREATE INDEX records_finished ON records (finished_at)`,
		}
	},
	// 2 → 3: the jobs whose record holds runner events waiting to be judged
	// (a claim on a delivery a live run held), looked at again when leases
	// change rather than only when their record does.
	func(d Dialect) []string {
		return []string{`CREATE TABLE waiting (job_id TEXT PRIMARY KEY)`}
	},
	// 3 → 4: the commit's subject, author and mail are searched (q=), and
	// the author and a commit prefix looked up, on the commits (a branch's
	// commit is one row however many jobs it has) through indexes. Text by
	// trigrams: SQLite's FTS5 trigram tokenizer in a table kept by
	// triggers, PostgreSQL's pg_trgm in a GIN index; a substring of three
	// characters or more is then found without reading every commit.
	func(d Dialect) []string {
		stmts := []string{
			`ALTER TABLE commits ADD COLUMN author_email TEXT NOT NULL DEFAULT ''`,
			`UPDATE commits SET author_email = COALESCE((SELECT r.author_email FROM records r
				WHERE r.repo = commits.repo AND r.branch = commits.branch AND r.commit_sha = commits.commit_sha
				AND r.author_email <> '' LIMIT 1), '')`,
			// A module's history (module=, with or without job and arch),
			// which is too thin in the list's order for a page to fill soon.
			`CREATE INDEX records_module ON records (module, first_seen, sort_key)`,
			// A commit prefix or an author without a branch.
			`CREATE INDEX commits_sha ON commits (commit_sha)`,
			`CREATE INDEX commits_author ON commits (author)`,
			`CREATE INDEX commits_email ON commits (author_email)`,
		}
		if d == Postgres {
			// pg_trgm ships with PostgreSQL (Debian: postgresql-contrib,
			// part of postgresql-NN) and is a trusted extension: the
			// database's owner may create it. Where it cannot be, the search
			// reads the commits table (still not the records).
			return append(stmts, `DO $$
			BEGIN
				CREATE EXTENSION IF NOT EXISTS pg_trgm;
				CREATE INDEX commits_text ON commits USING gin (subject gin_trgm_ops, author gin_trgm_ops, author_email gin_trgm_ops);
			EXCEPTION WHEN OTHERS THEN
				RAISE WARNING 'jetci: no pg_trgm (%): text search reads every commit', SQLERRM;
			END $$`)
		}
		// The FTS table's rows are found by the commit's sha (an indexed
		// column, so a delete does not read the table): never by rowid,
		// which VACUUM may renumber in commits.
		return append(stmts,
			`CREATE VIRTUAL TABLE commits_text USING fts5(repo UNINDEXED, branch UNINDEXED, commit_sha, subject, author, author_email, tokenize = 'trigram')`,
			`INSERT INTO commits_text (repo, branch, commit_sha, subject, author, author_email)
				SELECT repo, branch, commit_sha, subject, author, author_email FROM commits`,
			`CREATE TRIGGER commits_text_insert AFTER INSERT ON commits BEGIN
				INSERT INTO commits_text (repo, branch, commit_sha, subject, author, author_email)
				VALUES (new.repo, new.branch, new.commit_sha, new.subject, new.author, new.author_email);
			END`,
			`CREATE TRIGGER commits_text_delete AFTER DELETE ON commits BEGIN
				DELETE FROM commits_text WHERE commits_text MATCH 'commit_sha:"' || replace(old.commit_sha, '"', '""') || '"'
					AND repo = old.repo AND branch = old.branch AND commit_sha = old.commit_sha;
			END`,
			`CREATE TRIGGER commits_text_update AFTER UPDATE OF subject, author, author_email ON commits
			WHEN old.subject IS NOT new.subject OR old.author IS NOT new.author OR old.author_email IS NOT new.author_email BEGIN
				DELETE FROM commits_text WHERE commits_text MATCH 'commit_sha:"' || replace(old.commit_sha, '"', '""') || '"'
					AND repo = old.repo AND branch = old.branch AND commit_sha = old.commit_sha;
				INSERT INTO commits_text (repo, branch, commit_sha, subject, author, author_email)
				VALUES (new.repo, new.branch, new.commit_sha, new.subject, new.author, new.author_email);
			END`)
	},
	// 4 → 5: a cell's records by status and time, for "failing since"
	// (FirstFailing): its last pass, then its first failure after it, are
	// each one seek.
	func(d Dialect) []string {
		return []string{`CREATE INDEX records_cell ON records (repo, branch, module, job, arch, status, first_seen, sort_key)`}
	},
	// 5 → 6: a commit's jobs by status, with what the branch page sums
	// (module, job, arch, times) in the index: a commit's counts are read
	// from the index alone, and only the jobs not passed are looked up,
	// not all 150–1,500 of a commit. Same name, so that the queries naming
	// it (INDEXED BY) keep it. A module's newest checks on a branch (the
	// module page) are a seek, not a walk through the branch's records
	// (1 in 500 of them at the seed's scale).
	//
	// The names of the tests each cell (repo, branch, module, job, arch)
	// has reported, searched by substring through trigrams as the commits'
	// text is (schema 4): a name is written once, when first seen there.
	func(d Dialect) []string {
		stmts := []string{
			`DROP INDEX records_commit`,
			`CREATE INDEX records_commit ON records (repo, branch, commit_sha, status, module, job, arch, first_seen, finished_at)`,
			`CREATE INDEX records_branch_module ON records (repo, branch, module, first_seen, sort_key)`,
			`CREATE TABLE test_names (
				repo TEXT NOT NULL, branch TEXT NOT NULL, module TEXT NOT NULL, job TEXT NOT NULL, arch TEXT NOT NULL, name TEXT NOT NULL,
				PRIMARY KEY (repo, branch, module, job, arch, name))`,
		}
		if d == Postgres {
			return append(stmts, `DO $$
			BEGIN
				CREATE EXTENSION IF NOT EXISTS pg_trgm;
				CREATE INDEX test_names_text ON test_names USING gin (name gin_trgm_ops);
			EXCEPTION WHEN OTHERS THEN
				RAISE WARNING 'jetci: no pg_trgm (%): a search of test names reads every name', SQLERRM;
			END $$`)
		}
		// Names are only added (a reindex or Reset empties both tables).
		return append(stmts,
			`CREATE VIRTUAL TABLE test_names_text USING fts5(repo UNINDEXED, branch UNINDEXED, module UNINDEXED, job UNINDEXED, arch UNINDEXED, name, tokenize = 'trigram')`,
			`CREATE TRIGGER test_names_insert AFTER INSERT ON test_names BEGIN
				INSERT INTO test_names_text (repo, branch, module, job, arch, name) VALUES (new.repo, new.branch, new.module, new.job, new.arch, new.name);
			END`)
	},
}

func (db *DB) migrate(ctx context.Context) error {
	if _, err := db.sql.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
		return err
	}
	return db.migrateTo(ctx, SchemaVersion)
}

// migrateTo brings the schema to version target (tests use it to make an
// older database).
func (db *DB) migrateTo(ctx context.Context, target int) error {
	for {
		tx, err := db.sql.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if db.dialect == Postgres {
			// Two reporters starting on one database migrate one at a time.
			if _, err := tx.ExecContext(ctx, `LOCK TABLE schema_version IN EXCLUSIVE MODE`); err != nil {
				tx.Rollback()
				return err
			}
		}
		v := 0
		err = tx.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&v)
		fresh := errors.Is(err, sql.ErrNoRows)
		if err != nil && !fresh {
			tx.Rollback()
			return err
		}
		if v > SchemaVersion {
			tx.Rollback()
			return fmt.Errorf("schema version %d is newer than this jetci's %d: use a newer jetci", v, SchemaVersion)
		}
		if v >= target {
			return tx.Rollback()
		}
		for _, stmt := range migrations[v](db.dialect) {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				tx.Rollback()
				return fmt.Errorf("migrate schema %d → %d: %w", v, v+1, err)
			}
		}
		if fresh {
			_, err = tx.ExecContext(ctx, db.q(`INSERT INTO schema_version (version) VALUES (?)`), v+1)
		} else {
			_, err = tx.ExecContext(ctx, db.q(`UPDATE schema_version SET version = ?`), v+1)
		}
		if err != nil {
			tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
}

// Version returns the schema version of the database.
func (db *DB) Version(ctx context.Context) (int, error) {
	v := 0
	err := db.sql.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&v)
	return v, err
}

// Reset empties the read model, for a rebuild from the streams.
func (db *DB) Reset(ctx context.Context) error {
	tx, err := db.sql.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	tables := []string{"position", "records", "commits", "cells", "bad_events", "waiting", "test_names"}
	if db.dialect == SQLite {
		// Emptied before commits, so that its delete trigger finds nothing.
		tables = append([]string{"commits_text", "test_names_text"}, tables...)
	}
	for _, t := range tables {
		if _, err := tx.ExecContext(ctx, "DELETE FROM "+t); err != nil {
			return err
		}
	}
	return tx.Commit()
}
