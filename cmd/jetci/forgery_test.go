package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter"
)

// TestResultsOnlyFromTheirRunner: with the shipped nats.conf and every
// service under its own user, an attacker holding the runner password — and
// even another runner's identity — cannot change a job's result or log:
//   - a result without a signature (the runner password alone) is refused;
//   - a result signed by another registered runner for the delivery runner
//     r1 holds waits until r1's run ends, then is refused (same delivery
//     token) or kept aside as disputed (made-up token), never the job's
//     result;
//   - a replay of a real, signed result is refused;
//   - a log Put over a finished job's log is refused when read (409);
//
// each is listed for the admins at /api/v1/forgeries, and the held job ends
// with r1's own result.
func TestResultsOnlyFromTheirRunner(t *testing.T) {
	url, pw := startShippedBroker(t)
	repo := newGitRepo(t)
	flag := filepath.Join(t.TempDir(), "go")
	sha := repo.Commit("two jobs", map[string]string{".jetci.yml": "jobs:\n" +
		"  quick:\n    steps: [echo quick output]\n" +
		"  hold:\n    steps: ['while [ ! -f " + flag + " ]; do sleep 0.05; done; echo held output']\n"})
	httpAddr := reserveAddr(t)
	base := "http://" + httpAddr
	data := t.TempDir()
	ctx, start, _ := serviceGroup(t)
	start(ctx, append([]string{"observer", "--nats", url, "--repo", repo.Dir, "--poll", "100ms", "--cache", data + "/obs", "--log-format", "json"}, as(pw, "observer")...)...)
	start(ctx, append([]string{"dispatcher", "--nats", url, "--log-format", "json"}, as(pw, "dispatcher")...)...)
	start(ctx, append([]string{"reporter", "--nats", url, "--http", httpAddr, "--admin-token", "test-admin-token", "--log-format", "json"}, as(pw, "reporter")...)...)
	start(ctx, append(append([]string{"runner", "--nats", url, "--id", "r1", "--work", data + "/r1", "--slots", "2", "--log-format", "json",
		"--exec", "host"}, // the hold step waits for a file outside its workspace
		as(pw, "runner")...), identity(t, url, pw, "r1")...)...)
	// The attacker: the runner password, and the seed of another runner's identity.
	r2 := identity(t, url, pw, "r2")
	seed, err := os.ReadFile(r2[1])
	if err != nil {
		t.Fatal(err)
	}
	r2key, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(seed))))
	if err != nil {
		t.Fatal(err)
	}
	_, ajs := connectAs(t, url, pw, events.RoleAdmin)
	_, rjs := connectAs(t, url, pw, events.RoleRunner)
	admin := as(pw, "admin")
	read := func() ([]reporter.Record, error) { return resultsJSON(t, url, append([]string{"--all"}, admin...)...) }
	byJob := func() map[string]reporter.Record {
		recs, err := read()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]reporter.Record{}
		for _, r := range recs {
			if r.Commit == sha {
				out[r.Job] = r
			}
		}
		return out
	}
	brokertest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		j := byJob()
		if j["quick"].Status != events.StatusPassed || j["hold"].Status != events.StatusRunning {
			return fmt.Errorf("quick %s, hold %s", j["quick"].Status, j["hold"].Status)
		}
		return nil
	})
	jobs := byJob()
	quick, hold := jobs["quick"], jobs["hold"]
	results, err := ajs.Stream(ctx, events.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	lastMsg := func(kind string, jobID string) *jetstream.RawStreamMsg {
		t.Helper()
		var found *jetstream.RawStreamMsg
		info, err := results.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
			m, err := results.GetMsg(ctx, seq)
			if err != nil || !strings.HasSuffix(m.Subject, "."+kind) {
				continue
			}
			if strings.Contains(string(m.Data), `"job_id":"`+jobID+`"`) {
				found = m
			}
		}
		if found == nil {
			t.Fatalf("no %s event of %s", kind, jobID)
		}
		return found
	}
	holdStarted, err := events.DecodeAs[events.JobStarted](lastMsg(events.KindStarted, hold.JobID).Data)
	if err != nil {
		t.Fatal(err)
	}
	subject := events.ResultSubject("proj", "main", events.KindFinished)
	forged := func(runner, run, token string) []byte {
		fin := &events.JobFinished{JobRef: holdStarted.JobRef, QueueSeq: holdStarted.QueueSeq, Attempt: holdStarted.Attempt,
			Runner: runner, Run: run, Token: token, Status: events.StatusFailed, ExitCode: 1, Error: "FORGED",
			FinishedAt: time.Now().UTC()}
		b, err := events.Encode(fin)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	publish := func(data []byte, sig string) {
		t.Helper()
		m := nats.NewMsg(subject)
		m.Data = data
		if sig != "" {
			m.Header.Set(events.SigHeader, sig)
		}
		if _, err := rjs.PublishMsg(ctx, m); err != nil {
			t.Fatalf("the runner user may publish results (the reporter decides): %v", err)
		}
	}
	sign := func(data []byte) string {
		s, err := events.SignRunner(r2key, "r2", data)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	// 1. The runner password alone: no signature, or one made up.
	publish(forged("r1", holdStarted.Run, holdStarted.Token), "")
	publish(forged("r1", holdStarted.Run, holdStarted.Token), "runner r1 AAAA")
	// 2. Another runner's identity: it may not speak for r1, and its own
	// claim on r1's delivery is refused (same token) or disputed (made up).
	asR1 := forged("r1", holdStarted.Run, holdStarted.Token)
	publish(asR1, sign(asR1))
	sameToken := forged("r2", "forgedrun1", holdStarted.Token)
	publish(sameToken, sign(sameToken))
	madeUp := forged("r2", "forgedrun2", "1.1")
	publish(madeUp, sign(madeUp))
	// 3. A replay of quick's real result, byte for byte with its signature.
	real := lastMsg(events.KindFinished, quick.JobID)
	publish(real.Data, real.Header.Get(events.SigHeader))
	// 4. The log of quick overwritten.
	logs, err := rjs.ObjectStore(ctx, events.BucketLogs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := logs.PutString(ctx, quick.Log, "FORGED LOG\n"); err != nil {
		t.Fatalf("put over the log: %v", err)
	}

	get := func(path string, token string) (int, string) {
		req, _ := http.NewRequest("GET", base+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	var list struct{ Forgeries []reporter.Forgery }
	want := []string{"no Jetci-Sig header", "bad signature of runner identity", "may not speak for runner \"r1\"",
		"replay", "log replaced after its run"}
	brokertest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if code, body := get("/api/v1/jobs/"+quick.JobID+"/log", ""); code != http.StatusConflict || strings.Contains(body, "FORGED") {
			return fmt.Errorf("the overwritten log: %d %s", code, body)
		}
		code, body := get("/api/v1/forgeries", "test-admin-token")
		if code != http.StatusOK {
			return fmt.Errorf("forgeries: %d %s", code, body)
		}
		if err := json.Unmarshal([]byte(body), &list); err != nil {
			return err
		}
		for _, w := range want {
			if !strings.Contains(body, strings.ReplaceAll(w, `"`, `\"`)) {
				return fmt.Errorf("no forgery %q listed yet in %s", w, body)
			}
		}
		return nil
	})
	if code, _ := get("/api/v1/forgeries", ""); code != http.StatusForbidden {
		t.Errorf("forgeries without the token: %d, want 403", code)
	}
	if code, body := get("/job/"+quick.JobID, ""); strings.Contains(body, "FORGED LOG") || !strings.Contains(body, "replaced after its run") {
		t.Errorf("the job page (%d) shows the overwritten log or does not say it is refused:\n%s", code, body)
	}
	// Nothing forged became a result: quick is as it was, hold still runs,
	// then ends with r1's own result; the made-up claim is kept aside.
	jobs = byJob()
	if q := jobs["quick"]; q.Status != events.StatusPassed || len(q.Attempts) != 1 || q.Runner != "r1" {
		t.Errorf("quick after the replay: %s by %s, %d attempts", q.Status, q.Runner, len(q.Attempts))
	}
	if h := jobs["hold"]; h.Status != events.StatusRunning || h.Error != "" {
		t.Errorf("hold after the forgeries: %s %q", h.Status, h.Error)
	}
	// r2's claims on the delivery r1 holds wait until r1's run ends; then,
	// made while it ran, they are refused (same delivery token) or kept
	// aside as disputed (a made-up one).
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	brokertest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		_, body := get("/api/v1/forgeries", "test-admin-token")
		for _, w := range []string{"was held by runner r1", "while runner r1"} {
			if !strings.Contains(body, w) {
				return fmt.Errorf("no forgery %q listed yet", w)
			}
		}
		return nil
	})
	brokertest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		h := byJob()["hold"]
		if h.Status != events.StatusPassed || h.Runner != "r1" || h.Attempt != 1 {
			return fmt.Errorf("hold: %s by %s, attempt %d", h.Status, h.Runner, h.Attempt)
		}
		disputed := 0
		for _, a := range h.Attempts {
			if a.Disputed != "" {
				disputed++
				if a.Runner != "r2" || a.Error != "FORGED" {
					t.Errorf("disputed attempt: %+v", a)
				}
			}
		}
		if disputed != 1 || len(h.Attempts) != 2 {
			return fmt.Errorf("hold: %d attempts, %d disputed; want r1's and r2's disputed claim", len(h.Attempts), disputed)
		}
		return nil
	})
}

// TestRunnerWithoutIdentitySaysWhy: under the shipped nats.conf a runner
// without --identity cannot register one of its own, and says what to run.
func TestRunnerWithoutIdentitySaysWhy(t *testing.T) {
	url, pw := startShippedBroker(t)
	var out, errb strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args := append([]string{"runner", "--nats", url, "--id", "nokey", "--work", t.TempDir(), "--log-format", "json"}, as(pw, "runner")...)
	code := (&Main{Stdout: &out, Stderr: &errb}).Run(ctx, args)
	if code == 0 || !strings.Contains(errb.String(), "jetci setup --runner-identity nokey=FILE") ||
		!strings.Contains(errb.String(), "permission denied: runner may not publish to \"$KV.jetci-keys.runner.nokey\"") {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
}
