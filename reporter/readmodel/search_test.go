package readmodel

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// searchCommits are the commits of TestTextSearchSameOnBothBackends: a
// subject, author and mail each, with what a naive search trips on
// (LIKE's wildcards, quotes, FTS syntax, non-ASCII, short words).
var searchCommits = []struct{ subject, author, email string }{
	{"Fix the parser", "Ann Lee", "ann@example.com"},
	{"parser: 100% of cases", "Bob", "bob@example.org"},
	{"Use a_b not a-b", "Ann Lee", "ann@example.com"},
	{`Quote "this" and 'that'`, "Carl", "carl@example.com"},
	{"AND OR NOT NEAR(x y) * ^", "Dana", "dana@example.com"},
	{"Größe der Datei", "Jürgen", "juergen@example.de"},
	{"日本語のテスト", "Yuki", "yuki@example.jp"},
	{"UPPER lower MiXeD", "Eve", "eve@example.com"},
	{"", "", ""}, // a commit without metadata
	{"back\\slash path", "Finn", "finn@example.com"},
}

func searchRows(branch string, from int) []Row {
	var rows []Row
	for c, m := range searchCommits {
		for j := range 3 {
			i := from + c*3 + j
			id := fmt.Sprintf("%020x", i)
			rows = append(rows, Row{JobID: id, Repo: "proj", Branch: branch, Commit: fmt.Sprintf("%040x", from+c),
				Module: fmt.Sprintf("m%d", j), Job: "test", Arch: "amd64", Status: "passed",
				Author: m.author, AuthorEmail: m.email, Subject: m.subject,
				FirstSeen: int64(1000 + i), FinishedAt: int64(2000 + i), SortKey: id, Data: []byte(`{}`)})
		}
	}
	return rows
}

var searchQueries = []string{"parser", "PARSER", "100%", "%", "a_b", "_", `"this"`, `'that'`, "that'", "NEAR(x", "* ^", "OR NOT",
	"Größe", "größe", "Jürgen", "日本語", "テ", "mixed", "upper LOWER", "ann@", "@example.com", "ex", "e", "Lee",
	"back\\slash", "\\", "nothing like it", "der Datei", " ", "r: 1"}

// TestTextSearchSameOnBothBackends: q= finds the records of the commits
// whose subject, author or mail holds the text, ignoring ASCII case, the
// same on SQLite (FTS5 trigrams) and PostgreSQL (pg_trgm), for texts long
// enough for the index and short ones; and it stays right as commits are
// written, changed and pruned (the SQLite index is kept by triggers).
func TestTextSearchSameOnBothBackends(t *testing.T) {
	results := map[string][]string{}
	backends(t, func(t *testing.T, open func() string) {
		// -1: the bound by the numbers; 0: every search reads the list in
		// order keeping the commits found; 1000: commit by commit.
		for _, first := range []int{-1, 0, 1000} {
			t.Run(fmt.Sprintf("commitsFirst=%d", first), func(t *testing.T) {
				defer func(old int) { commitsFirst = old }(commitsFirst)
				commitsFirst = first
				searchBackend(t, open, results)
			})
		}
	})
	if len(results) != 6 {
		t.Fatalf("%d runs", len(results))
	}
	var first []string
	for name, got := range results {
		if first == nil {
			first = got
		} else if !slices.Equal(first, got) {
			t.Fatalf("%s disagrees:\n%v\n%v", name, first, got)
		}
	}
}

func searchBackend(t *testing.T, open func() string, results map[string][]string) {
	{
		ctx := context.Background()
		db := mustOpen(t, open())
		if db.Dialect() == Postgres {
			// CI's PostgreSQL (Debian's package) has pg_trgm: the index is there.
			var n int
			if err := db.sql.QueryRowContext(ctx, `SELECT count(*) FROM pg_indexes WHERE indexname = 'commits_text'`).Scan(&n); err != nil || n != 1 {
				t.Fatalf("no trigram index on commits (%d, %v): is pg_trgm installed?", n, err)
			}
		}
		put(t, db, 1, searchRows("main", 0)...)
		put(t, db, 2, searchRows("dev", 100)...)
		if db.Dialect() == Postgres {
			// The planner reads a table this small whole; forbidden to, it
			// must be able to use the trigram index for the search.
			conn, err := db.sql.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			c, a := db.textCond("parser")
			var plan strings.Builder
			if _, err := conn.ExecContext(ctx, `SET enable_seqscan = off`); err != nil {
				t.Fatal(err)
			}
			rows, err := conn.QueryContext(ctx, db.q(`EXPLAIN SELECT repo, branch, commit_sha FROM commits WHERE `+c), a...)
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var l string
				rows.Scan(&l)
				plan.WriteString(l + "\n")
			}
			rows.Close()
			conn.ExecContext(ctx, `RESET enable_seqscan`)
			conn.Close()
			if !strings.Contains(plan.String(), "commits_text") {
				t.Fatalf("the search does not use the trigram index:\n%s", plan.String())
			}
		}
		var got []string
		for _, q := range searchQueries {
			want := 0
			for _, m := range searchCommits {
				for _, s := range []string{m.subject, m.author, m.email} {
					if strings.Contains(asciiLower(s), asciiLower(q)) {
						want += 2 * 3 // two branches, three jobs
						break
					}
				}
			}
			var ids []string
			p := Page{Limit: 4}
			for {
				rs, pg, err := db.Records(ctx, Filter{Text: q}, p)
				if err != nil {
					t.Fatalf("q=%q: %v", q, err)
				}
				for _, r := range rs {
					ids = append(ids, r.JobID)
				}
				if pg.Next == (Cursor{}) {
					break
				}
				p.After = pg.Next
			}
			if len(ids) != want {
				t.Errorf("q=%q: %d records, want %d", q, len(ids), want)
			}
			if !slices.IsSorted(ids) {
				t.Errorf("q=%q: records out of order: %v", q, ids)
			}
			got = append(got, fmt.Sprintf("%q: %v", q, ids))
			// With other filters too.
			rs, _, err := db.Records(ctx, Filter{Text: q, Branch: "dev", Module: "m1"}, Page{Limit: 100})
			if err != nil || len(rs) != want/6 {
				t.Errorf("q=%q branch=dev module=m1: %d records, want %d (%v)", q, len(rs), want/6, err)
			}
		}
		results[t.Name()] = got

		// The index follows the commits: a subject learnt later is found,
		// a pruned commit is not.
		late := Row{JobID: fmt.Sprintf("%020x", 999), Repo: "proj", Branch: "main", Commit: fmt.Sprintf("%040x", 999),
			Module: "m0", Job: "test", Arch: "amd64", Status: "queued", FirstSeen: 5000, SortKey: "z", Data: []byte(`{}`)}
		put(t, db, 3, late)
		late.Subject, late.Author, late.AuthorEmail, late.Status, late.FinishedAt = "Late subject", "Gus", "gus@example.com", "passed", 6000
		put(t, db, 4, late)
		if n := searchCount(t, db, "late subj"); n != 1 {
			t.Fatalf("a subject written after the commit: %d records, want 1", n)
		}
		if n := searchCount(t, db, "gus@"); n != 1 {
			t.Fatalf("a mail written after the commit: %d records, want 1", n)
		}
		if _, err := db.Prune(ctx, timeAt(2000+200), []string{"passed"}, nil); err != nil {
			t.Fatal(err)
		}
		if n := searchCount(t, db, "parser"); n != 0 {
			t.Fatalf("after pruning every parser commit but the latest cells: %d records found", n)
		}
	}
}

func searchCount(t *testing.T, db *DB, q string) int {
	t.Helper()
	rs, _, err := db.Records(context.Background(), Filter{Text: q}, Page{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return len(rs)
}

func asciiLower(s string) string {
	return strings.Map(func(r rune) rune {
		if 'A' <= r && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return r
	}, s)
}

// TestMigrateTextSearch: a version 3 database's commits are searchable by
// subject, author and mail once migrated (the mail comes from their records).
func TestMigrateTextSearch(t *testing.T) {
	backends(t, func(t *testing.T, open func() string) {
		ctx := context.Background()
		dsn := open()
		old, err := openAt(ctx, dsn, 3)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := old.sql.ExecContext(ctx, old.q(`INSERT INTO records (job_id, repo, branch, commit_sha, module, job, arch, status,
			author, author_email, subject, first_seen, finished_at, sort_key, data) VALUES (?, 'proj', 'main', 'abc', '', 'test', 'amd64', 'passed', 'Ann', 'ann@example.com', 'An old subject', 1, 2, 'k', ?)`),
			"00000000000000000001", []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := old.sql.ExecContext(ctx, `INSERT INTO commits (repo, branch, commit_sha, first_seen, subject, author) VALUES ('proj', 'main', 'abc', 1, 'An old subject', 'Ann')`); err != nil {
			t.Fatal(err)
		}
		old.Close()
		db := mustOpen(t, dsn)
		for _, q := range []string{"old subj", "ANN", "ann@example", "nn"} {
			if n := searchCount(t, db, q); n != 1 {
				t.Errorf("q=%q after the migration: %d records, want 1", q, n)
			}
		}
	})
}

// TestTestNamesSearch: a test's name is found by a substring, ignoring
// ASCII case, on both backends, once per cell however often it is
// reported, with the cell's latest job; text shorter than a trigram finds
// nothing (the index cannot), wildcards and quotes are text; a Reset
// empties the names.
func TestTestNamesSearch(t *testing.T) {
	backends(t, func(t *testing.T, open func() string) {
		ctx := context.Background()
		db := mustOpen(t, open())
		names := []string{"TestParseHeader", "TestParseBody/empty_input", `tests.test_mod.TestQuote."x"`, "Test100%Coverage", "TestGröße"}
		var seq uint64
		for i := range 6 { // two commits × three modules: each name twice a cell
			r := row(i, "main", "passed")
			r.Tests = names
			if i%3 == 2 {
				r.Tests = []string{"TestOnlyInM2"}
			}
			seq++
			put(t, db, seq, r)
		}
		other := row(100, "dev", "failed")
		other.Tests = []string{"TestParseHeader"}
		seq++
		put(t, db, seq, other)
		find := func(q string) []string {
			t.Helper()
			ns, err := db.TestNames(ctx, q, 100)
			if err != nil {
				t.Fatalf("%q: %v", q, err)
			}
			var out []string
			for _, n := range ns {
				if n.JobID == "" {
					t.Errorf("%q: %+v has no job", q, n)
				}
				out = append(out, n.Branch+" "+n.Module+" "+n.Name)
			}
			slices.Sort(out)
			return out
		}
		for q, want := range map[string][]string{
			"parseheader": {"dev m1 TestParseHeader", "main m0 TestParseHeader", "main m1 TestParseHeader"},
			"Body/empty":  {"main m0 TestParseBody/empty_input", "main m1 TestParseBody/empty_input"},
			"100%":        {"main m0 Test100%Coverage", "main m1 Test100%Coverage"},
			`"x"`:         {`main m0 tests.test_mod.TestQuote."x"`, `main m1 tests.test_mod.TestQuote."x"`},
			"Größe":       {"main m0 TestGröße", "main m1 TestGröße"},
			"OnlyInM2":    {"main m2 TestOnlyInM2"},
			"Body_empty":  nil, // _ is not a wildcard
			"Te":          nil, // shorter than a trigram
			"nothing":     nil,
		} {
			if got := find(q); !slices.Equal(got, want) {
				t.Errorf("%q: %q, want %q", q, got, want)
			}
		}
		// The cell's latest job: the second commit's.
		ns, _ := db.TestNames(ctx, "OnlyInM2", 10)
		if len(ns) != 1 || ns[0].JobID != row(5, "main", "passed").JobID {
			t.Errorf("OnlyInM2: %+v, want the job of the second commit", ns)
		}
		if ns, _ := db.TestNames(ctx, "Test", 3); len(ns) != 3 {
			t.Errorf("a limit of 3: %d names", len(ns))
		}
		if err := db.Reset(ctx); err != nil {
			t.Fatal(err)
		}
		if got := find("parseheader"); got != nil {
			t.Errorf("after a reset: %q", got)
		}
	})
}
