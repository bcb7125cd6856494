package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker"
	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/dispatcher"
	"github.com/jetci/jetci/events"
)

// setRolePasswords gives every role of nats.conf a password through the
// environment variables the file reads (as an operator would export them).
func setRolePasswords(t *testing.T) map[string]string {
	pw := map[string]string{}
	for _, r := range events.Roles() {
		pw[r.Name] = "test-" + r.Name + "-secret"
		t.Setenv(events.PasswordVar(r.Name), pw[r.Name])
	}
	return pw
}

// as is the credential flags of one role.
func as(pw map[string]string, role string) []string {
	return []string{"--nats-user", role, "--nats-password", pw[role]}
}

func httpGet(t testing.TB, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// startShippedBroker runs the embedded server from the repository's nats.conf
// on free ports, with jetci's streams set up by the admin.
func startShippedBroker(t *testing.T) (string, map[string]string) {
	pw := setRolePasswords(t)
	srv, err := broker.Start(broker.Config{ConfigFile: "../../nats.conf", Listen: "127.0.0.1:0", StoreDir: t.TempDir(), HTTP: "127.0.0.1:0"}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	if !srv.AuthRequired() {
		t.Fatal("nats.conf lets clients in without credentials")
	}
	nc, js := connectAs(t, srv.ClientURL(), pw, events.RoleAdmin)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := events.DefaultSetup().Ensure(ctx, js); err != nil {
		t.Fatalf("admin sets up the streams: %v", nc.Explain(err))
	}
	logs, err := js.ObjectStore(ctx, events.BucketLogs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := logs.PutString(ctx, "stored.log", "secret output of another job"); err != nil {
		t.Fatal(err)
	}
	return srv.ClientURL(), pw
}

func connectAs(t *testing.T, url string, pw map[string]string, role string, extra ...nats.Option) (*events.Conn, jetstream.JetStream) {
	t.Helper()
	nc, js, err := events.Connect(url, events.ConnectOptions{Name: "test-" + role, Role: role, Log: zerolog.New(zerolog.NewTestWriter(t)),
		Auth: events.Auth{User: role, Password: pw[role]}, Extra: extra})
	if err != nil {
		t.Fatalf("connect as %s: %v", role, err)
	}
	t.Cleanup(nc.Close)
	return nc, js
}

// TestRolesAreRefusedOutsideTheirJob: against a server loaded from the shipped
// nats.conf, each role can do its own job, and what lies outside it is refused
// with a permission error that names the role and the subject.
func TestRolesAreRefusedOutsideTheirJob(t *testing.T) {
	url, pw := startShippedBroker(t)
	commit := events.CommitSubject("proj", "main")
	job := events.JobSubject("default", "amd64", events.ClassFirst, "proj", "main")
	result := events.ResultSubject("proj", "main", events.KindFinished)
	publish := func(subject string) func(context.Context, *nats.Conn, jetstream.JetStream) error {
		return func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
			_, err := js.Publish(ctx, subject, []byte(`{}`))
			return err
		}
	}
	deleteStream := func(name string) func(context.Context, *nats.Conn, jetstream.JetStream) error {
		return func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
			return js.DeleteStream(ctx, name)
		}
	}
	kvGet := func(bucket, key string) func(context.Context, *nats.Conn, jetstream.JetStream) error {
		return func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
			kv, err := js.KeyValue(ctx, bucket)
			if err != nil {
				return err
			}
			_, err = kv.Get(ctx, key)
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				return nil // allowed: the key is just not there
			}
			return err
		}
	}
	kvPut := func(bucket, key string) func(context.Context, *nats.Conn, jetstream.JetStream) error {
		return func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
			kv, err := js.KeyValue(ctx, bucket)
			if err != nil {
				return err
			}
			_, err = kv.Put(ctx, key, []byte(`{}`))
			return err
		}
	}
	objGet := func(bucket, name string) func(context.Context, *nats.Conn, jetstream.JetStream) error {
		return func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
			obs, err := js.ObjectStore(ctx, bucket)
			if err != nil {
				return err
			}
			_, err = obs.GetBytes(ctx, name)
			return err
		}
	}
	objPut := func(bucket, name string) func(context.Context, *nats.Conn, jetstream.JetStream) error {
		return func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
			obs, err := js.ObjectStore(ctx, bucket)
			if err != nil {
				return err
			}
			_, err = obs.PutString(ctx, name, "output")
			return err
		}
	}
	jobConsumers := func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
		cons, err := events.EnsureJobConsumers(ctx, js, "default", "amd64")
		if err != nil {
			return err
		}
		_, err = cons[0].FetchNoWait(1)
		return err
	}
	for _, tt := range []struct {
		role, what string
		do         func(context.Context, *nats.Conn, jetstream.JetStream) error
		refused    string // "": allowed; else the subject (or its start) the refusal names
	}{
		{"runner", "publish a result", publish(result), ""},
		{"runner", "create, look up and pull its job consumers", jobConsumers, ""},
		{"runner", "keep its lease", kvPut(events.BucketRunners, events.LeaseKey("r1")), ""},
		{"runner", "publish a fake commit", publish(commit), commit},
		{"runner", "publish a job", publish(job), job},
		{"runner", "delete the jobs stream", deleteStream(events.StreamJobs), "$JS.API.STREAM.DELETE." + events.StreamJobs},
		{"runner", "read another runner's lease", kvGet(events.BucketRunners, events.LeaseKey("r2")), "$JS.API.DIRECT.GET.KV_" + events.BucketRunners + ".$KV." + events.BucketRunners + "." + events.LeaseKey("r2")},
		{"runner", "store a log", objPut(events.BucketLogs, "new.log"), ""},
		{"runner", "read a stored log", objGet(events.BucketLogs, "stored.log"), "$JS.API.CONSUMER.CREATE.OBJ_" + events.BucketLogs},
		{"reporter", "read a stored log", objGet(events.BucketLogs, "stored.log"), ""},
		{"runner", "write a record", kvPut(events.BucketResults, "x"), "$KV." + events.BucketResults + ".x"},
		{"runner", "register a runner identity", kvPut(events.BucketKeys, events.RunnerKeyName("evil")), "$KV." + events.BucketKeys + "."},
		{"runner", "read the service key", kvGet(events.BucketKeys, events.KeyService), "$JS.API.DIRECT.GET.KV_" + events.BucketKeys},
		{"pool", "register a runner identity", kvPut(events.BucketKeys, events.RunnerKeyName("evil")), "$KV." + events.BucketKeys + "."},
		{"reporter", "register a runner identity", kvPut(events.BucketKeys, events.RunnerKeyName("evil")), "$KV." + events.BucketKeys + "."},
		{"dispatcher", "register a runner identity", kvPut(events.BucketKeys, events.RunnerKeyName("evil")), "$KV." + events.BucketKeys + "."},
		{"observer", "publish a commit", publish(commit), ""},
		{"observer", "keep the heads", kvPut(events.BucketHeads, "a.b"), ""},
		{"observer", "publish a job", publish(job), job},
		{"observer", "publish a result", publish(result), result},
		{"observer", "delete the commits stream", deleteStream(events.StreamCommits), "$JS.API.STREAM.DELETE." + events.StreamCommits},
		{"dispatcher", "publish a job", publish(job), ""},
		{"dispatcher", "publish a commit", publish(commit), commit},
		{"dispatcher", "delete the results stream", deleteStream(events.StreamResults), "$JS.API.STREAM.DELETE." + events.StreamResults},
		{"dispatcher", "write a record", kvPut(events.BucketResults, "x"), "$KV." + events.BucketResults + ".x"},
		{"reporter", "publish a result", publish(result), ""},
		{"reporter", "write a record", kvPut(events.BucketResults, "x"), ""},
		{"reporter", "publish a job", publish(job), job},
		{"reporter", "publish a commit", publish(commit), commit},
		{"reporter", "move a branch head", kvPut(events.BucketHeads, "a.b"), "$KV." + events.BucketHeads + ".a.b"},
		{"reporter", "delete the jobs stream", deleteStream(events.StreamJobs), "$JS.API.STREAM.DELETE." + events.StreamJobs},
		{"hook", "publish a result", publish(result), result},
		{"hook", "read a record", kvGet(events.BucketResults, "x"), "$JS.API.STREAM.INFO.KV_" + events.BucketResults},
		{"pool", "read the leases", kvGet(events.BucketRunners, events.LeaseKey("r2")), ""},
		{"pool", "publish a job", publish(job), job},
		{"admin", "read a record", kvGet(events.BucketResults, "x"), ""},
		{"admin", "publish a commit", publish(commit), ""},
	} {
		name := tt.role + " may " + tt.what
		if tt.refused != "" {
			name = tt.role + " may not " + tt.what
		}
		t.Run(name, func(t *testing.T) {
			nc, js := connectAs(t, url, pw, tt.role)
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			err := nc.Explain(tt.do(ctx, nc.Conn, js))
			if tt.refused == "" {
				if err != nil {
					t.Fatalf("%s may %s, but: %v", tt.role, tt.what, err)
				}
				return
			}
			if !errors.Is(err, nats.ErrPermissionViolation) {
				t.Fatalf("%s: %v, want a permission error", tt.what, err)
			}
			want := "permission denied: " + tt.role + ` may not publish to "` + tt.refused
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q, want it to say %q", err, want)
			}
		})
	}

	t.Run("runner may not read the reporter's inbox", func(t *testing.T) {
		nc, _ := connectAs(t, url, pw, events.RoleRunner, nats.PermissionErrOnSubscribe(true))
		sub, err := nc.SubscribeSync(events.InboxPrefix(events.RoleReporter) + ".>")
		if err != nil {
			t.Fatal(err)
		}
		nc.Flush()
		if _, err := sub.NextMsg(2 * time.Second); !errors.Is(err, nats.ErrPermissionViolation) {
			t.Fatalf("subscribe to the reporter's inbox: %v, want a permission error", err)
		}
		brokertest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
			if err := nc.Explain(errors.New("x")); !strings.Contains(err.Error(), `runner may not subscribe to "_INBOX_reporter.>"`) {
				return fmt.Errorf("explained: %v", err)
			}
			return nil
		})
	})
	t.Run("a wrong password is refused", func(t *testing.T) {
		_, _, err := events.Connect(url, events.ConnectOptions{Name: "test", Log: zerolog.Nop(), Role: "runner", Auth: events.Auth{User: "runner", Password: "wrong"}})
		if err == nil || !strings.Contains(err.Error(), "Authorization Violation") {
			t.Fatalf("connect with a wrong password: %v", err)
		}
		_, _, err = events.Connect(url, events.ConnectOptions{Name: "test", Log: zerolog.Nop()})
		if err == nil {
			t.Fatal("connect without credentials: no error")
		}
	})
}

// TestServiceWithWrongPassword: a service whose credentials the server refuses
// stops with an error that says so, instead of waiting forever.
func TestServiceWithWrongPassword(t *testing.T) {
	url, _ := startShippedBroker(t)
	var out, errb syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := (&Main{Stdout: &out, Stderr: &errb}).Run(ctx, []string{"runner", "--nats", url, "--nats-user", "runner", "--nats-password", "wrong", "--work", t.TempDir(), "--log-format", "json"})
	if code == 0 || ctx.Err() != nil {
		t.Fatalf("runner with a wrong password: code %d, ctx %v", code, ctx.Err())
	}
	if !strings.Contains(strings.ToLower(errb.String()), "authorization violation") {
		t.Fatalf("stderr %q: want it to name the authorization violation", errb.String())
	}
}

// TestUpStaysOnLoopback: jetci up's embedded server has no authentication, so
// it says so at start, and refuses a non-loopback --nats-listen unless told
// --insecure (checked before anything listens; the tests never listen beyond
// loopback, so --insecure itself is left to TestIsLoopback).
func TestUpStaysOnLoopback(t *testing.T) {
	repo := newGitRepo(t)
	repo.Commit("first", map[string]string{"tests/test_ok.py": passingTest})
	var out, errb syncBuffer
	code := (&Main{Stdout: &out, Stderr: &errb}).Run(context.Background(), []string{"up", "--repo", repo.Dir, "--data", t.TempDir(), "--nats-listen", "0.0.0.0:0", "--http", ""})
	if code == 0 || !strings.Contains(errb.String(), "--insecure") {
		t.Fatalf("up on 0.0.0.0: code %d, stderr %q; want a refusal naming --insecure", code, errb.String())
	}

	for _, tt := range []struct {
		listen string
		extra  []string
		want   string
	}{
		{"127.0.0.1:0", nil, "the embedded NATS server is open: no authentication, no TLS; it listens on loopback only"},
	} {
		logs := &syncBuffer{}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan int, 1)
		args := append([]string{"up", "--repo", repo.Dir, "--data", t.TempDir(), "--nats-listen", tt.listen, "--http", "", "--runners", "0", "--log-format", "json"}, tt.extra...)
		go func() { done <- (&Main{Stdout: logs, Stderr: logs}).Run(ctx, args) }()
		brokertest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
			if !strings.Contains(logs.String(), tt.want) {
				return fmt.Errorf("log lacks %q", tt.want)
			}
			return nil
		})
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("up %s exited %d:\n%s", tt.listen, code, logs.String())
		}
	}
}

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:4222": true, "localhost:4222": true, "[::1]:4222": true, "127.0.0.2:0": true,
		"0.0.0.0:4222": false, ":4222": false, "[::]:4222": false, "192.168.1.5:4222": false, "ci.example.com:4222": false, "nope": false,
	} {
		if got := isLoopback(addr); got != want {
			t.Errorf("isLoopback(%q) = %v, want %v", addr, got, want)
		}
	}
}

// TestServiceBeforeSetupSaysWhy: a service started before the admin created
// the streams is refused the creation, and the error says who creates them.
func TestServiceBeforeSetupSaysWhy(t *testing.T) {
	pw := setRolePasswords(t)
	srv, err := broker.Start(broker.Config{ConfigFile: "../../nats.conf", Listen: "127.0.0.1:0", StoreDir: t.TempDir(), HTTP: "127.0.0.1:0"}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, js := connectAs(t, srv.ClientURL(), pw, events.RoleObserver)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err = nc.Explain(events.DefaultSetup().Ensure(ctx, js))
	want := `permission denied: observer may not publish to "$JS.API.STREAM.CREATE.` + events.StreamCommits + `" (jetci's streams and buckets are created by the admin user: run 'jetci setup'`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("set-up as the observer: %v, want %q", err, want)
	}
}

// TestNKeySeed: --nats-nkey signs in with an nkey seed file.
func TestNKeySeed(t *testing.T) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	dir := t.TempDir()
	seedFile, conf := filepath.Join(dir, "admin.nk"), filepath.Join(dir, "nats.conf")
	os.WriteFile(seedFile, seed, 0o600)
	os.WriteFile(conf, []byte(`accounts { JETCI { jetstream: enabled, users: [ { nkey: `+pub+` } ] } }`+"\n"), 0o600)
	srv, err := broker.Start(broker.Config{ConfigFile: conf, Listen: "127.0.0.1:0", StoreDir: t.TempDir()}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	var out, errb syncBuffer
	if code := (&Main{Stdout: &out, Stderr: &errb}).Run(context.Background(), []string{"setup", "--nats", srv.ClientURL(), "--nats-nkey", seedFile, "--log-format", "json"}); code != 0 {
		t.Fatalf("jetci setup with an nkey: code %d, %s", code, errb.String())
	}
	if _, _, err := events.Connect(srv.ClientURL(), events.ConnectOptions{Name: "test", Log: zerolog.Nop()}); err == nil {
		t.Fatal("connect without the nkey: no error")
	}
}

// TestServerWithoutAdminThenSetup: `jetci server` with the shipped nats.conf
// but no admin credentials serves and says the streams wait for `jetci setup`;
// `jetci setup` as the admin then creates them, and refuses another role.
func TestServerWithoutAdminThenSetup(t *testing.T) {
	pw := setRolePasswords(t)
	natsAddr := reserveAddr(t)
	url := "nats://" + natsAddr
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- (&Main{Stdout: logs, Stderr: logs}).Run(ctx, []string{"server", "--config", "../../nats.conf", "--listen", natsAddr, "--monitor", "127.0.0.1:0", "--store", t.TempDir(), "--log-format", "json"})
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("jetci server exited %d:\n%s", code, logs.String())
		}
	})
	brokertest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(logs.String(), "jetci streams not set up here") {
			return fmt.Errorf("no word about the streams yet")
		}
		return nil
	})
	run := func(args ...string) (string, string, int) {
		var out, errb syncBuffer
		code := (&Main{Stdout: &out, Stderr: &errb}).Run(context.Background(), args)
		return out.String(), errb.String(), code
	}
	if _, errs, code := run(append([]string{"setup", "--nats", url, "--timeout", "5s", "--log-format", "json"}, as(pw, "reporter")...)...); code == 0 ||
		!strings.Contains(errs, "permission denied: user reporter (running as admin)") {
		t.Fatalf("setup as the reporter: code %d, %s", code, errs)
	}
	if out, errs, code := run(append([]string{"setup", "--nats", url, "--log-format", "json"}, as(pw, "admin")...)...); code != 0 || !strings.Contains(out, "jetci streams and buckets ready") {
		t.Fatalf("setup as the admin: code %d, out %q, err %s", code, out, errs)
	}
	if _, err := resultsJSON(t, url, as(pw, "admin")...); err != nil {
		t.Fatal(err)
	}
}

// TestDisconnectHandBackWithRoleUsers: against the shipped nats.conf, the
// runner role may answer on its alive subject and the dispatcher role may probe
// it; when the runner's connection closes, the dispatcher's reaper hands its
// job back through the disconnect path, with no permission error on either side.
func TestDisconnectHandBackWithRoleUsers(t *testing.T) {
	url, pw := startShippedBroker(t)
	denied := make(chan error, 16)
	onErr := nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case denied <- err:
		default:
		}
	})
	_, ajs := connectAs(t, url, pw, events.RoleAdmin)
	dnc, djs := connectAs(t, url, pw, events.RoleDispatcher, onErr)
	rnc, rjs := connectAs(t, url, pw, events.RoleRunner, onErr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The runner: answers on its alive subject, pulls a job, names it in its lease.
	if _, err := rnc.Subscribe(events.AliveSubject("r1", "inc1"), func(m *nats.Msg) { _ = m.Respond(nil) }); err != nil {
		t.Fatal(err)
	}
	cons, err := events.EnsureJobConsumers(ctx, rjs, "default", "amd64")
	if err != nil {
		t.Fatal(err)
	}
	j := &events.JobQueued{JobRef: events.JobRef{Repo: "proj", Branch: "main", Commit: "c0ffee", Job: "test", Arch: "amd64"}, Pool: "default", Class: events.ClassFirst}
	j.JobID = events.JobID(j.Repo, j.Branch, j.Commit, j.Job, j.Arch)
	data, _ := events.Encode(j)
	if _, err := ajs.Publish(ctx, events.JobSubject("default", "amd64", events.ClassFirst, "proj", "main"), data); err != nil {
		t.Fatal(err)
	}
	fetch := func(cons []jetstream.Consumer) jetstream.Msg {
		first := cons[slices.Index(events.Classes, events.ClassFirst)]
		var got jetstream.Msg
		brokertest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
			b, err := first.FetchNoWait(1)
			if err != nil {
				return err
			}
			for m := range b.Messages() {
				got = m
				return nil
			}
			return fmt.Errorf("no job delivered")
		})
		return got
	}
	m := fetch(cons)
	kv, err := rjs.KeyValue(ctx, events.BucketRunners)
	if err != nil {
		t.Fatal(err)
	}
	lease, _ := json.Marshal(events.Lease{ID: "r1", Arch: "amd64", Pool: "default", Incarnation: "inc1",
		Jobs: []events.LeasedJob{{JobID: j.JobID, Attempt: 1, Reply: m.Reply()}}})
	if _, err := kv.Put(ctx, events.LeaseKey("r1"), lease); err != nil {
		t.Fatal(rnc.Explain(err))
	}
	// The dispatcher's probe is answered while the runner is connected.
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		_, err := dnc.Request(events.AliveSubject("r1", "inc1"), nil, time.Second)
		return err
	})
	done := make(chan error, 1)
	go func() {
		done <- dispatcher.NewReaper(dnc.Conn, djs, nil, zerolog.New(zerolog.NewTestWriter(t))).Run(ctx)
	}()
	defer func() { cancel(); <-done }()

	rnc.Close()                                                // the runner's process is gone
	_, rjs2 := connectAs(t, url, pw, events.RoleRunner, onErr) // another runner
	cons2, err := events.EnsureJobConsumers(ctx, rjs2, "default", "amd64")
	if err != nil {
		t.Fatal(err)
	}
	m2 := fetch(cons2)
	if md, _ := m2.Metadata(); md.NumDelivered != 2 {
		t.Fatalf("delivery %d, want 2", md.NumDelivered)
	}
	claims, err := ajs.KeyValue(ctx, events.BucketReaped)
	if err != nil {
		t.Fatal(err)
	}
	e, err := claims.Get(ctx, events.ReapKey("r1", j.JobID, 1))
	if err != nil || string(e.Value()) != events.ReapedByDisconnect {
		t.Fatalf("claim %v: want %s", err, events.ReapedByDisconnect)
	}
	select {
	case err := <-denied:
		t.Fatalf("a role was refused: %v", err)
	default:
	}
}

// identity has the admin issue the runner identity name (jetci setup
// --runner-identity) and returns the runner flags that use it: its id is
// the name, its seed file in a temporary directory.
func identity(t testing.TB, url string, pw map[string]string, name string) []string {
	t.Helper()
	file := filepath.Join(t.TempDir(), name+".nk")
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := append([]string{"setup", "--nats", url, "--runner-identity", name + "=" + file, "--log-format", "json"}, as(pw, "admin")...)
	if code := (&Main{Stdout: &out, Stderr: &errb}).Run(ctx, args); code != 0 {
		t.Fatalf("jetci setup --runner-identity exited %d: %s", code, errb.String())
	}
	return []string{"--identity", file, "--identity-name", name}
}
