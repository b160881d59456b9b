package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fieldgate/fieldgate/provisioning/pki"
)

func factory(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func mustFactory(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errOut := factory(t, args...)
	if code != 0 {
		t.Fatalf("fieldgate-factory %s: exit %d: %s", strings.Join(args, " "), code, errOut)
	}
	return out
}

func writeCSR(t *testing.T, path, cn string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o644)
}

// The whole command set, and openssl — what Mosquitto users check
// certificates with — agreeing with it.
func TestFactoryCommands(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "pki")
	out := mustFactory(t, "init", "--dir", p, "--org", "Acme")
	if !strings.Contains(out, "Acme Issuing CA") || !strings.Contains(out, "ca-chain.crt") {
		t.Errorf("init printed %q", out)
	}
	if code, _, errOut := factory(t, "init", "--dir", p, "--org", "Acme"); code != 1 || !strings.Contains(errOut, "already holds a PKI") {
		t.Errorf("second init: exit %d, %q", code, errOut)
	}

	csr := filepath.Join(dir, "dev.csr")
	writeCSR(t, csr, "EGW-0042")
	crt := filepath.Join(dir, "dev.crt")
	out = mustFactory(t, "sign", "--dir", p, "--csr", csr, "--out", crt, "--days", "30")
	if !strings.Contains(out, `CN "EGW-0042"`) {
		t.Errorf("sign printed %q", out)
	}
	if code, _, errOut := factory(t, "sign", "--dir", p, "--csr", csr, "--out", filepath.Join(dir, "again.crt")); code != 1 || !strings.Contains(errOut, "already has a valid certificate") {
		t.Errorf("second sign: exit %d, %q", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "again.crt")); err == nil {
		t.Error("a refused sign wrote its output")
	}

	srvCrt, srvKey := filepath.Join(dir, "srv.crt"), filepath.Join(dir, "srv.key")
	out = mustFactory(t, "server-cert", "--dir", p, "--cn", "broker", "--dns", "broker.site", "--dns", "localhost", "--ip", "127.0.0.1", "--out-cert", srvCrt, "--out-key", srvKey)
	if !strings.Contains(out, "broker.site, localhost, 127.0.0.1") {
		t.Errorf("server-cert printed %q", out)
	}
	if fi, _ := os.Stat(srvKey); fi.Mode().Perm() != 0o600 {
		t.Errorf("server key mode %04o, want 0600", fi.Mode().Perm())
	}
	keyBefore, _ := os.ReadFile(srvKey)
	if code, _, errOut := factory(t, "server-cert", "--dir", p, "--cn", "broker", "--dns", "x", "--out-cert", srvCrt, "--out-key", srvKey); code != 1 || !strings.Contains(errOut, "not replacing a key") {
		t.Errorf("server-cert over a key: exit %d, %q", code, errOut)
	}
	if keyAfter, _ := os.ReadFile(srvKey); !bytes.Equal(keyBefore, keyAfter) {
		t.Error("a refused server-cert replaced the key")
	}
	mustFactory(t, "client-cert", "--dir", p, "--cn", "plc-1", "--out-cert", filepath.Join(dir, "plc.crt"), "--out-key", filepath.Join(dir, "plc.key"))

	out = mustFactory(t, "revoke", "--dir", p, "--cert", crt, "--reason", "keyCompromise")
	if !strings.Contains(out, `CN "EGW-0042", keyCompromise`) {
		t.Errorf("revoke printed %q", out)
	}
	crl := filepath.Join(dir, "site.crl")
	out = mustFactory(t, "crl", "--dir", p, "--out", crl)
	if !strings.Contains(out, "1 revoked") {
		t.Errorf("crl printed %q", out)
	}
	out = mustFactory(t, "list", "--dir", p)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.Contains(lines[1], "EGW-0042") || !strings.Contains(lines[1], "revoked (keyCompromise)") || !strings.Contains(lines[2], "server") || !strings.Contains(lines[3], "valid") {
		t.Errorf("list:\n%s", out)
	}

	// openssl verifies through the chain, and with the CRL finds the
	// device revoked and the client not.
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("FIELDGATE_REQUIRE_PEERS") == "1" {
			t.Fatal("openssl is not installed (run .ci/deps)")
		}
		t.Skip("openssl is not installed")
	}
	chain := filepath.Join(p, pki.ChainFile)
	for _, tc := range []struct {
		cert, purpose, want string
	}{
		{srvCrt, "sslserver", ": OK"},
		{filepath.Join(dir, "plc.crt"), "sslclient", ": OK"},
		{crt, "sslclient", "certificate revoked"},
	} {
		b, _ := exec.Command(openssl, "verify", "-CAfile", chain, "-crl_check", "-CRLfile", crl, "-purpose", tc.purpose, tc.cert).CombinedOutput()
		if !strings.Contains(string(b), tc.want) {
			t.Errorf("openssl verify %s: %s, want %q", filepath.Base(tc.cert), b, tc.want)
		}
	}
}

func TestFactoryUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "usage"},
		{[]string{"bake"}, 2, `unknown command "bake"`},
		{[]string{"sign", "--dir", "x"}, 2, "--csr is required"},
		{[]string{"revoke", "--dir", "x"}, 2, "give --serial or --cert"},
		{[]string{"list", "--dir", t.TempDir()}, 1, "holds no PKI"},
		{[]string{"revoke", "--dir", "x", "--serial", "1", "--reason", "lost"}, 1, "want one of"},
		{[]string{"server-cert", "--dir", "x", "--cn", "b", "--ip", "nope", "--out-cert", "c", "--out-key", "k"}, 2, `--ip "nope"`},
	} {
		code, _, errOut := factory(t, tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d %q, want %d and %q", tc.args, code, errOut, tc.code, tc.want)
		}
	}
}
