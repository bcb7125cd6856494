package events_test

import (
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/jetci/jetci/events"
)

var update = flag.Bool("update", false, "rewrite jetci-accounts.conf from events.Roles")

// TestAccountsConf keeps the shipped jetci-accounts.conf (included by nats.conf)
// equal to events.Roles, the one definition of what each role may do.
func TestAccountsConf(t *testing.T) {
	const path = "../jetci-accounts.conf"
	want := events.AccountsConf()
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("%s is out of date with events.Roles: run 'go test ./events -run TestAccountsConf -update'", path)
	}
	for _, r := range events.Roles() {
		if !strings.Contains(want, "password: $"+events.PasswordVar(r.Name)) {
			t.Errorf("role %s: no password variable", r.Name)
		}
	}
}
