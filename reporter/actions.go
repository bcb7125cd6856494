package reporter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/events"
)

// actionError carries the HTTP status an action's failure deserves.
type actionError struct {
	code int
	msg  string
}

func (e *actionError) Error() string { return e.msg }

func failf(code int, format string, args ...any) error {
	return &actionError{code, fmt.Sprintf(format, args...)}
}

func statusOf(err error) int {
	var ae *actionError
	if errors.As(err, &ae) {
		return ae.code
	}
	return http.StatusServiceUnavailable
}

// Triggered is the answer to a trigger or re-check.
type Triggered struct {
	Repo      string `json:"repo"`
	Branch    string `json:"branch"`
	Commit    string `json:"commit"`
	Job       string `json:"job,omitempty"`
	Arch      string `json:"arch,omitempty"`
	Module    string `json:"module,omitempty"`
	TriggerID string `json:"trigger_id"`
}

// trigger asks the repo's observers to run a branch head, a commit, or one job
// of a commit, at the user-triggered priority.
func (r *Reporter) trigger(ctx context.Context, t events.TriggerRequest) (*Triggered, error) {
	if t.Repo == "" || t.Branch == "" {
		return nil, failf(http.StatusBadRequest, "repo and branch are required")
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	reply, err := events.RequestTrigger(ctx, r.js.Conn(), &t)
	switch {
	case errors.Is(err, events.ErrNoObserver):
		return nil, failf(http.StatusNotFound, "%v", err)
	case errors.Is(err, events.ErrRefused):
		return nil, failf(http.StatusBadRequest, "%v", err)
	case errors.Is(err, context.DeadlineExceeded):
		return nil, failf(http.StatusGatewayTimeout, "the observer of %q did not answer in time", t.Repo)
	case err != nil:
		return nil, err
	}
	r.log.Info().Str("repo", t.Repo).Str("branch", t.Branch).Str("commit", events.Short(reply.Commit)).
		Str("job", t.Job).Str("arch", t.Arch).Str("trigger_id", reply.TriggerID).Msg("triggered from the web")
	return &Triggered{Repo: t.Repo, Branch: t.Branch, Commit: reply.Commit, Job: t.Job, Arch: t.Arch, Module: t.Module, TriggerID: reply.TriggerID}, nil
}

// recheckBranch asks the dispatchers to re-check a branch under the
// broken-build flow.
func (r *Reporter) recheckBranch(ctx context.Context, repo, branch, by string) (*Triggered, error) {
	if repo == "" || branch == "" {
		return nil, failf(http.StatusBadRequest, "repo and branch are required")
	}
	reply, err := events.RequestRecheck(ctx, r.js.Conn(), &events.RecheckRequest{Repo: repo, Branch: branch, By: by})
	switch {
	case errors.Is(err, events.ErrNoDispatcher):
		return nil, failf(http.StatusNotFound, "no dispatcher answers re-check requests: start one with --gate")
	case errors.Is(err, events.ErrRefused):
		return nil, failf(http.StatusBadRequest, "%v", err)
	case errors.Is(err, context.DeadlineExceeded):
		return nil, failf(http.StatusGatewayTimeout, "the dispatcher did not answer in time")
	case err != nil:
		return nil, err
	}
	r.log.Info().Str("repo", repo).Str("branch", branch).Str("by", by).Msg("branch re-check requested")
	return &Triggered{Repo: repo, Branch: branch, Commit: reply.Commit, TriggerID: reply.TriggerID}, nil
}

func (r *Reporter) apiRecheckBranch(w http.ResponseWriter, req *http.Request) {
	if !r.requireToken(w, req) {
		return
	}
	var body struct {
		Repo   string `json:"repo"`
		Branch string `json:"branch"`
	}
	if !readJSON(w, req, &body) {
		return
	}
	res, err := r.recheckBranch(req.Context(), body.Repo, body.Branch, "api")
	if err != nil {
		writeError(w, statusOf(err), err.Error())
		return
	}
	writeJSON(w, http.StatusAccepted, res)
}

// recheckJob runs one job of one commit again; its record gets a new attempt.
func (r *Reporter) recheckJob(ctx context.Context, id string) (*Triggered, error) {
	rec, ok := r.view.Job(id)
	if !ok {
		return nil, failf(http.StatusNotFound, "no job %s", id)
	}
	t := events.TriggerRequest{Repo: rec.Repo, Branch: rec.Branch, Commit: rec.Commit, Job: rec.Job, Arch: rec.Arch, Module: rec.Module}
	if rec.Job == "pipeline" && rec.Arch == "any" {
		t.Job, t.Arch = "", "" // the pipeline file itself failed: run the whole commit
	}
	return r.trigger(ctx, t)
}

// cancel stops a queued or running job. The request is kept in the
// jetci-cancel bucket (a runner about to start the job checks it) and announced
// to the runner running it; a job still waiting is also taken out of the queue
// and recorded as cancelled at once.
func (r *Reporter) cancel(ctx context.Context, id, by string) (*Record, error) {
	rec, ok := r.view.Job(id)
	if !ok {
		return nil, failf(http.StatusNotFound, "no job %s", id)
	}
	if rec.Status.Final() {
		return nil, failf(http.StatusConflict, "job %s already ended: %s", id, rec.Status)
	}
	if rec.Status == events.StatusHeld || rec.QueueSeq == 0 {
		// Not queued yet (its branch is broken): there is no run to name, and
		// a request for "any run" would also stop a later re-check.
		return nil, failf(http.StatusConflict, "job %s is paused with its branch, not queued: re-check or wait for the branch to open", id)
	}
	req := &events.CancelRequest{JobID: id, QueueSeq: rec.QueueSeq, By: by, At: time.Now().UTC()}
	data, err := events.Encode(req)
	if err != nil {
		return nil, err
	}
	if _, err := r.cancels.Put(ctx, id, data); err != nil {
		return nil, fmt.Errorf("record the cancel request: %w", err)
	}
	if err := r.js.Conn().Publish(events.CancelSubject(id), data); err != nil {
		return nil, fmt.Errorf("announce the cancel request: %w", err)
	}
	if rec.Status == events.StatusQueued && rec.QueueSeq > 0 {
		err := r.jobs.DeleteMsg(ctx, rec.QueueSeq)
		switch {
		case err == nil:
			fin := &events.JobFinished{JobRef: jobRef(&rec), QueueSeq: rec.QueueSeq, Attempt: 0, Status: events.StatusCancelled,
				ExitCode: -1, Error: "cancelled by " + by + " before it started", FinishedAt: time.Now().UTC(),
				Author: rec.Author, Subject: rec.Subject, Class: rec.Class, TriggerID: rec.TriggerID}
			if err := r.publishResult(ctx, fin, "cancel"); err != nil {
				return nil, err
			}
		case events.MsgGone(err):
			// A runner took it meanwhile; it sees the request and stops.
		default:
			return nil, fmt.Errorf("take job %s out of the queue: %w", id, err)
		}
	}
	r.log.Info().Str("job_id", id).Str("repo", rec.Repo).Str("branch", rec.Branch).Str("commit", events.Short(rec.Commit)).
		Str("job", rec.Job).Str("arch", rec.Arch).Str("by", by).Msg("cancel requested")
	rec.Status = events.StatusCancelled
	return &rec, nil
}

func jobRef(r *Record) events.JobRef {
	return events.JobRef{JobID: r.JobID, Repo: r.Repo, Branch: r.Branch, Commit: r.Commit, Job: r.Job, Module: r.Module, Arch: r.Arch}
}

func (r *Reporter) publishResult(ctx context.Context, fin *events.JobFinished, kind string) error {
	data, err := events.Encode(fin)
	if err != nil {
		return err
	}
	_, err = r.js.Publish(ctx, events.ResultSubject(fin.Repo, fin.Branch, events.KindFinished), data,
		jetstream.WithMsgID(events.ResultMsgID(fin.JobID, fin.QueueSeq, fin.Attempt, kind)))
	return err
}

// --- the API's actions: JSON in, JSON out, Authorization: Bearer <token> ---

// requireToken refuses an API action without the token; it writes the error.
func (r *Reporter) requireToken(w http.ResponseWriter, req *http.Request) bool {
	switch {
	case !r.auth.enabled():
		writeError(w, http.StatusForbidden, "actions are off: start the reporter with --admin-token to enable them")
		return false
	}
	ok, err := r.auth.bearer(req)
	var throttled errThrottled
	switch {
	case errors.As(err, &throttled):
		w.Header().Set("Retry-After", fmt.Sprint(int(throttled.wait/time.Second)+1))
		writeError(w, http.StatusTooManyRequests, err.Error())
		return false
	case !ok:
		w.Header().Set("WWW-Authenticate", `Bearer realm="jetci"`)
		writeError(w, http.StatusUnauthorized, "send the admin token: Authorization: Bearer <token>")
		return false
	}
	return true
}

func readJSON(w http.ResponseWriter, req *http.Request, v any) bool {
	body := http.MaxBytesReader(w, req.Body, 64<<10)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		writeError(w, http.StatusBadRequest, "bad JSON body: "+err.Error())
		return false
	}
	return true
}

func (r *Reporter) apiTrigger(w http.ResponseWriter, req *http.Request) {
	if !r.requireToken(w, req) {
		return
	}
	var body struct {
		Repo   string `json:"repo"`
		Branch string `json:"branch"`
		Commit string `json:"commit"`
		Job    string `json:"job"`
		Arch   string `json:"arch"`
		Module string `json:"module"`
	}
	if !readJSON(w, req, &body) {
		return
	}
	res, err := r.trigger(req.Context(), events.TriggerRequest{Repo: body.Repo, Branch: body.Branch, Commit: body.Commit, Job: body.Job, Arch: body.Arch, Module: body.Module})
	if err != nil {
		writeError(w, statusOf(err), err.Error())
		return
	}
	writeJSON(w, http.StatusAccepted, res)
}

func (r *Reporter) apiRecheckJob(w http.ResponseWriter, req *http.Request) {
	if !r.requireToken(w, req) {
		return
	}
	res, err := r.recheckJob(req.Context(), req.PathValue("id"))
	if err != nil {
		writeError(w, statusOf(err), err.Error())
		return
	}
	writeJSON(w, http.StatusAccepted, res)
}

func (r *Reporter) apiCancel(w http.ResponseWriter, req *http.Request) {
	if !r.requireToken(w, req) {
		return
	}
	rec, err := r.cancel(req.Context(), req.PathValue("id"), "api")
	if err != nil {
		writeError(w, statusOf(err), err.Error())
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"job_id": rec.JobID, "status": "cancelling"})
}

// --- the pages' actions: form posts that redirect back with a message ---

func (r *Reporter) formAction(w http.ResponseWriter, req *http.Request) {
	req.Body = http.MaxBytesReader(w, req.Body, 64<<10)
	if err := req.ParseForm(); err != nil {
		r.errorPage(w, req, http.StatusBadRequest, "bad form: "+err.Error())
		return
	}
	if !r.auth.enabled() {
		r.errorPage(w, req, http.StatusForbidden, "This reporter is read-only: start it with --admin-token to enable actions.")
		return
	}
	if !r.auth.form(req) {
		r.errorPage(w, req, http.StatusForbidden, "Log in with the admin token first (or the form was stale: reload the page).")
		return
	}
	f := req.PostForm
	back := "/"
	var msg string
	var err error
	switch req.PathValue("action") {
	case "trigger":
		back = branchURL(f.Get("repo"), f.Get("branch"))
		if _, err = r.trigger(req.Context(), events.TriggerRequest{Repo: f.Get("repo"), Branch: f.Get("branch"), Commit: f.Get("commit")}); err == nil {
			msg = "queued"
		}
	case "recheck":
		if id := f.Get("job_id"); id != "" {
			back = "/job/" + url.PathEscape(id)
			if _, err = r.recheckJob(req.Context(), id); err == nil {
				msg = "recheck-job"
			}
		} else {
			back = commitURL(f.Get("repo"), f.Get("branch"), f.Get("commit"))
			if f.Get("commit") == "" {
				err = failf(http.StatusBadRequest, "commit is required")
			} else if _, err = r.trigger(req.Context(), events.TriggerRequest{Repo: f.Get("repo"), Branch: f.Get("branch"), Commit: f.Get("commit")}); err == nil {
				msg = "recheck-commit"
			}
		}
	case "recheck-branch":
		back = branchURL(f.Get("repo"), f.Get("branch"))
		if _, err = r.recheckBranch(req.Context(), f.Get("repo"), f.Get("branch"), "web"); err == nil {
			msg = "recheck-branch"
		}
	case "cancel":
		id := f.Get("job_id")
		back = "/job/" + url.PathEscape(id)
		if _, err = r.cancel(req.Context(), id, "web"); err == nil {
			msg = "cancel"
		}
	default:
		r.errorPage(w, req, http.StatusNotFound, "no such action")
		return
	}
	sep := "?"
	if strings.Contains(back, "?") {
		sep = "&"
	}
	if err != nil {
		// Said here: ?err= only takes the codes of flashMessages.
		r.errorPage(w, req, statusOf(err), "The action failed: "+err.Error())
		return
	}
	http.Redirect(w, req, back+sep+"msg="+msg, http.StatusSeeOther)
}

func (r *Reporter) pageLogin(w http.ResponseWriter, req *http.Request) {
	if !r.auth.enabled() {
		r.errorPage(w, req, http.StatusNotFound, "This reporter has no admin token: its pages are read-only.")
		return
	}
	r.render(w, req, "login", r.newPage(req, "Log in", "", safeNext(req.URL.Query().Get("next"))))
}

func (r *Reporter) postLogin(w http.ResponseWriter, req *http.Request) {
	req.Body = http.MaxBytesReader(w, req.Body, 16<<10)
	if err := req.ParseForm(); err != nil {
		r.errorPage(w, req, http.StatusBadRequest, "bad form")
		return
	}
	next := safeNext(req.PostForm.Get("next"))
	if !sameOrigin(req) {
		r.errorPage(w, req, http.StatusForbidden, "This form was posted from another site.")
		return
	}
	ok, err := r.auth.login(w, req, req.PostForm.Get("token"))
	var throttled errThrottled
	switch {
	case errors.As(err, &throttled):
		w.Header().Set("Retry-After", fmt.Sprint(int(throttled.wait/time.Second)+1))
		http.Redirect(w, req, "/login?err=throttled&next="+url.QueryEscape(next), http.StatusSeeOther)
		return
	case err != nil:
		r.errorPage(w, req, http.StatusServiceUnavailable, err.Error())
		return
	case !ok:
		http.Redirect(w, req, "/login?err=wrong-token&next="+url.QueryEscape(next), http.StatusSeeOther)
		return
	}
	http.Redirect(w, req, next, http.StatusSeeOther)
}

func (r *Reporter) postLogout(w http.ResponseWriter, req *http.Request) {
	if !sameOrigin(req) {
		r.errorPage(w, req, http.StatusForbidden, "This form was posted from another site.")
		return
	}
	r.auth.logout(w, req)
	http.Redirect(w, req, "/", http.StatusSeeOther)
}

// safeNext keeps a redirect target on this site.
func safeNext(s string) string {
	if !strings.HasPrefix(s, "/") || strings.HasPrefix(s, "//") || strings.HasPrefix(s, "/\\") {
		return "/"
	}
	return s
}
