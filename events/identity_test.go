package events_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/jetci/jetci/broker/brokertest"
	. "github.com/jetci/jetci/events"
)

// TestKeysVerify: service and runner signatures verify; a changed byte, a
// runner speaking for another, an unregistered or revoked identity do not.
func TestKeysVerify(t *testing.T) {
	s := brokertest.Run(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	keys, err := OpenKeys(ctx, s.JS)
	if err != nil {
		t.Fatal(err)
	}
	kp, _ := nkeys.CreateUser()
	if err := RegisterRunner(ctx, s.JS, "pool1", kp); err != nil {
		t.Fatal(err)
	}
	data := []byte(`{"type":"jetci.job.finished.v1","runner":"pool1-3"}`)
	sig, _ := SignRunner(kp, "pool1", data)
	svc, err := ServiceSigner(keys)(data)
	if err != nil {
		t.Fatal(err)
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
			if !ok() {
				return errString(what)
			}
			return nil
		})
	}
	waitFor("the registered key", func() bool { _, err := keys.Verify(data, sig, "pool1-3"); return err == nil })
	if who, err := keys.Verify(data, svc, ""); err != nil || who != "service" {
		t.Errorf("service signature: %q %v", who, err)
	}
	bad := append([]byte{}, data...)
	bad[5] ^= 1
	for _, tt := range []struct {
		data         []byte
		sig, runner  string
		wantContains string
	}{
		{bad, sig, "pool1-3", "bad signature"},
		{bad, svc, "", "bad service signature"},
		{data, sig, "other", "may not speak"},
		{data, sig, "pool10", "may not speak"},
		{data, "", "pool1", "no Jetci-Sig"},
		{data, "runner pool1 !!", "pool1", "malformed"},
		{data, strings.Replace(sig, "pool1", "pool2", 1), "pool2-1", "not registered"},
	} {
		if _, err := keys.Verify(tt.data, tt.sig, tt.runner); err == nil || !strings.Contains(err.Error(), tt.wantContains) {
			t.Errorf("Verify(%q, %q): %v, want %q", tt.sig, tt.runner, err, tt.wantContains)
		}
	}
	kv, _ := s.JS.KeyValue(ctx, BucketKeys)
	if err := kv.Delete(ctx, RunnerKeyName("pool1")); err != nil {
		t.Fatal(err)
	}
	waitFor("the revocation", func() bool { _, err := keys.Verify(data, sig, "pool1-3"); return err != nil })
}

// TestKeysVerifyAKeyJustRegistered: a runner's result that follows its
// identity's registration faster than the keys' watch (stopped here) is
// verified from the bucket, not refused as forged; once the identity is
// revoked it is refused again. (The reporter's notifier dropped such a
// result: TestCommitStatusesPendingThenResult was flaky.)
func TestKeysVerifyAKeyJustRegistered(t *testing.T) {
	s := brokertest.Run(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wctx, stopWatch := context.WithCancel(ctx)
	keys, err := OpenKeys(wctx, s.JS)
	if err != nil {
		t.Fatal(err)
	}
	stopWatch() // the watch sees nothing from here on
	kp, _ := nkeys.CreateUser()
	if err := RegisterRunner(ctx, s.JS, "fresh", kp); err != nil {
		t.Fatal(err)
	}
	data := []byte(`{"type":"jetci.job.finished.v1","runner":"fresh"}`)
	sig, _ := SignRunner(kp, "fresh", data)
	if who, err := keys.Verify(data, sig, "fresh"); err != nil || who != "runner fresh" {
		t.Fatalf("a key just registered: %q %v", who, err)
	}
	kv, _ := s.JS.KeyValue(ctx, BucketKeys)
	if err := kv.Delete(ctx, RunnerKeyName("fresh")); err != nil {
		t.Fatal(err)
	}
	if _, err := keys.Verify(data, sig, "fresh"); err == nil || !strings.Contains(err.Error(), "not registered") {
		t.Errorf("a revoked key: %v", err)
	}
}

type errString string

func (e errString) Error() string { return string(e) }

// TestSigningJetStreamSignsOnlyResults: the wrapper signs results subjects
// and leaves the rest alone.
func TestSigningJetStreamSignsOnlyResults(t *testing.T) {
	s := brokertest.Run(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js := SigningJetStream(s.JS, func([]byte) (string, error) { return "svc c2ln", nil })
	if _, err := js.Publish(ctx, ResultSubject("r", "b", KindQueued), []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, CommitSubject("r", "b"), []byte("y")); err != nil {
		t.Fatal(err)
	}
	for subject, want := range map[string]string{ResultSubject("r", "b", KindQueued): "svc c2ln", CommitSubject("r", "b"): ""} {
		stream := StreamResults
		if want == "" {
			stream = StreamCommits
		}
		st, _ := s.JS.Stream(ctx, stream)
		m, err := st.GetLastMsgForSubject(ctx, subject)
		if err != nil {
			t.Fatal(err)
		}
		if got := m.Header.Get(SigHeader); got != want {
			t.Errorf("%s: header %q, want %q", subject, got, want)
		}
	}
	_ = jetstream.ErrKeyNotFound
}

// FuzzParseSignature: any header either parses into a signature of the known
// kinds or is refused as forged; never a panic.
func FuzzParseSignature(f *testing.F) {
	for _, s := range []string{"", "svc AAAA", "runner r1 AAAA", "runner r1", "runner  x y", "svc", "svc !!!", "runner a.b AAAA",
		"runner " + strings.Repeat("a", 81) + " AAAA", "svc " + strings.Repeat("A", 400)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		s, err := ParseSignature(h)
		if err != nil {
			if !strings.Contains(err.Error(), "forged") {
				t.Errorf("%q: error %v does not wrap ErrForged", h, err)
			}
			return
		}
		if len(s.Sig) == 0 || len(s.Sig) > 128 || (!s.Service && ValidIdentity(s.Name) != nil) {
			t.Errorf("%q parsed into %+v", h, s)
		}
	})
}

// TestRunnerSignerSignsAsSignRunner: the signer that expands the key once
// gives the very header SignRunner gives (ed25519 is deterministic), and it
// verifies.
func TestRunnerSignerSignsAsSignRunner(t *testing.T) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	sign := RunnerSigner(kp, "r1")
	for _, data := range [][]byte{nil, []byte("{}"), []byte(strings.Repeat("x", 5000))} {
		got, err := sign(data)
		if err != nil {
			t.Fatal(err)
		}
		want, err := SignRunner(kp, "r1", data)
		if err != nil || got != want {
			t.Fatalf("signer %q, SignRunner %q (%v)", got, want, err)
		}
		sig, err := ParseSignature(got)
		if err != nil {
			t.Fatal(err)
		}
		if err := kp.Verify(data, sig.Sig); err != nil {
			t.Fatal(err)
		}
	}
}
