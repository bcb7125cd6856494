package brokertest

import (
	"strings"
	"testing"
)

// TestServerLogIsKept: the server's log is kept (its start, at least), and
// a long one keeps its end.
func TestServerLogIsKept(t *testing.T) {
	s := Run(t)
	if log := s.Log(); !strings.Contains(log, "Server is ready") {
		t.Fatalf("the server's log lacks its start:\n%s", log)
	}
	l := &serverLog{}
	l.Write([]byte("first\n"))
	if l.String() != "first\n" {
		t.Fatalf("log %q", l.String())
	}
	l.Write([]byte(strings.Repeat("x", serverLogMax)))
	l.Write([]byte("last\n"))
	got := l.String()
	if !strings.HasPrefix(got, "[…earlier lines dropped]") || !strings.HasSuffix(got, "last\n") || strings.Contains(got, "first") {
		t.Fatalf("a long log keeps %d bytes, head %q", len(got), got[:40])
	}
}
