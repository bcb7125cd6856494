package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker"
	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter"
)

// TestRunnerBehindALeafNodeWithRoleUsers: the deployment docs/operations.md
// gives for runners in another region, with the role users of the shipped
// jetci-accounts.conf. The hub runs nats.conf's accounts with a JetStream
// domain and a leafnode port; the region's leaf node logs in to the hub as
// the runner user and serves its runners from a local account with its own
// runner user. A runner there (runner password + its issued identity) takes a
// job queued on the hub, runs it, stores its log and signs its result, which
// the reporter on the hub accepts: nothing the runner does needs more than
// the runner role across the leaf connection.
func TestRunnerBehindALeafNodeWithRoleUsers(t *testing.T) {
	pw := setRolePasswords(t)
	dir := t.TempDir()
	accounts, err := os.ReadFile("../../jetci-accounts.conf")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "jetci-accounts.conf"), accounts, 0o600); err != nil {
		t.Fatal(err)
	}
	leafPort := reserveAddr(t)
	hubConf := filepath.Join(dir, "hub.conf")
	if err := os.WriteFile(hubConf, fmt.Appendf(nil, "server_name: hub\njetstream { domain: hub }\nleafnodes { listen: %q }\ninclude \"jetci-accounts.conf\"\n", leafPort), 0o600); err != nil {
		t.Fatal(err)
	}
	hub, err := broker.Start(broker.Config{ConfigFile: hubConf, Listen: "127.0.0.1:0", StoreDir: filepath.Join(dir, "hub")}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hub.Shutdown)
	url := hub.ClientURL()
	_, ajs := connectAs(t, url, pw, events.RoleAdmin)
	ctx0, cancel0 := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel0()
	if err := events.DefaultSetup().Ensure(ctx0, ajs); err != nil {
		t.Fatal(err)
	}

	// The leaf, as docs/operations.md configures it (nats-leaf.conf's role-user form).
	leafConf := filepath.Join(dir, "leaf.conf")
	if err := os.WriteFile(leafConf, fmt.Appendf(nil, `server_name: region2
listen: 127.0.0.1:-1
accounts {
  JETCI { users: [ { user: runner, password: $JETCI_RUNNER_PASSWORD } ] }
}
default_js_domain: { JETCI: hub }

leafnodes {
  remotes: [ { url: "nats-leaf://runner:%s@%s", account: JETCI } ]
}
`, pw[events.RoleRunner], leafPort), 0o600); err != nil {
		t.Fatal(err)
	}
	leaf := brokertest.RunConfig(t, leafConf, nil)
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if leaf.NumLeafNodes() == 0 {
			return fmt.Errorf("the leaf has not connected to the hub as the runner user")
		}
		return nil
	})

	repo := newGitRepo(t)
	sha := repo.Commit("far", map[string]string{".jetci.yml": "jobs:\n  check:\n    steps: [echo far away]\n"})
	data := t.TempDir()
	ctx, start, _ := serviceGroup(t)
	start(ctx, append([]string{"observer", "--nats", url, "--repo", repo.Dir, "--poll", "100ms", "--cache", data + "/obs", "--log-format", "json"}, as(pw, "observer")...)...)
	start(ctx, append([]string{"dispatcher", "--nats", url, "--log-format", "json"}, as(pw, "dispatcher")...)...)
	start(ctx, append([]string{"reporter", "--nats", url, "--http", "", "--log-format", "json"}, as(pw, "reporter")...)...)
	start(ctx, append(append([]string{"runner", "--nats", leaf.ClientURL(), "--id", "region2-1", "--work", data + "/r", "--log-format", "json"},
		as(pw, "runner")...), identity(t, url, pw, "region2-1")...)...)

	admin := as(pw, "admin")
	recs := waitStatus(t, func() ([]reporter.Record, error) { return resultsJSON(t, url, admin...) }, sha, "passed")
	r := recs[0]
	// The job was acked on the hub (the work queue is empty), and the
	// runner's lease is renewed through the leaf: the lease's KV writes cross
	// it as $JS.hub.API.$KV.… (nats-server keeps $KV.> off leaf connections
	// between domains), which the runner role allows.
	brokertest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		st, err := ajs.Stream(ctx0, events.StreamJobs)
		if err != nil {
			return err
		}
		if n := st.CachedInfo().State.Msgs; n != 0 {
			return fmt.Errorf("%d jobs left in the work queue", n)
		}
		return nil
	})
	leases, err := ajs.KeyValue(ctx0, events.BucketRunners)
	if err != nil {
		t.Fatal(err)
	}
	brokertest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		e, err := leases.Get(ctx0, events.LeaseKey("region2-1"))
		if err != nil {
			return err
		}
		var l events.Lease
		if err := json.Unmarshal(e.Value(), &l); err != nil {
			return err
		}
		if !l.HeartbeatAt.After(r.FinishedAt) {
			return fmt.Errorf("lease last renewed %v, before the job finished at %v", l.HeartbeatAt, r.FinishedAt)
		}
		return nil
	})
	// The log went through the leaf into the hub's object store.
	_, rjs := connectAs(t, url, pw, events.RoleReporter)
	logs, err := rjs.ObjectStore(ctx0, events.BucketLogs)
	if err != nil {
		t.Fatal(err)
	}
	body, err := logs.GetString(ctx0, r.Log)
	if err != nil || !strings.Contains(body, "far away") {
		t.Fatalf("log %s: %v %q", r.Log, err, body)
	}
}
