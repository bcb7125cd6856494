package reporter

import (
	"encoding/json"
	"errors"
	"html/template"
	"io"
	"net/http"
	"regexp"
	"slices"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/events"
)

// Handler serves the web page and the JSON API:
//
//	GET /                                  the latest results as a page
//	GET /api/v1/results?repo=&branch=&commit=&all=1
//	GET /api/v1/logs/{job_id}/{attempt}    a job attempt's full log, text/plain
//	GET /metrics                           Prometheus metrics, when configured
//	GET /healthz
func (r *Reporter) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", r.page)
	mux.HandleFunc("GET /api/v1/results", r.apiResults)
	mux.HandleFunc("GET /api/v1/logs/{job}/{attempt}", r.apiLog)
	if r.cfg.Metrics != nil {
		mux.Handle("GET /metrics", r.cfg.Metrics.MetricsHandler())
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		writeError(w, http.StatusNotFound, "no such page: "+req.URL.Path)
	})
	return mux
}

func filterOf(req *http.Request) Filter {
	q := req.URL.Query()
	return Filter{Repo: q.Get("repo"), Branch: q.Get("branch"), Commit: q.Get("commit"), All: q.Get("all") != "" && q.Get("all") != "0"}
}

func (r *Reporter) apiResults(w http.ResponseWriter, req *http.Request) {
	recs, err := r.store.List(req.Context(), filterOf(req))
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	if recs == nil {
		recs = []Record{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"results": recs})
}

var (
	jobIDRE   = regexp.MustCompile(`^[0-9a-f]{20}$`)
	attemptRE = regexp.MustCompile(`^[0-9]{1,6}$`)
)

func (r *Reporter) apiLog(w http.ResponseWriter, req *http.Request) {
	job, attempt := req.PathValue("job"), req.PathValue("attempt")
	if !jobIDRE.MatchString(job) || !attemptRE.MatchString(attempt) {
		writeError(w, http.StatusBadRequest, "want /api/v1/logs/<20 hex job id>/<attempt>")
		return
	}
	obj, err := r.logs.Get(req.Context(), job+"/"+attempt+".log")
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		writeError(w, http.StatusNotFound, "no log for job "+job+" attempt "+attempt)
		return
	}
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	defer obj.Close()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.Copy(w, obj)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

var pageTmpl = template.Must(template.New("page").Funcs(template.FuncMap{"short": events.Short}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="5"><title>jetci</title>
<style>
body{font-family:system-ui,sans-serif;margin:1rem}table{border-collapse:collapse;width:100%}
td,th{padding:.3rem .5rem;border-bottom:1px solid #ddd;text-align:left;font-size:.9rem}
.passed{color:#17692e}.failed{color:#b3261e}.error{color:#8a4b00}.running,.queued{color:#555}
code{font-size:.85rem}
</style></head><body>
<h1>jetci</h1>
<p>{{len .}} jobs, newest first. This page refreshes every 5 seconds; the same data is at <a href="/api/v1/results?all=1">/api/v1/results</a>.</p>
<table><thead><tr><th>status</th><th>repo</th><th>branch</th><th>commit</th><th>job</th><th>arch</th><th>attempt</th><th>time</th><th>author</th><th>error</th></tr></thead><tbody>
{{range .}}<tr><td class="{{.Status}}">{{if .Log}}<a href="/api/v1/logs/{{.JobID}}/{{.Attempt}}">{{.Status}}</a>{{else}}{{.Status}}{{end}}</td>
<td>{{.Repo}}</td><td>{{.Branch}}</td><td><code title="{{.Commit}}">{{short .Commit}}</code> {{.Subject}}</td><td>{{.Job}}</td><td>{{.Arch}}</td>
<td>{{.Attempt}}</td><td>{{if .DurationMs}}{{.DurationMs}} ms{{end}}</td><td>{{.Author.Name}}</td><td>{{.Error}}</td></tr>
{{else}}<tr><td colspan="10">No jobs yet. Commit to a watched repository.</td></tr>{{end}}
</tbody></table></body></html>
`))

func (r *Reporter) page(w http.ResponseWriter, req *http.Request) {
	recs, err := r.store.List(req.Context(), Filter{All: true})
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	slices.Reverse(recs)
	if len(recs) > 500 {
		recs = recs[:500]
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := pageTmpl.Execute(w, recs); err != nil {
		r.log.Warn().Err(err).Msg("render page")
	}
}
