package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/internal/disktest"
	"github.com/jetci/jetci/internal/parts"
)

// natsServerBinary builds the nats-server of go.mod's version, the server
// users run on their own (a standalone process, not jetci's embedded one).
func natsServerBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "nats-server")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/nats-io/nats-server/v2").CombinedOutput(); err != nil {
		t.Fatalf("go build nats-server: %v\n%s", err, out)
	}
	return bin
}

// TestStandaloneNatsServerFullDisk: a standalone nats-server whose store's
// disk fills stops answering stream requests and takes no write, even once
// space is freed, until it is restarted. A separate jetci reporter says so,
// in its log, /healthz and a banner on every page, rather than timing out
// without a word; once the server is restarted on a disk with room it
// answers 200 again by itself.
func TestStandaloneNatsServerFullDisk(t *testing.T) {
	bin := natsServerBinary(t)
	mnt := disktest.Small(t, "32m")
	old := parts.JetStreamWatch
	parts.JetStreamWatch.Every, parts.JetStreamWatch.Timeout = 200*time.Millisecond, 2*time.Second
	t.Cleanup(func() { parts.JetStreamWatch = old })

	natsAddr, httpAddr := reserveAddr(t), reserveAddr(t)
	host, port, _ := strings.Cut(natsAddr, ":")
	conf := filepath.Join(t.TempDir(), "nats.conf")
	// max_file_store above the disk's size: the server takes writes until
	// the disk itself is full, as when something else fills it.
	if err := os.WriteFile(conf, fmt.Appendf(nil, "host: %s\nport: %s\njetstream { store_dir: %q, max_file_store: 1G }\n",
		host, port, filepath.Join(mnt, "store")), 0o644); err != nil {
		t.Fatal(err)
	}
	var serverLog syncBuffer
	startServer := func() *exec.Cmd {
		cmd := exec.Command(bin, "-c", conf)
		cmd.Stdout, cmd.Stderr = &serverLog, &serverLog
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	srv := startServer()
	url := "nats://" + natsAddr

	ctx, start, logs := serviceGroup(t)
	// The live logs' reservation sized to the small disk, as the error
	// without it says.
	if code := (&Main{Stdout: logs, Stderr: logs}).Run(ctx, []string{"setup", "--nats", url, "--live-logs-max", "4MiB"}); code != 0 {
		t.Fatalf("jetci setup exited %d:\n%s", code, logs.String())
	}
	start(ctx, "reporter", "--nats", url, "--http", httpAddr, "--db", filepath.Join(t.TempDir(), "reporter.db"), "--log-format", "json")
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + httpAddr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	brokertest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		if code, body := get("/healthz"); code != 200 {
			return fmt.Errorf("healthz %d: %s", code, body)
		}
		return nil
	})

	// Something else fills the disk; the next write to a stream fails there.
	disktest.Fill(t, filepath.Join(mnt, "fill"))
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	_, err = js.Publish(pctx, events.SubjectResults+".r.main."+events.KindQueued, make([]byte, 64<<10))
	cancel()
	if err == nil {
		t.Fatal("a write on a full disk was taken")
	}
	const want = "the NATS server answers but its JetStream"
	brokertest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		code, body := get("/healthz")
		if code != http.StatusServiceUnavailable || !strings.Contains(body, want) {
			return fmt.Errorf("healthz %d: %s", code, body)
		}
		return nil
	})
	if code, body := get("/"); !strings.Contains(body, want) {
		t.Errorf("the overview page (%d) shows no banner naming the stalled JetStream", code)
	}
	brokertest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if !strings.Contains(logs.String(), want) {
			return fmt.Errorf("the reporter's log does not say it")
		}
		return nil
	})
	if !strings.Contains(serverLog.String(), "no space left on device") {
		t.Errorf("the server's log does not name the full disk:\n%s", serverLog.String())
	}

	// Space is freed and the server restarted: the reporter is healthy again
	// without a restart of its own.
	if err := os.Remove(filepath.Join(mnt, "fill")); err != nil {
		t.Fatal(err)
	}
	_ = srv.Process.Kill()
	_ = srv.Wait()
	startServer()
	brokertest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		if code, body := get("/healthz"); code != 200 {
			return fmt.Errorf("healthz %d: %s", code, body)
		}
		return nil
	})
}
