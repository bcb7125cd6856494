package events

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func TestParseViolation(t *testing.T) {
	for _, tt := range []struct{ msg, op, subject string }{
		{`Permissions Violation for Publish to "jetci.commit.a.b"`, "publish to", "jetci.commit.a.b"},
		{`Permissions Violation for Subscription to "_INBOX_reporter.>"`, "subscribe to", "_INBOX_reporter.>"},
		{`permissions violation for publish to "$JS.API.STREAM.DELETE.JETCI_JOBS"`, "publish to", "$JS.API.STREAM.DELETE.JETCI_JOBS"},
	} {
		pe := parseViolation("runner", fmt.Errorf("%w: %s", nats.ErrPermissionViolation, tt.msg))
		if pe.Op != tt.op || pe.Subject != tt.subject {
			t.Errorf("%q: got %s %q, want %s %q", tt.msg, pe.Op, pe.Subject, tt.op, tt.subject)
		}
	}
}

func TestPermissionErrorText(t *testing.T) {
	e := &PermissionError{Who: "observer", Op: "publish to", Subject: "$JS.API.STREAM.CREATE.JETCI_COMMITS", Err: nats.ErrTimeout}
	want := `permission denied: observer may not publish to "$JS.API.STREAM.CREATE.JETCI_COMMITS" (jetci's streams and buckets are created by the admin user: run 'jetci setup' with its credentials): nats: timeout`
	if e.Error() != want {
		t.Errorf("got  %s\nwant %s", e.Error(), want)
	}
	if !errors.Is(e, nats.ErrPermissionViolation) || !errors.Is(e, nats.ErrTimeout) {
		t.Error("want it to wrap both the permission violation and the timeout")
	}
}

func TestAuthValidate(t *testing.T) {
	for _, tt := range []struct {
		a    Auth
		want string
	}{
		{Auth{}, ""},
		{Auth{User: "runner", Password: "x"}, ""},
		{Auth{User: "runner", CredsFile: "f"}, "give one of"},
		{Auth{Password: "x"}, "needs --nats-user"},
		{Auth{TLSCert: "c"}, "go together"},
		{Auth{TLSCA: "does-not-exist.pem"}, "--tls-ca does-not-exist.pem"},
	} {
		err := tt.a.Validate()
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("Validate(%+v) = %v, want %q", tt.a, err, tt.want)
		}
	}
}

// Every role may look its streams up, reads replies on its own inbox, and only
// the admin may create streams.
func TestRolesShape(t *testing.T) {
	for _, r := range Roles() {
		create := false
		for _, p := range r.Publish {
			if strings.HasPrefix(p, "$JS.API.STREAM.CREATE") || p == "$JS.API.>" {
				create = true
			}
		}
		if create != (r.Name == RoleAdmin) {
			t.Errorf("role %s: may create streams = %v", r.Name, create)
		}
		if !strings.Contains(AccountsConf(), `"`+InboxPrefix(r.Name)+`.>"`) {
			t.Errorf("role %s: no inbox", r.Name)
		}
	}
}

// TestConnExplain: a connection's recent refusal explains a timeout on it,
// an old one or none leaves the error as it is.
func TestConnExplain(t *testing.T) {
	c := &Conn{}
	if err := c.Explain(nats.ErrTimeout); err != nats.ErrTimeout {
		t.Fatalf("no refusal: got %v", err)
	}
	c.recordDenial(&PermissionError{Who: "runner", Op: "publish to", Subject: "jetci.commit.a.b"})
	err := c.Explain(nats.ErrTimeout)
	var pe *PermissionError
	if !errors.As(err, &pe) || pe.Subject != "jetci.commit.a.b" || !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("after a refusal: got %v", err)
	}
	if again := c.Explain(err); again != err {
		t.Fatalf("explained twice: %v", again)
	}
	c.deniedAt = time.Now().Add(-deniedWindow - time.Second)
	if err := c.Explain(nats.ErrTimeout); err != nats.ErrTimeout {
		t.Fatalf("an old refusal: got %v", err)
	}
	if err := (*Conn)(nil).Explain(nats.ErrTimeout); err != nats.ErrTimeout {
		t.Fatalf("nil Conn: got %v", err)
	}
}
