package reporter

import (
	"context"
	"net/http"
	"net/url"
	"sort"
	"strconv"

	"github.com/jetci/jetci/events"
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
	if req.URL.Query().Get("group") == "1" {
		groups, err := r.tests.FlakyGroups(req.Context(), f)
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"groups": nonNil(groups)})
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
	if req.URL.Query().Get("group") == "1" {
		groups, err := r.tests.SlowestGroups(req.Context(), f)
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"groups": nonNil(groups)})
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
	Flaky, Slowest []TestGroup // one test across branches, with each branch's
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
	if data.Flaky, err = r.tests.FlakyGroups(req.Context(), f); err == nil {
		data.Slowest, err = r.tests.SlowestGroups(req.Context(), f)
	}
	if err != nil {
		data.Err = err.Error()
	}
	r.render(w, req, "tests", r.newPage(req, "Tests", "page", data))
}

// testsURL links the tests page of a repo, branch and arch.
func testsURL(repo, branch, arch string) string { return testsJobURL(repo, branch, arch, "") }

// testsJobURL links the tests page of a repo, branch, arch and job (its
// module's, "core/test", for a module's job).
func testsJobURL(repo, branch, arch, job string) string {
	q := url.Values{}
	for k, v := range map[string]string{"repo": repo, "branch": branch, "arch": arch, "job": job} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if len(q) == 0 {
		return "/tests"
	}
	return "/tests?" + q.Encode()
}

// MaxViewTests bounds the tests a record keeps in the reporter's memory (the
// view): only failing and flaky ones. Lists (results, commits) show those; a
// single job (API and page) is read whole from the bucket.
const MaxViewTests = 50

func viewTests(ts []events.TestResult) []events.TestResult {
	var out []events.TestResult
	for _, t := range ts {
		if len(out) == MaxViewTests {
			break
		}
		if events.Failing(t.Status) || t.Flaky {
			out = append(out, t)
		}
	}
	return out
}

// withAllTests gives a record from the view the tests its stored record
// carries (the view keeps only the failing and flaky ones).
func (r *Reporter) withAllTests(ctx context.Context, rec *Record) {
	if len(rec.Tests) == 0 && rec.TestSummary == nil {
		return
	}
	if full, err := r.store.Get(ctx, rec.JobID); err == nil && full.QueueSeq == rec.QueueSeq && full.Delivery == rec.Delivery {
		rec.Tests = full.Tests
	}
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

// ReportFailures is the failing tests a passed job's report counts (its
// steps exited 0, but a JUnit report, or the tests in its output, say some
// failed): such a pass is flagged. 0 for any other job, and for a flaky pass
// (its failures were in earlier tries).
func (r Record) ReportFailures() int {
	if r.Status != events.StatusPassed || r.TestSummary == nil {
		return 0
	}
	return r.TestSummary.Failed
}

// commitPage is a commit with its jobs in the order the page shows them:
// the failing ones first (failed, error, and passes whose report has
// failures), each with its failing tests and their messages.
type commitPage struct {
	pageCommit
	Failing []Record
	Others  []Record
}

// pageCommit is Commit under another name: embedded as Commit, its field
// Commit (the sha) would be hidden by the embedded struct's own name.
type pageCommit = Commit

func newCommitPage(c Commit) commitPage {
	p := commitPage{pageCommit: c}
	rank := func(r Record) int {
		switch {
		case r.Status == events.StatusError:
			return 0
		case r.Status == events.StatusFailed:
			return 1
		case r.ReportFailures() > 0:
			return 2
		}
		return 3
	}
	for _, r := range c.Jobs {
		if rank(r) < 3 {
			p.Failing = append(p.Failing, r)
		} else {
			p.Others = append(p.Others, r)
		}
	}
	sort.SliceStable(p.Failing, func(i, j int) bool { return rank(p.Failing[i]) < rank(p.Failing[j]) })
	return p
}

// failingTests are a record's failing tests (those it carries: every
// failure first, see events.MaxTests).
func failingTests(r Record) []events.TestResult {
	var out []events.TestResult
	for _, t := range r.Tests {
		if events.Failing(t.Status) {
			out = append(out, t)
		}
	}
	return out
}
