package events

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// Auth is how a process proves who it is to the NATS server, and how it checks
// the server: at most one of a user and password, a credentials file (JWT and
// seed, from nsc) or an nkey seed file; and TLS with a CA and, when the server
// asks for client certificates, a certificate and key. The zero Auth connects
// without credentials over plain TCP, as `jetci up` does on loopback.
type Auth struct {
	User, Password string
	CredsFile      string // a .creds file: JWT and nkey seed
	NKeyFile       string // a file holding an nkey seed (SU...)
	TLSCA          string // CA that signed the server's certificate (PEM)
	TLSCert        string // client certificate (PEM), for servers that verify clients
	TLSKey         string // its key
}

// Validate reports the first inconsistent field.
func (a Auth) Validate() error {
	n := 0
	for _, set := range []bool{a.User != "", a.CredsFile != "", a.NKeyFile != ""} {
		if set {
			n++
		}
	}
	switch {
	case n > 1:
		return errors.New("nats credentials: give one of --nats-user, --nats-creds and --nats-nkey")
	case a.Password != "" && a.User == "":
		return errors.New("nats credentials: --nats-password needs --nats-user")
	case (a.TLSCert == "") != (a.TLSKey == ""):
		return errors.New("nats TLS: --tls-cert and --tls-key go together")
	}
	for flag, f := range map[string]string{"--nats-creds": a.CredsFile, "--nats-nkey": a.NKeyFile, "--tls-ca": a.TLSCA, "--tls-cert": a.TLSCert, "--tls-key": a.TLSKey} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%s %s: %w", flag, f, err)
		}
	}
	return nil
}

// Secured reports whether any credentials are given.
func (a Auth) Secured() bool { return a.User != "" || a.CredsFile != "" || a.NKeyFile != "" }

// Options turns a into nats.go options.
func (a Auth) Options() ([]nats.Option, error) {
	if err := a.Validate(); err != nil {
		return nil, err
	}
	var opts []nats.Option
	switch {
	case a.User != "":
		opts = append(opts, nats.UserInfo(a.User, a.Password))
	case a.CredsFile != "":
		opts = append(opts, nats.UserCredentials(a.CredsFile))
	case a.NKeyFile != "":
		o, err := nats.NkeyOptionFromSeed(a.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("--nats-nkey %s: %w", a.NKeyFile, err)
		}
		opts = append(opts, o)
	}
	if a.TLSCA != "" {
		opts = append(opts, nats.RootCAs(a.TLSCA))
	}
	if a.TLSCert != "" {
		opts = append(opts, nats.ClientCert(a.TLSCert, a.TLSKey))
	}
	return opts, nil
}

// InboxPrefix is the reply-subject prefix of a role: each role has its own, so
// the server can let a role read its own replies and no one else's
// (see Roles).
func InboxPrefix(role string) string { return "_INBOX_" + role }

// PermissionError is a publish or subscribe the server refused. The server
// refuses a publish silently (the publisher only hears of it asynchronously), so a
// request to a refused subject ends in a timeout; Explain turns that timeout into
// this error.
type PermissionError struct {
	Who     string // the role, or the user when no role is set
	Op      string // "publish to" or "subscribe to"
	Subject string
	Err     error // what the operation returned, e.g. a timeout
}

func (e *PermissionError) Error() string {
	s := fmt.Sprintf("permission denied: %s may not %s %q", e.Who, e.Op, e.Subject)
	if hint := permissionHint(e.Subject); hint != "" {
		s += " (" + hint + ")"
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap makes errors.Is find nats.ErrPermissionViolation and the operation's
// own error.
func (e *PermissionError) Unwrap() []error {
	if e.Err == nil {
		return []error{nats.ErrPermissionViolation}
	}
	return []error{nats.ErrPermissionViolation, e.Err}
}

func permissionHint(subject string) string {
	for _, p := range []string{"$JS.API.STREAM.CREATE.", "$JS.API.STREAM.UPDATE."} {
		if strings.HasPrefix(subject, p) {
			return "jetci's streams and buckets are created by the admin user: run 'jetci setup' with its credentials"
		}
	}
	if strings.HasPrefix(subject, "_INBOX") {
		return "each role reads replies only on its own inbox, _INBOX_<role>: connect with the user of this command's role"
	}
	return ""
}

var violationRE = regexp.MustCompile(`(?i)violation for (publish|subscription) to "([^"]+)"`)

// parseViolation reads the subject out of the server's permissions error.
func parseViolation(who string, err error) *PermissionError {
	m := violationRE.FindStringSubmatch(err.Error())
	if m == nil {
		return &PermissionError{Who: who, Op: "use", Subject: err.Error()}
	}
	op := "publish to"
	if m[1] == "subscription" || m[1] == "Subscription" {
		op = "subscribe to"
	}
	return &PermissionError{Who: who, Op: op, Subject: m[2]}
}

// deniedWindow is how long a refusal explains later failures: longer than any
// request's timeout.
const deniedWindow = 30 * time.Second

// Conn is a connection to the NATS server (made by Connect) that remembers
// the server's latest refusal of a publish or subscribe, so that Explain can
// say why an operation timed out.
type Conn struct {
	*nats.Conn
	mu       sync.Mutex
	denied   *PermissionError
	deniedAt time.Time
}

func (c *Conn) recordDenial(e *PermissionError) {
	c.mu.Lock()
	c.denied, c.deniedAt = e, time.Now()
	c.mu.Unlock()
}

// Explain returns err as a *PermissionError when the server refused something
// on c shortly before (a refused request shows up only as a timeout), and err
// unchanged otherwise.
func (c *Conn) Explain(err error) error {
	if err == nil || c == nil {
		return err
	}
	var pe *PermissionError
	if errors.As(err, &pe) {
		return err
	}
	c.mu.Lock()
	d, at := c.denied, c.deniedAt
	c.mu.Unlock()
	if d == nil || time.Since(at) > deniedWindow {
		return err
	}
	e := *d
	e.Err = err
	return &e
}
