package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter"
)

// leaderLoss is what one run of clusterLeaderLoss measured.
type leaderLoss struct {
	killed   string        // the node killed: the one leading JETCI_JOBS
	pause    time.Duration // the longest time without a job start, from the kill on
	baseline time.Duration // the same before the kill
	jobs     int
}

// clusterLeaderLoss runs jetci as the README deploys it on several machines —
// a 3-node cluster of `jetci server` processes loaded with the shipped role
// users, and every service its own process with its own user — under a steady
// stream of commits, kills (SIGKILL) the node leading JETCI_JOBS, and checks
// that every commit ends with exactly one passed record, that every record's
// log is stored and whole, and that the logs bucket holds no chunks of an
// unfinished upload.
func clusterLeaderLoss(t testing.TB, commits int) leaderLoss {
	bin := jetciBinary(t)
	dir := t.TempDir()
	pw := map[string]string{}
	for _, r := range events.Roles() {
		pw[r.Name] = "test-" + r.Name + "-secret"
		os.Setenv(events.PasswordVar(r.Name), pw[r.Name]) // the servers read them; restored below
		t.Cleanup(func() { os.Unsetenv(events.PasswordVar(r.Name)) })
	}
	accounts, err := os.ReadFile("../../jetci-accounts.conf")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "jetci-accounts.conf"), accounts, 0o644); err != nil {
		t.Fatal(err)
	}
	var clients, clusterAddrs, routes, urls []string
	for range 3 {
		clients = append(clients, reserveAddr(t))
		clusterAddrs = append(clusterAddrs, reserveAddr(t))
	}
	for _, a := range clusterAddrs {
		routes = append(routes, "nats-route://"+a)
	}
	nodes := map[string]*service{}
	for i := range 3 {
		name := "n" + strconv.Itoa(i+1)
		conf := filepath.Join(dir, name+".conf")
		text := fmt.Sprintf(nodeConf, name, clients[i], filepath.Join(dir, name), clusterAddrs[i], strings.Join(routes, ", ")) +
			"include \"jetci-accounts.conf\"\n"
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		n := &service{name: name, args: []string{"server", "--config", conf, "--log-format", "json",
			"--nats-user", "admin", "--nats-password", pw["admin"]}}
		n.start(t, bin)
		t.Cleanup(n.kill)
		nodes[name] = n
		urls = append(urls, "nats://"+clients[i])
	}
	url := strings.Join(urls, ",")
	results := func(extra ...string) ([]reporter.Record, error) {
		return resultsJSON(t, url, append([]string{"--nats-user", "admin", "--nats-password", pw["admin"]}, extra...)...)
	}
	brokertest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		_, err := results()
		return err
	})

	repo := newGitRepo(t)
	first := repo.Commit("pipeline", map[string]string{".jetci.yml": "jobs:\n  check:\n    steps: [\"echo start; sleep 0.3; echo done\"]\n"})
	cmd := func(name, role string, extra ...string) []string {
		return append(append([]string{name, "--nats", url, "--nats-user", role, "--nats-password", pw[role]}, extra...), "--log-format", "json")
	}
	services := []*service{
		{name: "observer", args: cmd("observer", "observer", "--repo", repo.Dir, "--poll", "100ms", "--cache", filepath.Join(dir, "obs"))},
		{name: "dispatcher", args: cmd("dispatcher", "dispatcher")},
		{name: "reporter", args: cmd("reporter", "reporter", "--http", "")},
		{name: "runner1", args: cmd("runner", "runner", append([]string{"--work", filepath.Join(dir, "r1"), "--slots", "2", "--id", "r1"}, identity(t, url, pw, "r1")...)...)},
		{name: "runner2", args: cmd("runner", "runner", append([]string{"--work", filepath.Join(dir, "r2"), "--slots", "2", "--id", "r2"}, identity(t, url, pw, "r2")...)...)},
	}
	for _, s := range services {
		s.start(t, bin)
		t.Cleanup(s.kill)
	}
	t.Cleanup(func() {
		if d := os.Getenv("JETCI_DUMP_LOGS"); d != "" { // for a post-mortem of the pause
			for _, s := range append(services, nodes["n1"], nodes["n2"], nodes["n3"]) {
				_ = os.WriteFile(filepath.Join(d, s.name+".log"), []byte(s.logs.String()), 0o644)
			}
		}
		if t.Failed() {
			for _, s := range append(services, nodes["n1"], nodes["n2"], nodes["n3"]) {
				t.Logf("%s log:\n%s", s.name, lastLines(s.logs.String(), 40))
			}
		}
	})
	waitStatus(t, func() ([]reporter.Record, error) { return results() }, first, "passed")

	anc, ajs, err := events.Connect(url, events.ConnectOptions{Name: "test-admin", Role: events.RoleAdmin, Log: zerolog.Nop(),
		Auth: events.Auth{User: events.RoleAdmin, Password: pw[events.RoleAdmin]}})
	if err != nil {
		t.Fatal(err)
	}
	defer anc.Close()
	ctx := context.Background()
	var out leaderLoss
	var killedAt time.Time
	all := []string{first}
	for i := range commits {
		all = append(all, repo.Commit("c"+strconv.Itoa(i), map[string]string{"n.txt": strconv.Itoa(i)}))
		if i == commits/3 {
			st, err := ajs.Stream(ctx, events.StreamJobs)
			if err != nil {
				t.Fatal(err)
			}
			info, err := st.Info(ctx)
			if err != nil || info.Cluster == nil || nodes[info.Cluster.Leader] == nil {
				t.Fatalf("leader of %s: %+v, %v", events.StreamJobs, info.Cluster, err)
			}
			out.killed = info.Cluster.Leader
			nodes[out.killed].kill()
			killedAt = time.Now()
		}
		time.Sleep(150 * time.Millisecond)
	}
	var recs []reporter.Record
	brokertest.CheckFor(t, 3*time.Minute, 250*time.Millisecond, func() error {
		var err error
		if recs, err = results(); err != nil {
			return err
		}
		per := map[string]int{}
		for _, r := range recs {
			per[r.Commit]++
			if r.Status != "passed" {
				return fmt.Errorf("commit %s: %s %s", r.Commit[:8], r.Status, r.Error)
			}
		}
		for _, c := range all {
			if per[c] != 1 {
				return fmt.Errorf("commit %s has %d records", c[:8], per[c])
			}
		}
		return nil
	})
	out.jobs = len(recs)

	// The pause: the longest time without a job start after the kill, against
	// the longest before it.
	var starts []time.Time
	for _, r := range recs {
		for _, a := range r.Attempts {
			if !a.StartedAt.IsZero() {
				starts = append(starts, a.StartedAt)
			}
		}
	}
	sort.Slice(starts, func(i, j int) bool { return starts[i].Before(starts[j]) })
	if os.Getenv("JETCI_DUMP_LOGS") != "" {
		t.Logf("killed at %s", killedAt.UTC().Format(time.RFC3339Nano))
		for _, s := range starts {
			t.Logf("start %s", s.UTC().Format(time.RFC3339Nano))
		}
	}
	prev := time.Time{}
	for _, s := range starts {
		if !prev.IsZero() {
			gap := s.Sub(prev)
			if s.After(killedAt) && gap > out.pause {
				out.pause = gap
				if prev.Before(killedAt) {
					out.pause = s.Sub(killedAt)
				}
			} else if !s.After(killedAt) && prev.After(starts[0].Add(2*time.Second)) && gap > out.baseline {
				out.baseline = gap
			}
		}
		prev = s
	}
	t.Logf("killed %s (leader of %s) at %s: longest time without a job start %v after the kill, %v before", out.killed, events.StreamJobs,
		killedAt.UTC().Format(time.RFC3339Nano), out.pause.Round(time.Millisecond), out.baseline.Round(time.Millisecond))
	// Every log is stored and whole (a spooled one once its runner uploaded it).
	logs, err := ajs.ObjectStore(ctx, events.BucketLogs)
	if err != nil {
		t.Fatal(err)
	}
	brokertest.CheckFor(t, time.Minute, 250*time.Millisecond, func() error {
		for _, r := range recs {
			if r.Log == "" {
				return fmt.Errorf("job of %s has no log", r.Commit[:8])
			}
			b, err := logs.GetBytes(ctx, r.Log)
			if err != nil {
				return fmt.Errorf("log of %s: %w", r.Commit[:8], err)
			}
			if !strings.Contains(string(b), "done") {
				return fmt.Errorf("log of %s is cut: %q", r.Commit[:8], b)
			}
		}
		return nil
	})
	// No chunks of an upload left unfinished: every chunk subject is an object's.
	objs, err := logs.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	owned := map[string]bool{}
	for _, o := range objs {
		owned["$O."+events.BucketLogs+".C."+o.NUID] = true
	}
	st, err := ajs.Stream(ctx, "OBJ_"+events.BucketLogs)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter("$O."+events.BucketLogs+".C.>"))
	if err != nil {
		t.Fatal(err)
	}
	for subj, n := range info.State.Subjects {
		if !owned[subj] {
			t.Errorf("%d chunks on %s belong to no object", n, subj)
		}
	}

	return out
}

// TestClusterLeaderLoss: see clusterLeaderLoss. The pause it logs is in
// BENCHMARKS.md (BenchmarkClusterLeaderLoss).
func TestClusterLeaderLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("long: a 3-node cluster")
	}
	r := clusterLeaderLoss(t, 90)
	t.Logf("killed %s (leader of %s): %d jobs recorded once, logs whole, no stray chunks; longest time without a job start: %v after the kill, %v before",
		r.killed, events.StreamJobs, r.jobs, r.pause.Round(time.Millisecond), r.baseline.Round(time.Millisecond))
}

// BenchmarkClusterLeaderLoss reports the pause after the node leading
// JETCI_JOBS is killed (pause_ms: the longest time without a job start from the
// kill on) against the longest before it (baseline_ms), in the set-up of
// TestClusterLeaderLoss.
//
//	go test -run '^$' -bench ClusterLeaderLoss -benchtime 1x ./cmd/jetci
func BenchmarkClusterLeaderLoss(b *testing.B) {
	for range b.N {
		r := clusterLeaderLoss(b, 90)
		b.ReportMetric(float64(r.pause.Milliseconds()), "pause_ms")
		b.ReportMetric(float64(r.baseline.Milliseconds()), "baseline_ms")
	}
}
