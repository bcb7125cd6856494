package reporter

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/events"
)

// Forgery is something the reporter refused as forged: a result event
// without a valid signature, a runner's event for a delivery another run
// claimed, a replay, or a log or artifact whose content no longer matches the
// digest its run signed. Kept in events.BucketForgeries and shown to admins
// (/forgeries, /api/v1/forgeries).
type Forgery struct {
	At      time.Time `json:"at"`
	What    string    `json:"what"` // result, log, artifact, record
	Reason  string    `json:"reason"`
	Subject string    `json:"subject,omitempty"`
	Seq     uint64    `json:"seq,omitempty"` // in the results stream
	JobID   string    `json:"job_id,omitempty"`
	Repo    string    `json:"repo,omitempty"`
	Branch  string    `json:"branch,omitempty"`
	Runner  string    `json:"runner,omitempty"` // as the event claims
	Signer  string    `json:"signer,omitempty"` // who signed it, if anyone valid
	Object  string    `json:"object,omitempty"`
}

// forgeries keeps the refused, one entry per distinct thing refused.
type forgeries struct {
	kv jetstream.KeyValue
}

// add keeps a forgery once; new says it was not kept before.
func (f *forgeries) add(ctx context.Context, fg Forgery, id []byte) (new bool, err error) {
	if f == nil || f.kv == nil {
		return false, nil
	}
	if fg.At.IsZero() {
		fg.At = time.Now().UTC()
	}
	sum := sha256.Sum256(append([]byte(fg.What+"\x00"+fg.Reason+"\x00"), id...))
	data, err := json.Marshal(fg)
	if err != nil {
		return false, err
	}
	_, err = f.kv.Create(ctx, hex.EncodeToString(sum[:16]), data)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return false, nil // already noted
	}
	return err == nil, err
}

// list returns the forgeries, newest first.
func (f *forgeries) list(ctx context.Context) ([]Forgery, error) {
	if f == nil || f.kv == nil {
		return nil, nil
	}
	lister, err := f.kv.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	var out []Forgery
	for k := range lister.Keys() {
		e, err := f.kv.Get(ctx, k)
		if err != nil {
			continue
		}
		var fg Forgery
		if json.Unmarshal(e.Value(), &fg) == nil {
			out = append(out, fg)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].At.After(out[j].At) })
	return out, nil
}

// verify checks the signature of a result event: queued events come from
// the services only; started and finished events of a runner (attempt > 0,
// with a runner) from a registered runner identity that covers that runner,
// or from a service.
func (r *Reporter) verify(m jetstream.Msg, ev any) (string, error) {
	return verifyResult(r.keys, m, ev)
}

// verifyResult is Reporter.verify with the keys given.
func verifyResult(keys *events.Keys, m jetstream.Msg, ev any) (string, error) {
	runner, byRunner := "", false
	switch e := ev.(type) {
	case *events.JobStarted:
		runner, byRunner = e.Runner, true
	case *events.JobFinished:
		runner = e.Runner
	}
	h := ""
	if hs := m.Headers(); hs != nil {
		h = hs.Get(events.SigHeader)
	}
	who, err := keys.Verify(m.Data(), h, runner)
	if err != nil {
		return "", err
	}
	if _, queued := ev.(*events.JobQueued); queued && who != "service" {
		return who, fmt.Errorf("%w: a queued event signed by %s, not a service", events.ErrForged, who)
	}
	if byRunner && who == "service" {
		return who, fmt.Errorf("%w: a started event signed by a service", events.ErrForged)
	}
	return who, nil
}

// refuse notes a refused result event and logs it (at most once a second in
// full; the metric counts all of them).
func (r *Reporter) refuse(ctx context.Context, m jetstream.Msg, ev any, who string, why error) {
	fg := Forgery{What: "result", Reason: why.Error(), Subject: m.Subject(), Signer: who}
	if meta, err := m.Metadata(); err == nil {
		fg.Seq = meta.Sequence.Stream
	}
	if ref, ok := refOf(ev); ok {
		fg.JobID, fg.Repo, fg.Branch = ref.JobID, ref.Repo, ref.Branch
	}
	switch e := ev.(type) {
	case *events.JobStarted:
		fg.Runner = e.Runner
	case *events.JobFinished:
		fg.Runner = e.Runner
	}
	r.noteRefused(ctx, fg, m.Data())
}

// noteRefused counts, logs (at most once a second) and keeps a refused
// result event.
func (r *Reporter) noteRefused(ctx context.Context, fg Forgery, data []byte) {
	r.cfg.Metrics.Forgery("result")
	if r.forgeLog.Allow() {
		r.log.Warn().Str("subject", fg.Subject).Str("job_id", fg.JobID).Str("runner", fg.Runner).Str("reason", fg.Reason).
			Msg("refused a forged result")
	}
	if _, err := r.forgeries.add(ctx, fg, data); err != nil {
		r.log.Warn().Err(err).Msg("could not keep a refused result")
	}
}

// errReplaced is the error of a log or artifact whose content is not the one
// its run stored.
var errReplaced = errors.New("it was replaced after its run: its content does not match the digest the runner signed (shown to admins)")

// openObject opens a log or artifact and checks it against the digest its
// run's signed result gave (none: results from before digests). A mismatch
// is refused and noted as a forgery.
func (r *Reporter) openObject(ctx context.Context, store jetstream.ObjectStore, what, name, digest, jobID string) (jetstream.ObjectResult, error) {
	obj, err := store.Get(ctx, name)
	if err != nil || digest == "" {
		return obj, err
	}
	info, err := obj.Info()
	if err != nil {
		obj.Close()
		return nil, err
	}
	if info.Digest != digest {
		obj.Close()
		r.cfg.Metrics.Forgery(what)
		// Logged the first time only: every read of it is refused again.
		if fresh, err := r.forgeries.add(ctx, Forgery{What: what, Reason: what + " replaced after its run: digest " + info.Digest + ", signed " + digest,
			JobID: jobID, Object: name}, []byte(name+"\x00"+info.Digest)); err != nil {
			r.log.Warn().Err(err).Msg("could not keep a refused " + what)
		} else if fresh {
			r.log.Warn().Str("object", name).Str("job_id", jobID).Msg("refused a replaced " + what)
		}
		return nil, errReplaced
	}
	return obj, nil
}

// apiForgeries lists what was refused as forged, newest first: for admins
// only (the bearer token, or a logged-in session).
func (r *Reporter) apiForgeries(w http.ResponseWriter, req *http.Request) {
	if !r.auth.isBearer(req) && r.auth.session(req) == "" {
		writeError(w, http.StatusForbidden, "the list of forgeries is for admins: send the admin token (Authorization: Bearer …) or log in")
		return
	}
	list, err := r.forgeries.list(req.Context())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"forgeries": nonNil(list)})
}

var forgeriesPage = template.Must(template.New("forgeries").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Refused as forged · jetci</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><p><a href="/">jetci</a></p><h1>Refused as forged</h1>
<p>Result events without a valid signature, claims on another run's delivery, replays, and logs or
artifacts replaced after their run. None of them changed a record.</p>
{{if .}}<table><thead><tr><th>when</th><th>what</th><th>job</th><th>runner</th><th>signed by</th><th>why</th></tr></thead><tbody>
{{range .}}<tr><td>{{.At.Format "2006-01-02 15:04:05Z07:00"}}</td><td>{{.What}}</td>
<td>{{if .JobID}}<a href="/job/{{.JobID}}">{{.Repo}} {{.Branch}} {{.JobID}}</a>{{end}}{{.Object}}</td>
<td>{{.Runner}}</td><td>{{.Signer}}</td><td>{{.Reason}}</td></tr>
{{end}}</tbody></table>{{else}}<p>Nothing.</p>{{end}}
</body></html>
`))

// pageForgeries shows the forgeries to a logged-in admin.
func (r *Reporter) pageForgeries(w http.ResponseWriter, req *http.Request) {
	if r.auth.session(req) == "" && !r.auth.isBearer(req) {
		http.Error(w, "This page is for admins: log in with the admin token.", http.StatusForbidden)
		return
	}
	list, err := r.forgeries.list(req.Context())
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = forgeriesPage.Execute(w, list)
}

// admitter is the fold's guard (fold.go): the signature check of verify, the
// live leases of the store's runners bucket, and refusals noted as refuse
// does, after the batch that refused them is committed.
func (r *Reporter) admitter(store *Store) *guard {
	return &guard{
		verify: r.verify,
		holds:  leaseHolds(store.runners),
		refused: func(ctx context.Context, it foldItem, who string, why error) {
			fg := Forgery{What: "result", Reason: why.Error(), Subject: it.subject, Signer: who, Seq: it.seq}
			if ref, ok := refOf(it.ev); ok {
				fg.JobID, fg.Repo, fg.Branch = ref.JobID, ref.Repo, ref.Branch
			}
			switch e := it.ev.(type) {
			case *events.JobStarted:
				fg.Runner = e.Runner
			case *events.JobFinished:
				fg.Runner = e.Runner
			}
			r.noteRefused(ctx, fg, it.data)
		},
	}
}
