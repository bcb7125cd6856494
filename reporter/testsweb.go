package reporter

import (
	"net/http"
	"net/url"
	"strconv"
)

// MaxTestLimit bounds ?limit= of the test lists.
const MaxTestLimit = 1000

// testFilterOf reads ?repo=&branch=&arch=&job=&limit= (every one optional).
func testFilterOf(req *http.Request) (TestFilter, bool) {
	q := req.URL.Query()
	f := TestFilter{Repo: q.Get("repo"), Branch: q.Get("branch"), Arch: q.Get("arch"), Job: q.Get("job")}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > MaxTestLimit {
			return f, false
		}
		f.Limit = n
	}
	return f, true
}

const badTestLimit = "limit must be a number from 0 to 1000 (0: the default, 50)"

// apiFlakyTests: GET /api/v1/tests/flaky — tests that failed and passed on
// the same commit, the most recently flaky first.
func (r *Reporter) apiFlakyTests(w http.ResponseWriter, req *http.Request) {
	f, ok := testFilterOf(req)
	if !ok {
		writeError(w, http.StatusBadRequest, badTestLimit)
		return
	}
	tests, err := r.tests.Flaky(req.Context(), f)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"tests": nonNil(tests)})
}

// apiSlowestTests: GET /api/v1/tests/slowest — tests by their last
// duration, the slowest first.
func (r *Reporter) apiSlowestTests(w http.ResponseWriter, req *http.Request) {
	f, ok := testFilterOf(req)
	if !ok {
		writeError(w, http.StatusBadRequest, badTestLimit)
		return
	}
	tests, err := r.tests.Slowest(req.Context(), f)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"tests": nonNil(tests)})
}

type testsPage struct {
	Filter         TestFilter
	Flaky, Slowest []TestEntry
	Err            string
}

// pageTests: GET /tests — the flaky and the slowest tests, per repo,
// branch, arch and job when the query names them.
func (r *Reporter) pageTests(w http.ResponseWriter, req *http.Request) {
	f, ok := testFilterOf(req)
	if !ok {
		r.errorPage(w, req, http.StatusBadRequest, badTestLimit)
		return
	}
	data := testsPage{Filter: f}
	var err error
	if data.Flaky, err = r.tests.Flaky(req.Context(), f); err == nil {
		data.Slowest, err = r.tests.Slowest(req.Context(), f)
	}
	if err != nil {
		data.Err = err.Error()
	}
	r.render(w, req, "tests", r.newPage(req, "Tests", "page", data))
}

// testsURL links the tests page of a repo, branch and arch.
func testsURL(repo, branch, arch string) string {
	q := url.Values{}
	for k, v := range map[string]string{"repo": repo, "branch": branch, "arch": arch} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if len(q) == 0 {
		return "/tests"
	}
	return "/tests?" + q.Encode()
}

// isFlaky says whether a record or attempt passed only on a retry.
func isFlaky(v any) bool {
	switch x := v.(type) {
	case Record:
		return x.Flaky
	case *Record:
		return x != nil && x.Flaky
	case Attempt:
		return x.Flaky
	case *Attempt:
		return x != nil && x.Flaky
	}
	return false
}
