package reporter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/events"
)

// ansiRE matches terminal colour and cursor sequences, which pages do not show.
var ansiRE = regexp.MustCompile(`\x1b\[[0-9;?]*[ -/]*[@-~]`)

// storedLog reads a finished attempt's log from the logs bucket, keeping the
// last limit bytes; cut says whether the start was left out.
func (r *Reporter) storedLog(ctx context.Context, name string, limit int64) (string, bool, error) {
	return r.checkedLog(ctx, name, "", "", limit)
}

// checkedLog is storedLog for a log whose signed digest is known.
func (r *Reporter) checkedLog(ctx context.Context, name, digest, jobID string, limit int64) (string, bool, error) {
	text, _, cut, err := r.logLines(ctx, name, digest, jobID, limit)
	return text, cut, err
}

// logLines is checkedLog saying also the number of the first line it
// returns (1 unless cut). A cut log starts at a line boundary: the partial
// line the last limit bytes begin in is left out.
func (r *Reporter) logLines(ctx context.Context, name, digest, jobID string, limit int64) (string, int, bool, error) {
	obj, err := r.openObject(ctx, r.logs, "log", name, digest, jobID)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return "", 0, false, errors.New("it is not stored: not yet (its runner keeps it until the log store answers) or no longer (expired by the log retention)")
	}
	if err != nil {
		return "", 0, false, err
	}
	defer obj.Close()
	ring := &tail{max: limit}
	if _, err := io.Copy(ring, obj); err != nil {
		return "", 0, false, err
	}
	buf, first := ring.lines()
	return ansiRE.ReplaceAllString(string(buf), ""), first, ring.cut, nil
}

// tail keeps the last max bytes written to it, counting the lines that
// went.
type tail struct {
	buf     []byte
	max     int64
	cut     bool
	dropped int // newlines in the bytes left out
}

func (t *tail) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if over := int64(len(t.buf)) - t.max; over > 0 {
		t.dropped += bytes.Count(t.buf[:over], []byte{'\n'})
		t.buf = append(t.buf[:0], t.buf[over:]...)
		t.cut = true
	}
	return len(p), nil
}

// lines returns what the tail kept from its first whole line on, and that
// line's number (1-based) in the whole text.
func (t *tail) lines() ([]byte, int) {
	if !t.cut {
		return t.buf, 1
	}
	i := bytes.IndexByte(t.buf, '\n')
	if i < 0 {
		return t.buf, t.dropped + 1 // one line longer than the limit: its end
	}
	return t.buf[i+1:], t.dropped + 2
}

// liveLog reads what a running attempt has printed so far from JETCI_LOGS. It
// returns the text and the stream sequence to continue after.
func (r *Reporter) liveLog(ctx context.Context, jobID string, seq, delivery uint64) (string, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cons, err := r.js.OrderedConsumer(ctx, events.StreamLogs, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.LogSubject(jobID)},
	})
	if err != nil {
		return "", 0, err
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return "", 0, err
	}
	pending := info.NumPending
	var sb tail
	sb.max = pageLogLimit
	var last uint64
	for pending > 0 {
		batch, err := cons.FetchNoWait(int(min(pending, 256)))
		if err != nil {
			return "", 0, err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			pending--
			meta, err := m.Metadata()
			if err != nil {
				continue
			}
			last = meta.Sequence.Stream
			if c, ok := chunkOf(m.Data(), seq, delivery); ok {
				_, _ = sb.Write([]byte(c))
			}
		}
		if batch.Error() != nil {
			return "", 0, batch.Error()
		}
		if n == 0 {
			break // the rest expired meanwhile
		}
	}
	return ansiRE.ReplaceAllString(string(sb.buf), ""), last, nil
}

// chunkOf returns the text of a live-log message if it belongs to the given
// attempt. Chunks from runners older than QueueSeq in chunks carry 0 there.
func chunkOf(data []byte, seq, delivery uint64) (string, bool) {
	c, err := events.DecodeAs[events.LogChunk](data)
	if err != nil || c.Attempt != delivery || c.QueueSeq != 0 && c.QueueSeq != seq {
		return "", false
	}
	return c.Data, true
}

// apiLogStream follows a running job's output as server-sent events: "chunk"
// events carry text (a JSON string), "done" says the attempt ended. ?after=N
// skips the live-log messages up to stream sequence N (what the page already
// shows).
func (r *Reporter) apiLogStream(w http.ResponseWriter, req *http.Request) {
	id := req.PathValue("id")
	rec, ok := r.view.Job(id)
	if !ok {
		writeError(w, http.StatusNotFound, "no job "+id)
		return
	}
	sse, ok := startSSE(w)
	if !ok {
		writeError(w, http.StatusInternalServerError, "streaming unsupported")
		return
	}
	if rec.Status != events.StatusRunning {
		sse.send("done", `"`+string(rec.Status)+`"`, "")
		return
	}
	ctx := req.Context()
	changes, stop := r.view.Subscribe()
	defer stop()
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{events.LogSubject(id)}}
	var after uint64
	if _, err := fmt.Sscan(req.URL.Query().Get("after"), &after); err == nil && after > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, after+1
	}
	cons, err := r.js.OrderedConsumer(ctx, events.StreamLogs, cfg)
	if err != nil {
		sse.send("failed", jsonString(err.Error()), "")
		return
	}
	msgs, err := cons.Messages()
	if err != nil {
		sse.send("failed", jsonString(err.Error()), "")
		return
	}
	defer msgs.Stop()
	chunks := make(chan jetstream.Msg, 64)
	go func() {
		defer close(chunks)
		for {
			m, err := msgs.Next()
			if err != nil {
				return
			}
			select {
			case chunks <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	var ending <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.closing:
			return
		case <-keepalive.C:
			sse.comment()
		case m, ok := <-chunks:
			if !ok {
				return
			}
			if text, ok := chunkOf(m.Data(), rec.QueueSeq, rec.Delivery); ok {
				meta, _ := m.Metadata()
				id := ""
				if meta != nil {
					id = fmt.Sprint(meta.Sequence.Stream)
				}
				sse.send("chunk", jsonString(ansiRE.ReplaceAllString(text, "")), id)
			}
		case c := <-changes:
			if c.Record != nil && c.Record.JobID == id && c.Record.Status != events.StatusRunning && ending == nil {
				// The attempt ended; its last output was published before the
				// result, so it is here within moments.
				ending = time.After(500 * time.Millisecond)
			}
		case <-ending:
			sse.send("done", `"ended"`, "")
			return
		}
	}
}

// apiJobLog serves one attempt's full log as text: ?attempt=N, default the
// record's current attempt.
func (r *Reporter) apiJobLog(w http.ResponseWriter, req *http.Request) {
	rec, a, ok := r.attemptOf(w, req)
	if !ok {
		return
	}
	r.serveLog(w, req, rec, a)
}

// apiLog is the older /api/v1/logs/{job}/{attempt} form of apiJobLog.
func (r *Reporter) apiLog(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	q.Set("attempt", req.PathValue("attempt"))
	req.URL.RawQuery = q.Encode()
	req.SetPathValue("id", req.PathValue("job"))
	r.apiJobLog(w, req)
}

func (r *Reporter) serveLog(w http.ResponseWriter, req *http.Request, rec Record, a *Attempt) {
	if a.Log == "" {
		msg := fmt.Sprintf("job %s attempt %d has no stored log", rec.JobID, a.N)
		if a.Status == events.StatusRunning {
			msg += " yet: it is running; see /api/v1/jobs/" + rec.JobID + "/log/stream"
		}
		writeError(w, http.StatusNotFound, msg)
		return
	}
	obj, err := r.openObject(req.Context(), r.logs, "log", a.Log, a.LogDigest, rec.JobID)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		writeError(w, http.StatusGone, fmt.Sprintf("the log of job %s attempt %d expired", rec.JobID, a.N))
		return
	}
	if errors.Is(err, errReplaced) {
		writeError(w, http.StatusConflict, fmt.Sprintf("the log of job %s attempt %d is refused: %v", rec.JobID, a.N, err))
		return
	}
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	defer obj.Close()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = io.Copy(w, obj)
}

// attemptOf finds the job of {id} and the attempt ?attempt=N names (default:
// the current one, or the last one that has started). It writes the error
// itself.
func (r *Reporter) attemptOf(w http.ResponseWriter, req *http.Request) (Record, *Attempt, bool) {
	id := req.PathValue("id")
	if !events.ValidJobID(id) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%q is not a job id (20 hex digits)", id))
		return Record{}, nil, false
	}
	rec, ok := r.view.Job(id)
	if !ok {
		writeError(w, http.StatusNotFound, "no job "+id)
		return rec, nil, false
	}
	n := rec.Attempt
	if s := req.URL.Query().Get("attempt"); s != "" {
		if _, err := fmt.Sscan(s, &n); err != nil || strings.ContainsAny(s, "+-") {
			writeError(w, http.StatusBadRequest, "attempt must be a number")
			return rec, nil, false
		}
	} else if n == 0 && len(rec.Attempts) > 0 {
		n = rec.Attempts[len(rec.Attempts)-1].N
	}
	a := rec.Find(n)
	if a == nil {
		writeError(w, http.StatusNotFound, fmt.Sprintf("job %s has no attempt %d", id, n))
		return rec, nil, false
	}
	return rec, a, true
}
