package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter"
)

const nodeConf = `server_name: %s
listen: %s
jetstream { store_dir: %q }
cluster {
  name: jetci
  listen: %s
  routes: [%s]
}
`

// TestClusterNodeLoss runs jetci on a 3-node JetStream cluster of `jetci server`
// processes, kills one node with SIGKILL in the middle of a 200-job burst, and
// checks every job completes with exactly one record.
func TestClusterNodeLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("long: a 3-node cluster")
	}
	bin := jetciBinary(t)
	dir := t.TempDir()
	var clients, routes []string
	var clusterAddrs []string
	for range 3 {
		clients = append(clients, reserveAddr(t))
		clusterAddrs = append(clusterAddrs, reserveAddr(t))
	}
	for _, a := range clusterAddrs {
		routes = append(routes, "nats-route://"+a)
	}
	var nodes []*service
	var urls []string
	for i := range 3 {
		name := "n" + strconv.Itoa(i+1)
		conf := filepath.Join(dir, name+".conf")
		text := fmt.Sprintf(nodeConf, name, clients[i], filepath.Join(dir, name), clusterAddrs[i], strings.Join(routes, ", "))
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		n := &service{name: name, args: []string{"server", "--config", conf, "--log-format", "json"}}
		n.start(t, bin)
		t.Cleanup(n.kill)
		nodes = append(nodes, n)
		urls = append(urls, "nats://"+clients[i])
	}
	url := strings.Join(urls, ",")
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range nodes {
				t.Logf("%s log:\n%s", n.name, lastLines(n.logs.String(), 30))
			}
		}
	})
	brokertest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		_, err := resultsJSON(t, url)
		return err
	})
	nc, js, err := events.Connect(url, events.ConnectOptions{Name: "test", Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	st, err := js.Stream(context.Background(), events.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	if r := st.CachedInfo().Config.Replicas; r != 3 {
		t.Fatalf("jobs stream has %d replicas, want 3", r)
	}

	repo := newGitRepo(t)
	commits := []string{repo.Commit("pipeline", map[string]string{".jetci.yml": "jobs:\n  check:\n    steps: [\"test -f .jetci.yml\"]\n"})}
	services := []*service{
		{name: "observer", args: []string{"observer", "--nats", url, "--repo", repo.Dir, "--poll", "100ms", "--cache", filepath.Join(dir, "obs")}},
		{name: "dispatcher", args: []string{"dispatcher", "--nats", url}},
		{name: "reporter", args: []string{"reporter", "--nats", url, "--http", ""}},
		{name: "runner1", args: []string{"runner", "--nats", url, "--work", filepath.Join(dir, "r1"), "--slots", "2"}},
		{name: "runner2", args: []string{"runner", "--nats", url, "--work", filepath.Join(dir, "r2"), "--slots", "2"}},
	}
	for _, s := range services {
		s.start(t, bin)
		t.Cleanup(s.kill)
	}
	waitStatus(t, func() ([]reporter.Record, error) { return resultsJSON(t, url) }, commits[0], "passed")

	const burst = 200
	killed := false
	for i := range burst {
		commits = append(commits, repo.Commit("c"+strconv.Itoa(i), map[string]string{"n.txt": strconv.Itoa(i)}))
		if i == burst/3 {
			// Once jobs are flowing, kill a node.
			brokertest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
				recs, err := resultsJSON(t, url)
				if err != nil || len(recs) < 20 {
					return fmt.Errorf("%d results yet", len(recs))
				}
				return nil
			})
			nodes[0].kill()
			killed = true
		}
	}
	if !killed {
		t.Fatal("no node killed")
	}
	start := time.Now()
	brokertest.CheckFor(t, 3*time.Minute, 250*time.Millisecond, func() error {
		recs, err := resultsJSON(t, url)
		if err != nil {
			return err
		}
		per := map[string]int{}
		for _, r := range recs {
			per[r.Commit]++
			if r.Status != "passed" {
				return fmt.Errorf("commit %s: %s %s", r.Commit[:8], r.Status, r.Error)
			}
		}
		missing := 0
		for _, c := range commits {
			if per[c] > 1 {
				return fmt.Errorf("commit %s has %d records", c[:8], per[c])
			}
			if per[c] == 0 {
				missing++
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d of %d commits have no result", missing, len(commits))
		}
		return nil
	})
	checkDispatchedOnce(t, url)
	t.Logf("cluster: node n1 SIGKILLed mid-burst; all %d jobs recorded once, %v after the burst", len(commits), time.Since(start).Round(time.Millisecond))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
