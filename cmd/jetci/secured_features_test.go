package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter"
)

// TestSecuredModulesCulpritAndTests: the features that came after the roles —
// modules, culprit finding (its consumers, bucket, stream, bisect class and
// triggers) and per-test history — work with every service under its own user
// of the shipped nats.conf, without one refusal. A module's test breaks at
// commit 5 of 8 untested commits; the dispatcher bisects it under the
// dispatcher user, runners run the bisect class, and the reporter keeps the
// tests and shows the bisection.
func TestSecuredModulesCulpritAndTests(t *testing.T) {
	const n, bad = 8, 5
	pw := setRolePasswords(t)
	repo := newGitRepo(t)
	pipeline := "modules:\n" +
		"  core: {paths: [core], jobs: {test: {steps: \"true\"}}}\n" +
		"  app:\n" +
		"    paths: [app]\n" +
		"    depends: [core]\n" +
		"    jobs:\n" +
		"      test:\n" +
		"        steps:\n" +
		"          - echo '{\"Action\":\"pass\",\"Package\":\"example.com/app\",\"Test\":\"TestOK\",\"Elapsed\":0.25}'\n" +
		"          - test ! -f core/broken\n"
	files := func(i int) map[string]string {
		f := map[string]string{"core/v.txt": fmt.Sprint(i), "app/main.txt": "app\n"}
		if i >= bad {
			f["core/broken"] = "yes"
		}
		return f
	}
	f := files(1)
	f[".jetci.yml"] = pipeline
	shas := []string{"", repo.Commit("commit 1", f)}
	natsAddr, httpAddr := reserveAddr(t), reserveAddr(t)
	url := "nats://" + natsAddr
	data := t.TempDir()
	ctx, start, logs := serviceGroup(t)
	start(ctx, append([]string{"server", "--config", "../../nats.conf", "--listen", natsAddr, "--monitor", "127.0.0.1:0", "--store", data + "/nats", "--log-format", "json"}, as(pw, "admin")...)...)
	brokertest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(logs.String(), "jetci streams ready") {
			return fmt.Errorf("streams not set up yet")
		}
		return nil
	})
	start(ctx, append([]string{"observer", "--nats", url, "--repo", repo.Dir, "--poll", "100ms", "--cache", data + "/obs", "--log-format", "json"}, as(pw, "observer")...)...)
	start(ctx, append([]string{"dispatcher", "--nats", url, "--coalesce", "proj:main", "--bisect", "proj:main", "--log-format", "json"}, as(pw, "dispatcher")...)...)
	start(ctx, append([]string{"reporter", "--nats", url, "--http", httpAddr, "--log-format", "json"}, as(pw, "reporter")...)...)
	admin := as(pw, "admin")
	all := func() ([]reporter.Record, error) { return resultsJSON(t, url, append([]string{"--all"}, admin...)...) }
	runner := func(name string) context.CancelFunc {
		rctx, stop := context.WithCancel(ctx)
		start(rctx, append(append([]string{"runner", "--nats", url, "--id", name, "--work", data + "/" + name, "--slots", "2", "--log-format", "json"},
			as(pw, "runner")...), identity(t, url, pw, name)...)...)
		return stop
	}
	stop := runner("r1")
	brokertest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		recs, err := all()
		if err != nil {
			return err
		}
		passed := 0
		for _, r := range recs {
			if r.Commit == shas[1] && r.Status == "passed" {
				passed++
			}
		}
		if passed != 2 {
			return fmt.Errorf("%d of 2 module jobs of commit 1 passed", passed)
		}
		return nil
	})
	stop()
	for i := 2; i <= n; i++ {
		shas = append(shas, repo.Commit(fmt.Sprintf("commit %d", i), files(i)))
	}
	// Commits 2..n-1 are superseded while no runner runs; commit n waits.
	brokertest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		recs, err := all()
		if err != nil {
			return err
		}
		cancelled, queued := 0, 0
		for _, r := range recs {
			switch {
			case r.Commit == shas[n] && r.Status == "queued":
				queued++
			case r.Commit != shas[1] && r.Commit != shas[n] && r.Status == "cancelled":
				cancelled++
			}
		}
		if queued != 2 || cancelled != 2*(n-2) {
			return fmt.Errorf("%d queued at the head, %d superseded; want 2 and %d", queued, cancelled, 2*(n-2))
		}
		return nil
	})
	runner("r2")

	// The bisection ends on commit 5, as the dispatcher user sees it in its bucket.
	nc, js, err := events.Connect(url, events.ConnectOptions{Name: "test", Log: zerolog.Nop(),
		Role: events.RoleAdmin, Auth: events.Auth{User: "admin", Password: pw["admin"]}})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var b events.Bisection
	brokertest.CheckFor(t, 120*time.Second, 100*time.Millisecond, func() error {
		kv, err := js.KeyValue(context.Background(), events.BucketBisect)
		if err != nil {
			return err
		}
		keys, err := kv.ListKeysFiltered(context.Background(), "b.>")
		if err != nil {
			return err
		}
		for k := range keys.Keys() {
			e, err := kv.Get(context.Background(), k)
			if err != nil {
				return err
			}
			if err := json.Unmarshal(e.Value(), &b); err != nil {
				return err
			}
		}
		if !b.Done() {
			return fmt.Errorf("bisection %q, %d steps", b.State, len(b.Steps))
		}
		return nil
	})
	if b.State != events.BisectFound || b.Culprit == nil || b.Culprit.Commit != shas[bad] || b.Name() != "app/test" {
		t.Fatalf("bisection %s of %s (%s), culprit %+v; want found at commit %d", b.State, b.Name(), b.Reason, b.Culprit, bad)
	}
	// The reporter (its user) keeps the test history and shows the bisection.
	var slowest struct{ Tests []struct{ Name string } }
	brokertest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		if err := getJSON("http://"+httpAddr+"/api/v1/tests/slowest?repo=proj&branch=main", &slowest); err != nil {
			return err
		}
		if len(slowest.Tests) == 0 {
			return fmt.Errorf("no test history yet")
		}
		return nil
	})
	if slowest.Tests[0].Name != "example.com/app.TestOK" {
		t.Errorf("slowest tests %+v", slowest.Tests)
	}
	var bis struct{ Bisections []events.Bisection }
	if err := getJSON("http://"+httpAddr+"/api/v1/bisections?repo=proj&branch=main", &bis); err != nil || len(bis.Bisections) != 1 {
		t.Fatalf("GET /api/v1/bisections: %v %+v", err, bis)
	}
	if l := logs.String(); strings.Contains(l, "Violation") || strings.Contains(l, "permission denied") {
		for _, line := range strings.Split(l, "\n") {
			if strings.Contains(line, "Violation") || strings.Contains(line, "permission denied") {
				t.Error(line)
			}
		}
	}
}

// serviceGroup runs jetci commands in this process, as separate services
// would run: start(ctx, args...) runs one until ctx (or the test) ends. When
// the test ends every one is stopped and waited for, and their shared log is
// printed if the test failed.
func serviceGroup(t *testing.T) (context.Context, func(ctx context.Context, args ...string), *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	logs := &syncBuffer{}
	start := func(ctx context.Context, args ...string) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code := (&Main{Stdout: logs, Stderr: logs}).Run(ctx, args); code != 0 {
				t.Errorf("jetci %s exited %d", args[0], code)
			}
		}()
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		if t.Failed() {
			t.Logf("logs:\n%s", logs.String())
		}
	})
	return ctx, start, logs
}
