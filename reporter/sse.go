package reporter

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// sseWriter writes server-sent events.
type sseWriter struct {
	w http.ResponseWriter
	f http.Flusher
}

func startSSE(w http.ResponseWriter) (*sseWriter, bool) {
	f, ok := w.(http.Flusher)
	if !ok {
		return nil, false
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // tell a proxy in front not to buffer
	w.WriteHeader(http.StatusOK)
	_, _ = fmt.Fprint(w, "retry: 2000\n\n")
	f.Flush()
	return &sseWriter{w: w, f: f}, true
}

// send writes one event; data must be one line (JSON is).
func (s *sseWriter) send(event, data, id string) {
	var b strings.Builder
	if id != "" {
		b.WriteString("id: " + id + "\n")
	}
	b.WriteString("event: " + event + "\ndata: " + data + "\n\n")
	_, _ = s.w.Write([]byte(b.String()))
	s.f.Flush()
}

func (s *sseWriter) comment() {
	_, _ = s.w.Write([]byte(": keepalive\n\n"))
	s.f.Flush()
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// changeEvent is the body of a "change" event: enough for a page to decide
// whether it shows the thing that changed.
type changeEvent struct {
	Kind    string `json:"kind"`
	JobID   string `json:"job_id,omitempty"`
	Repo    string `json:"repo,omitempty"`
	Branch  string `json:"branch,omitempty"`
	Commit  string `json:"commit,omitempty"`
	Job     string `json:"job,omitempty"`
	Module  string `json:"module,omitempty"`
	Arch    string `json:"arch,omitempty"`
	Status  string `json:"status,omitempty"`
	Attempt uint64 `json:"attempt,omitempty"`
	Runner  string `json:"runner,omitempty"`
}

// apiEvents streams every change of a record or a runner as a "change" event,
// for pages to update themselves and for scripts:
//
//	curl -N http://127.0.0.1:8080/api/v1/events
func (r *Reporter) apiEvents(w http.ResponseWriter, req *http.Request) {
	changes, stop := r.view.Subscribe()
	defer stop()
	sse, ok := startSSE(w)
	if !ok {
		writeError(w, http.StatusInternalServerError, "streaming unsupported")
		return
	}
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	for {
		select {
		case <-req.Context().Done():
			return
		case <-r.closing:
			return
		case <-keepalive.C:
			sse.comment()
		case c := <-changes:
			ev := changeEvent{Kind: c.Kind, Runner: c.Runner}
			if c.Branch != nil {
				ev.Repo, ev.Branch, ev.Status = c.Branch.Repo, c.Branch.Branch, c.Branch.State
			}
			if rec := c.Record; rec != nil {
				ev = changeEvent{Kind: c.Kind, JobID: rec.JobID, Repo: rec.Repo, Branch: rec.Branch, Commit: rec.Commit,
					Job: rec.Job, Module: rec.Module, Arch: rec.Arch, Status: string(rec.Status), Attempt: rec.Attempt}
			}
			data, _ := json.Marshal(ev)
			sse.send("change", string(data), "")
		}
	}
}
