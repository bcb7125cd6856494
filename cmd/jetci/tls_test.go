package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jetci/jetci/broker/brokertest"
)

// testPKI writes a CA and a server and a client certificate signed by it, and
// returns the file names.
type testPKI struct{ ca, serverCert, serverKey, clientCert, clientKey string }

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey := key()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "jetci test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage) (string, string) {
		k := key()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalECPrivateKey(k)
		return write(name+".pem", "CERTIFICATE", der), write(name+"-key.pem", "EC PRIVATE KEY", kder)
	}
	p := testPKI{ca: write("ca.pem", "CERTIFICATE", caDER)}
	p.serverCert, p.serverKey = leaf("server", 2, x509.ExtKeyUsageServerAuth)
	p.clientCert, p.clientKey = leaf("client", 3, x509.ExtKeyUsageClientAuth)
	return p
}

// TestServerTLS: `jetci server` with the shipped nats.conf and --tls-cert,
// --tls-key and --tls-ca serves TLS and asks for client certificates; a client
// with --tls-ca, a client certificate and its role's password gets in, one
// without the CA, without a certificate or without a password does not.
func TestServerTLS(t *testing.T) {
	pw := setRolePasswords(t)
	pki := newTestPKI(t)
	natsAddr := reserveAddr(t)
	url := "nats://" + natsAddr
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	logs := &syncBuffer{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		args := append([]string{"server", "--config", "../../nats.conf", "--listen", natsAddr, "--monitor", "127.0.0.1:0", "--store", t.TempDir(),
			"--tls-cert", pki.serverCert, "--tls-key", pki.serverKey, "--tls-ca", pki.ca, "--log-format", "json"}, as(pw, "admin")...)
		if code := (&Main{Stdout: logs, Stderr: logs}).Run(ctx, args); code != 0 {
			t.Errorf("jetci server exited %d", code)
		}
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
		}
	})
	withTLS := []string{"--tls-ca", pki.ca, "--tls-cert", pki.clientCert, "--tls-key", pki.clientKey}
	admin := append(as(pw, "admin"), withTLS...)
	brokertest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(logs.String(), "jetci streams ready") {
			return fmt.Errorf("streams not set up yet")
		}
		return nil
	})
	if _, err := resultsJSON(t, url, admin...); err != nil { // the server set the streams up as the admin
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), `"tls":true`) {
		t.Errorf("the server's ready line does not say it serves TLS")
	}
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"no CA", append(as(pw, "admin"), "--tls-cert", pki.clientCert, "--tls-key", pki.clientKey), "tls"},
		{"no client certificate", append(as(pw, "admin"), "--tls-ca", pki.ca), "tls"}, // the server closes the handshake
		{"no password", withTLS, "uthorization"},
		{"a runner's password", append(as(pw, "runner"), withTLS...), `permission denied: user runner (running as admin) may not publish to "jetci.query.results"`},
	} {
		_, err := resultsJSON(t, url, tt.args...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error about %s", tt.name, err, tt.want)
		}
	}
}
