package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fieldgate/fieldgate/provisioning"
	"github.com/fieldgate/fieldgate/provisioning/pki"
)

// device is a fresh device's configuration, with a file key store, and
// the factory PKI it is provisioned from.
type device struct {
	cfg, key, cert, chain string
	ca                    *pki.Authority
}

func newDevice(t *testing.T, deviceID string) *device {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.Init(filepath.Join(dir, "pki"), pki.InitOptions{Org: "Acme"})
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	d := &device{cfg: filepath.Join(dir, "fieldgate.toml"), key: filepath.Join(state, "device.key"), cert: filepath.Join(state, "device.crt"), chain: filepath.Join(ca.Dir(), pki.ChainFile), ca: ca}
	id := ""
	if deviceID != "" {
		id = fmt.Sprintf("id = %q\n", deviceID)
	}
	os.WriteFile(d.cfg, []byte(fmt.Sprintf("[device]\n%sstate_dir = %q\n[identity]\nkey = \"file:%s\"\ncert = %q\nca = %q\n", id, state, d.key, d.cert, d.chain)), 0o600)
	return d
}

func (d *device) sign(t *testing.T, ca *pki.Authority, csrPath string, o pki.SignOptions) string {
	t.Helper()
	req, err := os.ReadFile(csrPath)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.SignCSR(req, o)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "device.crt")
	os.WriteFile(out, pki.CertPEM(c), 0o644)
	return out
}

// A certificate for the device's key, issued by a CA of the test's own
// with the given extended key usage; returns it and the CA's certificate.
func certForKey(t *testing.T, keyFile string, eku ...x509.ExtKeyUsage) (string, string) {
	t.Helper()
	signer, err := provisioning.LoadSigner("file:"+keyFile, provisioning.Options{})
	if err != nil {
		t.Fatal(err)
	}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Other CA"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "EGW-7"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: eku}, caCert, signer.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	crt, caFile := filepath.Join(dir, "c.crt"), filepath.Join(dir, "ca.crt")
	os.WriteFile(crt, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644)
	return crt, caFile
}

func TestProvisionRefusals(t *testing.T) {
	d := newDevice(t, "")
	csr := filepath.Join(t.TempDir(), "device.csr")

	if code, _, errOut := provision(t, "install", "--config", d.cfg, "--cert", "/nonexistent"); code != 1 || !strings.Contains(errOut, "/nonexistent") {
		t.Errorf("install of a missing file: exit %d %q", code, errOut)
	}
	if code, _, errOut := provision(t, "csr", "--config", d.cfg, "--out", csr); code != 1 || !strings.Contains(errOut, "--id is needed") {
		t.Errorf("csr without an id: exit %d %q", code, errOut)
	}
	if code, _, errOut := provision(t, "csr", "--config", d.cfg, "--id", "EGW 7/#", "--out", csr); code != 1 || !strings.Contains(errOut, `--id "EGW 7/#"`) {
		t.Errorf("csr with a bad id: exit %d %q", code, errOut)
	}
	if out := mustProvision(t, "show", "--config", d.cfg); !strings.Contains(out, "key          none yet") || !strings.Contains(out, "certificate  none installed yet") {
		t.Errorf("show on a fresh device:\n%s", out)
	}
	mustProvision(t, "csr", "--config", d.cfg, "--id", "EGW-7", "--out", csr)
	if fi, err := os.Stat(d.key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, mode %v", err, fi)
	}

	other, err := pki.Init(filepath.Join(t.TempDir(), "other"), pki.InitOptions{Org: "Other"})
	if err != nil {
		t.Fatal(err)
	}
	past := time.Now().AddDate(-2, 0, 0)
	oldCA, err := pki.Init(filepath.Join(t.TempDir(), "old"), pki.InitOptions{Org: "Old", Now: func() time.Time { return past }})
	if err != nil {
		t.Fatal(err)
	}
	otherKey, _, err := d.ca.IssueClient("EGW-9", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	otherKeyFile := filepath.Join(t.TempDir(), "k.crt")
	os.WriteFile(otherKeyFile, pki.CertPEM(otherKey), 0o644)
	serverOnly, serverCA := certForKey(t, d.key, x509.ExtKeyUsageServerAuth)
	noEKU, noEKUCA := certForKey(t, d.key)
	expired := d.sign(t, oldCA, csr, pki.SignOptions{Days: 30})
	// A certificate from a CA of the attacker's own, that CA appended: the
	// root that comes with a certificate proves nothing.
	rogue, rogueCA := certForKey(t, d.key, x509.ExtKeyUsageClientAuth)
	rogueBundle := filepath.Join(t.TempDir(), "rogue.pem")
	rc, _ := os.ReadFile(rogue)
	rca, _ := os.ReadFile(rogueCA)
	os.WriteFile(rogueBundle, append(rc, rca...), 0o644)
	// The device's certificate after its CA, not before.
	good0 := d.sign(t, d.ca, csr, pki.SignOptions{})
	leafLast := filepath.Join(t.TempDir(), "leaf-last.pem")
	g0, _ := os.ReadFile(good0)
	os.WriteFile(leafLast, append(pki.CertPEM(d.ca.Issuer()), g0...), 0o644)
	// A CN that the PKI's own pattern allows but no device id can be.
	loose, err := pki.Init(filepath.Join(t.TempDir(), "loose"), pki.InitOptions{Org: "Loose", CNPattern: `^.+$`})
	if err != nil {
		t.Fatal(err)
	}
	spacedCSR := filepath.Join(t.TempDir(), "spaced.csr")
	key, _ := provisioning.LoadSigner("file:"+d.key, provisioning.Options{})
	spaced, _ := provisioning.CreateCSR(key, "EGW 7 hall B")
	os.WriteFile(spacedCSR, spaced, 0o644)

	refusals := []struct {
		name, cert, chain, want string
	}{
		{"another key", otherKeyFile, d.chain, "is for another key"},
		{"expired", expired, filepath.Join(oldCA.Dir(), pki.ChainFile), "the certificate expired on"},
		{"another CA", d.sign(t, other, csr, pki.SignOptions{}), d.chain, "does not chain to the factory CA"},
		{"no clientAuth", serverOnly, serverCA, "does not allow client authentication"},
		{"no extended key usage", noEKU, noEKUCA, "does not allow client authentication"},
		{"a root of its own", rogueBundle, d.chain, "does not chain to the factory CA"},
		{"leaf last", leafLast, d.chain, "must come first in the file"},
		{"CN not a device id", d.sign(t, loose, spacedCSR, pki.SignOptions{}), filepath.Join(loose.Dir(), pki.ChainFile), `CN "EGW 7 hall B" cannot be a device id`},
		{"not a certificate", csr, d.chain, "no PEM certificate"},
	}
	check := func(before []byte) {
		t.Helper()
		for _, r := range refusals {
			args := []string{"install", "--config", d.cfg, "--cert", r.cert, "--chain", r.chain}
			if code, _, errOut := provision(t, args...); code != 1 || !strings.Contains(errOut, r.want) {
				t.Errorf("%s: exit %d %q, want 1 and %q", r.name, code, errOut, r.want)
			}
			after, err := os.ReadFile(d.cert)
			if before == nil && err == nil {
				t.Errorf("%s: a certificate was installed", r.name)
			} else if before != nil && !bytes.Equal(before, after) {
				t.Errorf("%s: the installed certificate was replaced", r.name)
			}
		}
	}
	check(nil)

	// Without --chain, identity.ca is the factory CA.
	good := d.sign(t, d.ca, csr, pki.SignOptions{Renew: true})
	out := mustProvision(t, "install", "--config", d.cfg, "--cert", good)
	if !strings.Contains(out, `installed `+d.cert+`: CN "EGW-7"`) {
		t.Errorf("install: %q", out)
	}
	installed, _ := os.ReadFile(d.cert)
	if certs, _ := provisioning.ParseCertificates(installed); len(certs) != 2 || certs[1].Subject.CommonName != "Acme Issuing CA" {
		t.Errorf("installed chain has %d certificates, want the device's and the issuing CA's", len(certs))
	}
	check(installed)

	// A key others can read is refused, and not replaced.
	os.Chmod(d.key, 0o644)
	keyBefore, _ := os.ReadFile(d.key)
	for _, cmd := range [][]string{{"csr", "--id", "EGW-7", "--out", csr}, {"show"}, {"install", "--cert", good}} {
		code, _, errOut := provision(t, append(append(cmd[:1:1], "--config", d.cfg), cmd[1:]...)...)
		if code != 1 || !strings.Contains(errOut, "mode 0644") || !strings.Contains(errOut, "chmod 600") {
			t.Errorf("%s with a 0644 key: exit %d %q", cmd[0], code, errOut)
		}
	}
	if keyAfter, _ := os.ReadFile(d.key); !bytes.Equal(keyBefore, keyAfter) {
		t.Error("the loose key was replaced")
	}
	var errOut bytes.Buffer
	if code := run([]string{"check-config", "--config", d.cfg}, new(bytes.Buffer), &errOut); code != 1 || !strings.Contains(errOut.String(), "mode 0644") {
		t.Errorf("check-config with a 0644 key: exit %d %q", code, errOut.String())
	}
}

func TestProvisionRenew(t *testing.T) {
	d := newDevice(t, "EGW-8")
	csr := filepath.Join(t.TempDir(), "device.csr")
	if code, _, errOut := provision(t, "renew", "--config", d.cfg, "--out", csr); code != 1 || !strings.Contains(errOut, "nothing to renew") {
		t.Errorf("renew before install: exit %d %q", code, errOut)
	}
	mustProvision(t, "csr", "--config", d.cfg, "--out", csr) // the id from device.id
	mustProvision(t, "install", "--config", d.cfg, "--cert", d.sign(t, d.ca, csr, pki.SignOptions{}))
	oldKey, _ := os.ReadFile(d.key)
	oldCert, _ := os.ReadFile(d.cert)

	renewCSR := filepath.Join(t.TempDir(), "renew.csr")
	out := mustProvision(t, "renew", "--config", d.cfg, "--out", renewCSR)
	if !strings.Contains(out, `CN "EGW-8", a new pending key`) {
		t.Errorf("renew: %q", out)
	}
	// Until the new certificate is installed the device is as it was.
	st, err := provisioning.Open("file:"+d.key, provisioning.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := provisioning.LoadIdentity(st, d.cert); err != nil {
		t.Fatalf("identity during a renewal: %v", err)
	}
	if k, _ := os.ReadFile(d.key); !bytes.Equal(k, oldKey) {
		t.Error("renew replaced the current key")
	}
	if out := mustProvision(t, "show", "--config", d.cfg); !strings.Contains(out, "renewal      a new key waits") {
		t.Errorf("show during a renewal:\n%s", out)
	}
	// Asked again, renew keeps the pending key: a CSR already sent stays good.
	pending, _ := os.ReadFile(d.key + ".next")
	if out := mustProvision(t, "renew", "--config", d.cfg, "--out", renewCSR); !strings.Contains(out, "the pending key of an earlier renew") {
		t.Errorf("second renew: %q", out)
	}
	if p, _ := os.ReadFile(d.key + ".next"); !bytes.Equal(p, pending) {
		t.Error("a second renew replaced the pending key")
	}

	newCert := d.sign(t, d.ca, renewCSR, pki.SignOptions{Renew: true})
	out = mustProvision(t, "install", "--config", d.cfg, "--cert", newCert)
	if !strings.Contains(out, "the renewed key is now the current one") {
		t.Errorf("install of the renewal: %q", out)
	}
	if k, _ := os.ReadFile(d.key); !bytes.Equal(k, pending) {
		t.Error("the pending key did not become the current one")
	}
	if _, err := os.Stat(d.key + ".next"); err == nil {
		t.Error("the pending key file is still there")
	}
	if c, _ := os.ReadFile(d.cert); bytes.Equal(c, oldCert) {
		t.Error("the certificate was not replaced")
	}
	if _, err := provisioning.LoadIdentity(st, d.cert); err != nil {
		t.Errorf("identity after the renewal: %v", err)
	}
	if out := mustProvision(t, "show", "--config", d.cfg); strings.Contains(out, "renewal      ") || strings.Contains(out, "WARNING") {
		t.Errorf("show after the renewal:\n%s", out)
	}

	// --force makes a new current key, and says the certificate is now
	// for the old one.
	code, out, errOut := provision(t, "csr", "--config", d.cfg, "--force", "--out", csr)
	if code != 0 || !strings.Contains(out, "a new key") || !strings.Contains(errOut, "is for the old key") {
		t.Errorf("csr --force: exit %d %q %q", code, out, errOut)
	}
	if out := mustProvision(t, "show", "--config", d.cfg); !strings.Contains(out, "WARNING      the certificate is not for the current key") {
		t.Errorf("show after csr --force:\n%s", out)
	}
}

// An installer runs provision as root on a device whose state directory
// belongs to the service user (systemd's StateDirectory=): what it writes
// is given to that user, whom the gateway then accepts; a key another
// user owns is still refused.
func TestProvisionAsRootHandsOver(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, as an installer has")
	}
	const service = 990
	d := newDevice(t, "EGW-ROOT")
	state := filepath.Dir(d.key)
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(state, service, service); err != nil {
		t.Fatal(err)
	}
	// The service user plants links in its directory, hoping root will
	// give it what they point at.
	target := filepath.Join(t.TempDir(), "root-secret")
	os.WriteFile(target, []byte("secret"), 0o600)
	os.Symlink(target, filepath.Join(state, "link"))
	os.Link(target, filepath.Join(state, "hardlink"))
	os.Mkdir(filepath.Join(state, "d"), 0o700)
	csr := filepath.Join(t.TempDir(), "device.csr")
	code, _, errOut := provision(t, "csr", "--config", d.cfg, "--out", csr)
	if code != 0 || !strings.Contains(errOut, "as uid 990, the owner of "+state) {
		t.Fatalf("csr as root: exit %d %q", code, errOut)
	}
	mustProvision(t, "install", "--config", d.cfg, "--cert", d.sign(t, d.ca, csr, pki.SignOptions{}))
	for _, p := range []string{d.key, d.cert} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if uid := fi.Sys().(*syscall.Stat_t).Uid; uid != service {
			t.Errorf("%s owned by uid %d, want %d", p, uid, service)
		}
	}
	if fi, _ := os.Stat(target); fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Errorf("a file outside the state directory was given to uid %d", fi.Sys().(*syscall.Stat_t).Uid)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"check-config", "--config", d.cfg}, &out, &errb); code != 0 {
		t.Errorf("check-config as root on the service's files: %s", errb.String())
	}
	os.Chown(d.key, service+1, service+1)
	if code, _, errOut := provision(t, "show", "--config", d.cfg); code != 1 || !strings.Contains(errOut, "owned by uid 991, not by the service user (uid 990)") {
		t.Errorf("a key of another user: exit %d %q", code, errOut)
	}
}
