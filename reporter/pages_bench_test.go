package reporter

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/reporter/readmodel/pgtest"
)

// BenchmarkPages folds a synthetic history (JETCI_BENCH_JOBS jobs, default
// 20,000, in the seed's shape) into a reporter in this process and serves
// each page of BenchmarkHistory's list from its handler, one sub-benchmark a
// page: the server's own time, without a process or a socket, for
// profiling (-cpuprofile) a page over its budget. JETCI_BENCH_DB=postgres
// uses a real PostgreSQL; JETCI_BENCH_PAGE picks pages by a substring.
//
//	JETCI_BENCH_JOBS=100000 go test -run '^$' -bench Pages -cpuprofile cpu.out ./reporter
func BenchmarkPages(b *testing.B) {
	s, _ := publishBenchHistory(b)
	ctx := context.Background()
	dsn := filepath.Join(b.TempDir(), DBFile)
	if os.Getenv("JETCI_BENCH_DB") == "postgres" {
		dsn = pgtest.Start(b).NewDB()
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r, err := New(rctx, Config{DB: dsn}, s.JS, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	defer func() { cancel(); <-done }()
	<-r.View().Ready()
	h := r.Handler()
	get := func(tb testing.TB, path string) []byte {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != http.StatusOK {
			tb.Fatalf("%s: %d %.300s", path, rec.Code, rec.Body.String())
		}
		return rec.Body.Bytes()
	}
	var cs struct {
		Commits []Commit `json:"commits"`
	}
	decodeJSON(b, get(b, "/api/v1/commits?repo=proj&branch=b0&limit=1"), &cs)
	var rs struct {
		Results []Record `json:"results"`
	}
	decodeJSON(b, get(b, "/api/v1/results?limit=1&before=end"), &rs)
	if len(cs.Commits) == 0 || len(rs.Results) == 0 {
		b.Fatal("no commits or results")
	}
	sha, job := cs.Commits[0].Commit, rs.Results[0].JobID
	for _, p := range benchPages(sha, job) {
		if f := os.Getenv("JETCI_BENCH_PAGE"); f != "" && !containsAny(p, f) {
			continue
		}
		b.Run(url.PathEscape(p), func(b *testing.B) {
			size := 0
			for range b.N {
				size = len(get(b, p))
			}
			b.ReportMetric(float64(size)/1024, "KB")
		})
	}
}

// benchPages is every page and API list BenchmarkHistory measures, for the
// newest commit sha of proj/b0 and a job id.
func benchPages(sha, job string) []string {
	return []string{
		"/", "/branch?repo=proj&branch=b0", "/commit?repo=proj&branch=b0&commit=" + sha, "/job/" + job, "/queue", "/runners",
		"/modules?repo=proj", "/tests?repo=proj",
		"/dashboard", "/modules?repo=proj&failing=1", "/modules?repo=proj&q=m00", "/module?repo=proj&module=m007",
		"/branch?repo=proj&branch=b0&limit=50", "/branch/jobs?repo=proj&branch=b0&commit=" + sha,
		"/search?q=m007", "/search?q=" + url.QueryEscape("Dev 3"), "/search?q=" + url.QueryEscape("change 3 of"), "/search?q=" + sha[:12], "/badge/proj/b0.svg",
		"/badge/proj/b0.svg?job=m007/test&arch=arm64", "/api/v1/dashboard",
		"/api/v1/repos", "/api/v1/branches?repo=proj", "/api/v1/commits?repo=proj&branch=b0",
		"/api/v1/commits/" + sha + "?repo=proj&branch=b0", "/api/v1/jobs/" + job,
		"/api/v1/results", "/api/v1/results?repo=proj&branch=b3&module=m007", "/api/v1/results?status=failed&arch=arm64",
		"/api/v1/results?q=" + url.QueryEscape("dev3@"), "/api/v1/results?before=end&limit=1000",
		"/api/v1/queue", "/api/v1/runners", "/api/v1/modules?repo=proj", "/api/v1/tests/flaky", "/api/v1/tests/slowest",
	}
}

func decodeJSON(tb testing.TB, data []byte, v any) {
	tb.Helper()
	if err := json.Unmarshal(data, v); err != nil {
		tb.Fatalf("%v: %.300s", err, data)
	}
}

// containsAny reports whether s holds any of the comma-separated words.
func containsAny(s, words string) bool {
	for _, w := range strings.Split(words, ",") {
		if w != "" && strings.Contains(s, w) {
			return true
		}
	}
	return false
}
