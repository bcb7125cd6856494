package reporter

import (
	"encoding/json"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/jetci/jetci/events"
)

// FuzzRecordEntry: whatever a results bucket entry holds, reading it either
// gives a valid record or an error, and a runner's event is admitted or
// refused against it without a panic.
func FuzzRecordEntry(f *testing.F) {
	f.Add(`{"x":1}`, "a.b.c")
	f.Add(`{"job_id":"0123456789abcdef0123","repo":"proj","branch":"main","commit":"aa","job":"t","arch":"amd64","status":"passed",`+
		`"attempts":[{"n":1,"queue_seq":1,"delivery":1,"run":"r","delivery_token":"1.1","status":"passed","result_seq":9}]}`,
		events.RecordKey("proj", "main", "0123456789abcdef0123"))
	f.Add(`{"job_id":"0123456789abcdef0123","status":"weird"}`, "")
	f.Add(`[]`, "")
	f.Fuzz(func(t *testing.T, data, key string) {
		var r Record
		if json.Unmarshal([]byte(data), &r) != nil {
			return
		}
		if err := r.Validate(key); err == nil && key != events.RecordKey(r.Repo, r.Branch, r.JobID) {
			t.Errorf("record under the wrong key %q accepted", key)
		}
		ev := &events.JobFinished{JobRef: events.JobRef{JobID: r.JobID}, QueueSeq: 1, Attempt: 1, Runner: "x", Run: "r2",
			Token: "1.1", Status: events.StatusFailed}
		if why, err := r.Admit(ev, 10, time.Time{}, nil); err == nil && why != "" {
			r.Dispute(ev, why)
		} else if err == nil {
			r.Apply(ev)
		}
	})
}

// FuzzAuthInputs: session cookies, Origin and Referer headers and client
// addresses of any shape are judged without a panic; only 64 hex digits are
// a session id, and a foreign origin never passes.
func FuzzAuthInputs(f *testing.F) {
	f.Add("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "http://ci.example", "", "10.0.0.1:1234")
	f.Add("zz", "https://evil.example", "http://ci.example/x", "[2001:db8::1]:80")
	f.Add("", "", "not a url", "garbage")
	f.Add("", "null", "", "")
	f.Fuzz(func(t *testing.T, cookie, origin, referer, remote string) {
		if validSessionID(cookie) && len(cookie) != 64 {
			t.Errorf("session id %q", cookie)
		}
		req := httptest.NewRequest("POST", "http://ci.example/action/cancel", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Referer", referer)
		req.RemoteAddr = remote
		_ = clientOf(req)
		if origin == "https://evil.example" && sameOrigin(req) {
			t.Error("a foreign origin passes")
		}
		l := newLimiter()
		l.fail(clientOf(req))
		_ = l.wait(clientOf(req)) + time.Duration(0)
	})
}
