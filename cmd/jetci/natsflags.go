package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
)

// natsFlags are the flags of every command that connects to NATS: the URL, the
// credentials of the command's role, and TLS.
type natsFlags struct {
	url          string
	role         string
	auth         events.Auth
	passwordFile string
	passwordFrom string // where the password came from, for an authorization error
}

// connFlags registers --nats and the credential and TLS flags; role is the user
// role the command connects as (events.Roles), which sets its inbox prefix.
func connFlags(fs *flag.FlagSet, role string) *natsFlags {
	n := &natsFlags{role: role}
	fs.StringVar(&n.url, "nats", events.DefaultURL, "NATS server URL; several, comma-separated, for a cluster")
	n.register(fs, "connect")
	return n
}

// register adds the credential flags (and, unless the command serves TLS
// itself, the client TLS flags).
func (n *natsFlags) register(fs *flag.FlagSet, what string) {
	as := ""
	if n.role != "" {
		as = fmt.Sprintf(" (this command's role: %s)", n.role)
	}
	fs.StringVar(&n.auth.User, "nats-user", "", "NATS user to "+what+" as"+as+"")
	fs.StringVar(&n.auth.Password, "nats-password", "", "its password (default: $JETCI_<USER>_PASSWORD, e.g. $JETCI_RUNNER_PASSWORD for --nats-user runner, else $JETCI_NATS_PASSWORD); visible to other local users in the process list: prefer the environment or --nats-password-file")
	fs.StringVar(&n.passwordFile, "nats-password-file", "", "file holding the password")
	fs.StringVar(&n.auth.CredsFile, "nats-creds", "", "NATS credentials file (JWT and seed) instead of a user")
	fs.StringVar(&n.auth.NKeyFile, "nats-nkey", "", "file with an nkey seed instead of a user")
	if what == "connect" {
		n.tlsFlags(fs)
	}
}

func (n *natsFlags) tlsFlags(fs *flag.FlagSet) {
	fs.StringVar(&n.auth.TLSCA, "tls-ca", "", "CA certificate (PEM) to check the NATS server's certificate with; turns TLS on")
	fs.StringVar(&n.auth.TLSCert, "tls-cert", "", "client certificate (PEM), for servers that verify clients")
	fs.StringVar(&n.auth.TLSKey, "tls-key", "", "its private key (PEM)")
}

// resolve reads the password from its file or the environment, and checks the
// combination.
//
// The password is the first of: --nats-password, --nats-password-file,
// $JETCI_<USER>_PASSWORD (the variable the shipped nats.conf reads the user's
// password from on the server, so the exports of docs/deployment.md work on one machine
// as they are), $JETCI_NATS_PASSWORD.
func (n *natsFlags) resolve() error {
	if n.auth.Password != "" {
		n.passwordFrom = "--nats-password"
	}
	if n.auth.Password == "" && n.passwordFile != "" {
		b, err := os.ReadFile(n.passwordFile)
		if err != nil {
			return fmt.Errorf("--nats-password-file: %w", err)
		}
		n.auth.Password, n.passwordFrom = strings.TrimSpace(string(b)), "--nats-password-file "+n.passwordFile
	}
	for _, v := range []string{userPasswordVar(n.auth.User), "JETCI_NATS_PASSWORD"} {
		if n.auth.Password == "" && v != "" && os.Getenv(v) != "" {
			n.auth.Password, n.passwordFrom = os.Getenv(v), "$"+v
		}
	}
	if n.auth.User == "" {
		n.auth.Password, n.passwordFrom = "", "" // from the environment, for another command
	}
	return n.auth.Validate()
}

// userPasswordVar is the variable that holds user's password, JETCI_<USER>_PASSWORD,
// or "" for a user name that cannot make one.
func userPasswordVar(user string) string {
	if user == "" || strings.ContainsFunc(user, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_')
	}) {
		return ""
	}
	return events.PasswordVar(user)
}

// explainAuth adds to a refused login where the password came from and where
// it could come from.
func (n *natsFlags) explainAuth(err error) error {
	if !errors.Is(err, nats.ErrAuthorization) || n.auth.User == "" {
		return err
	}
	where := "$JETCI_NATS_PASSWORD or --nats-password-file"
	if v := userPasswordVar(n.auth.User); v != "" {
		where = "$" + v + ", " + where
	}
	if n.passwordFrom == "" {
		return fmt.Errorf("%w: no password was given for user %s: set %s", err, n.auth.User, where)
	}
	return fmt.Errorf("%w: user %s with the password from %s (give the server's password for %s in %s)", err, n.auth.User, n.passwordFrom, n.auth.User, where)
}

// args are the flags that make a child process connect the same way.
func (n *natsFlags) args() []string {
	a := []string{"--nats", n.url}
	add := func(flag, v string) {
		if v != "" {
			a = append(a, flag, v)
		}
	}
	add("--nats-user", n.auth.User)
	add("--nats-password-file", n.passwordFile)
	add("--nats-creds", n.auth.CredsFile)
	add("--nats-nkey", n.auth.NKeyFile)
	add("--tls-ca", n.auth.TLSCA)
	add("--tls-cert", n.auth.TLSCert)
	add("--tls-key", n.auth.TLSKey)
	return a
}

// env is what a child needs that args cannot carry: a password given on the
// command line or in the environment goes to it through its environment.
func (n *natsFlags) env() []string {
	if n.auth.User != "" && n.auth.Password != "" && n.passwordFile == "" {
		return []string{"JETCI_NATS_PASSWORD=" + n.auth.Password}
	}
	return nil
}

// connect dials NATS with these flags. The connection is remembered so that Run
// can explain a failure the server's permissions caused.
func (m *Main) connect(ctx context.Context, n *natsFlags, name string, wait bool, log zerolog.Logger) (*events.Conn, jetstream.JetStream, error) {
	if err := n.resolve(); err != nil {
		return nil, nil, err
	}
	nc, js, err := events.Connect(n.url, events.ConnectOptions{Name: name, Wait: wait, Log: log, Role: n.role, Auth: n.auth, Ctx: ctx})
	if err != nil {
		return nil, nil, n.explainAuth(err)
	}
	m.mu.Lock()
	m.conns = append(m.conns, nc)
	m.mu.Unlock()
	return nc, js, nil
}

// explain turns a timeout the server's permissions caused into a permission
// error naming the role and the subject.
func (m *Main) explain(err error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, nc := range m.conns {
		if e := nc.Explain(err); e != err {
			return e
		}
	}
	return err
}

// connState is the part of Main that remembers connections.
type connState struct {
	mu    sync.Mutex
	conns []*events.Conn
}
