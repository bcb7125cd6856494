package broker_test

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"

	"github.com/jetci/jetci/broker"
	"github.com/jetci/jetci/events"
)

// TestStartWithTheRepoConfig starts the embedded server from the repository's
// nats.conf (the file users run with nats-server -c), on free ports. Its users'
// passwords come from the environment; without them the server does not start,
// and a client without credentials is refused.
func TestStartWithTheRepoConfig(t *testing.T) {
	cfg := broker.Config{ConfigFile: "../nats.conf", Listen: "127.0.0.1:0", StoreDir: t.TempDir(), HTTP: "127.0.0.1:0"}
	for _, r := range events.Roles() {
		os.Unsetenv(events.PasswordVar(r.Name))
	}
	if _, err := broker.Start(cfg, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "JETCI_") {
		t.Fatalf("start without the password variables: %v, want an error naming one", err)
	}
	for _, r := range events.Roles() {
		t.Setenv(events.PasswordVar(r.Name), "pw-"+r.Name)
	}
	// A variable may hold a bcrypt hash instead, so the server never sees the password.
	// The lowest cost: the server checks the hash while the client waits for
	// its PONG, and at cost 11 under -race on a loaded machine the server's
	// first PING came first, which the client takes as a protocol error.
	hash, err := bcrypt.GenerateFromPassword([]byte("pw-admin"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(events.PasswordVar(events.RoleAdmin), string(hash))
	srv, err := broker.Start(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	if !srv.AuthRequired() || srv.TLS() || !srv.Loopback() {
		t.Errorf("auth %v, tls %v, loopback %v: want auth on loopback without TLS", srv.AuthRequired(), srv.TLS(), srv.Loopback())
	}
	if _, err := nats.Connect(srv.ClientURL()); err == nil {
		t.Fatal("a client without credentials got in")
	}
	nc, err := nats.Connect(srv.ClientURL(), nats.UserInfo("admin", "pw-admin"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.AccountInfo(context.Background()); err != nil {
		t.Fatalf("jetstream not enabled by nats.conf: %v", err)
	}
	if nc.MaxPayload() != 1<<20 {
		t.Errorf("max payload %d, want 1 MiB from nats.conf", nc.MaxPayload())
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []broker.Config{{Listen: "nope", StoreDir: "x"}, {Listen: "127.0.0.1:99999", StoreDir: "x"}, {Listen: "127.0.0.1:0"}} {
		if err := c.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil, want an error", c)
		}
	}
	if _, err := broker.Start(broker.Config{ConfigFile: "does-not-exist.conf"}, zerolog.Nop()); err == nil {
		t.Error("Start with a missing config file: want an error")
	}
}

func TestPortInUseFailsFast(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = broker.Start(broker.Config{Listen: l.Addr().String(), StoreDir: t.TempDir()}, zerolog.Nop())
	if err == nil || !strings.Contains(err.Error(), "cannot listen") {
		t.Fatalf("Start on a used port: %v, want a clear error", err)
	}
}
