package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func newPKI(t *testing.T) *Authority {
	t.Helper()
	a, err := Init(filepath.Join(t.TempDir(), "pki"), InitOptions{Org: "Acme", Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func csr(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func p256(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func verify(t *testing.T, a *Authority, c *x509.Certificate, usage x509.ExtKeyUsage) {
	t.Helper()
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(a.Root())
	inter.AddCert(a.Issuer())
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		t.Fatalf("certificate does not verify through the chain: %v", err)
	}
}

func TestInit(t *testing.T) {
	a := newPKI(t)
	for name, want := range map[string]os.FileMode{RootKey: 0o600, IssuerKey: 0o600, RootCert: 0o644, IssuerCert: 0o644, ChainFile: 0o644, indexFile: 0o600, ".": 0o700} {
		fi, err := os.Stat(filepath.Join(a.Dir(), name))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %04o, want %04o", name, got, want)
		}
	}
	iss := a.Issuer()
	if !iss.IsCA || iss.MaxPathLen != 0 || !iss.MaxPathLenZero {
		t.Errorf("issuing CA: IsCA %v MaxPathLen %d zero %v, want a CA with path length 0", iss.IsCA, iss.MaxPathLen, iss.MaxPathLenZero)
	}
	if err := iss.CheckSignatureFrom(a.Root()); err != nil {
		t.Errorf("issuing CA not signed by the root: %v", err)
	}
	if _, ok := iss.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Errorf("issuing CA key %T, want ECDSA", iss.PublicKey)
	}
	chain, _ := os.ReadFile(filepath.Join(a.Dir(), ChainFile))
	b1, rest := pem.Decode(chain)
	b2, _ := pem.Decode(rest)
	if b1 == nil || b2 == nil || string(b1.Bytes) != string(iss.Raw) || string(b2.Bytes) != string(a.Root().Raw) {
		t.Error("ca-chain.crt is not the issuing CA then the root")
	}

	before, _ := os.ReadFile(filepath.Join(a.Dir(), IssuerKey))
	_, err := Init(a.Dir(), InitOptions{Org: "Other"})
	if err == nil || !strings.Contains(err.Error(), "already holds a PKI") {
		t.Fatalf("second init: got %v, want a refusal", err)
	}
	after, _ := os.ReadFile(filepath.Join(a.Dir(), IssuerKey))
	if string(before) != string(after) {
		t.Error("a refused init changed the issuing CA's key")
	}
	if _, err := Init(t.TempDir(), InitOptions{}); err == nil {
		t.Error("init without an organisation succeeded")
	}
}

func TestSignCSR(t *testing.T) {
	a := newPKI(t)
	key := p256(t)
	req := csr(t, key, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: "EGW-0001", Organization: []string{"Evil Corp"}},
		DNSNames: []string{"central.example.com"},
	})
	c, err := a.SignCSR(req, SignOptions{})
	if err != nil {
		t.Fatal(err)
	}
	verify(t, a, c, x509.ExtKeyUsageClientAuth)
	if c.Subject.CommonName != "EGW-0001" || len(c.Subject.Organization) != 1 || c.Subject.Organization[0] != "Acme" {
		t.Errorf("subject %v, want CN EGW-0001, O Acme (the CA's, not the request's)", c.Subject)
	}
	if len(c.DNSNames) != 0 {
		t.Errorf("DNS names %v copied from the request", c.DNSNames)
	}
	if len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Errorf("EKU %v, want clientAuth only", c.ExtKeyUsage)
	}
	if !c.NotBefore.Equal(t0.Add(-Backdate)) {
		t.Errorf("notBefore %v, want %v (backdated)", c.NotBefore, t0.Add(-Backdate))
	}
	if !c.NotAfter.Equal(t0.AddDate(0, 0, DeviceDays)) {
		t.Errorf("notAfter %v, want %v", c.NotAfter, t0.AddDate(0, 0, DeviceDays))
	}
	if c.SerialNumber.BitLen() > 128 || c.SerialNumber.BitLen() < 64 {
		t.Errorf("serial of %d bits, want a random 128-bit one", c.SerialNumber.BitLen())
	}
	if !c.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Error("certificate is for another key")
	}
	list, err := a.List()
	if err != nil || len(list) != 1 || list[0].CN != "EGW-0001" || list[0].Serial != SerialString(c.SerialNumber) || list[0].Kind != Device {
		t.Fatalf("index %+v, %v", list, err)
	}
	saved, err := readCert(filepath.Join(a.Dir(), certsDir, list[0].Serial+".crt"))
	if err != nil || !saved.Equal(c) {
		t.Errorf("copy under certs/: %v", err)
	}
}

func TestSignRefusals(t *testing.T) {
	a := newPKI(t)
	good := csr(t, p256(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "EGW-0002"}})

	// A signature that does not verify: flip a bit of its last byte.
	block, _ := pem.Decode(good)
	bad := append([]byte(nil), block.Bytes...)
	bad[len(bad)-1] ^= 1
	badPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: bad})

	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)

	for _, tc := range []struct {
		name string
		csr  []byte
		o    SignOptions
		want string
	}{
		{"bad signature", badPEM, SignOptions{}, "signature does not verify"},
		{"not PEM", []byte("hello"), SignOptions{}, "no PEM CERTIFICATE REQUEST"},
		{"CN pattern", csr(t, p256(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "egw 3/#"}}), SignOptions{}, `CN "egw 3/#" does not match`},
		{"site pattern", good, SignOptions{CNPattern: `^SITE-[0-9]+$`}, `does not match the pattern ^SITE-[0-9]+$`},
		{"no CN", csr(t, p256(t), &x509.CertificateRequest{}), SignOptions{}, "no CN"},
		{"small RSA", csr(t, rsa1024, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "EGW-0003"}}), SignOptions{}, "RSA key of 1024 bits"},
		{"P-224", csr(t, p224, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "EGW-0004"}}), SignOptions{}, "P-224"},
		{"outlives the CA", good, SignOptions{Days: IssuerDays + 1}, "outlive the issuing CA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := a.SignCSR(tc.csr, tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if l, _ := a.List(); len(l) != 0 {
		t.Errorf("refused requests left %d entries in the index", len(l))
	}

	// One valid certificate per CN, unless renewing or revoked.
	first, err := a.SignCSR(good, SignOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.SignCSR(good, SignOptions{}); err == nil || !strings.Contains(err.Error(), "already has a valid certificate (serial "+SerialString(first.SerialNumber)) {
		t.Fatalf("second certificate for one CN: got %v", err)
	}
	renewed, err := a.SignCSR(good, SignOptions{Renew: true})
	if err != nil {
		t.Fatalf("--renew: %v", err)
	}
	if renewed.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Error("renewal reused the serial")
	}
	for _, c := range []*x509.Certificate{first, renewed} {
		if _, err := a.Revoke(c.SerialNumber, Reasons["superseded"]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.SignCSR(good, SignOptions{}); err != nil {
		t.Errorf("after revoking both: %v", err)
	}
}

func TestRevokeAndCRL(t *testing.T) {
	a := newPKI(t)
	var certs []*x509.Certificate
	for _, cn := range []string{"EGW-1", "EGW-2", "EGW-3"} {
		c, err := a.SignCSR(csr(t, p256(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}), SignOptions{})
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	e, err := a.Revoke(certs[1].SerialNumber, Reasons["keyCompromise"])
	if err != nil {
		t.Fatal(err)
	}
	if e.CN != "EGW-2" || e.State(t0) != "revoked (keyCompromise)" {
		t.Errorf("revoked entry %+v, state %q", e, e.State(t0))
	}
	if _, err := a.Revoke(certs[1].SerialNumber, Reasons["superseded"]); err == nil || !strings.Contains(err.Error(), "already revoked") {
		t.Errorf("second revoke: %v", err)
	}
	if _, err := a.Revoke(big.NewInt(12345), 0); err == nil || !strings.Contains(err.Error(), "no certificate with serial 3039") {
		t.Errorf("unknown serial: %v", err)
	}

	der, err := a.CRL(0)
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(a.Issuer()); err != nil {
		t.Errorf("CRL not signed by the issuing CA: %v", err)
	}
	if len(crl.RevokedCertificateEntries) != 1 {
		t.Fatalf("CRL lists %d certificates, want 1", len(crl.RevokedCertificateEntries))
	}
	r := crl.RevokedCertificateEntries[0]
	if r.SerialNumber.Cmp(certs[1].SerialNumber) != 0 || r.ReasonCode != 1 {
		t.Errorf("CRL entry serial %x reason %d, want %x reason 1", r.SerialNumber, r.ReasonCode, certs[1].SerialNumber)
	}
	if !crl.NextUpdate.Equal(t0.AddDate(0, 0, CRLDays)) || crl.Number.Int64() != 1 {
		t.Errorf("next update %v number %v", crl.NextUpdate, crl.Number)
	}
	der2, _ := a.CRL(7)
	crl2, _ := x509.ParseRevocationList(der2)
	if crl2.Number.Int64() != 2 || !crl2.NextUpdate.Equal(t0.AddDate(0, 0, 7)) {
		t.Errorf("second CRL: number %v next update %v, want 2 and 7 days", crl2.Number, crl2.NextUpdate)
	}

	serial, err := a.SerialOf(CertPEM(certs[2]))
	if err != nil || serial.Cmp(certs[2].SerialNumber) != 0 {
		t.Errorf("SerialOf: %v, %v", serial, err)
	}
	other := newPKI(t)
	oc, _, _ := other.IssueClient("x", 0, false)
	if _, err := a.SerialOf(CertPEM(oc)); err == nil || !strings.Contains(err.Error(), "not issued by this PKI") {
		t.Errorf("another PKI's certificate: %v", err)
	}
}

func TestIssueServerAndClient(t *testing.T) {
	a := newPKI(t)
	c, key, err := a.IssueServer("broker.site.local", nil, []net.IP{net.IPv4(10, 0, 0, 2)}, 0)
	if err != nil {
		t.Fatal(err)
	}
	verify(t, a, c, x509.ExtKeyUsageServerAuth)
	if err := c.VerifyHostname("10.0.0.2"); err != nil {
		t.Error(err)
	}
	if err := c.VerifyHostname("broker.site.local"); err == nil {
		t.Error("with --ip only, the CN became a DNS name too")
	}
	if !c.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Error("key does not match")
	}
	c2, _, err := a.IssueServer("localhost", nil, nil, 0)
	if err != nil || c2.VerifyHostname("localhost") != nil {
		t.Errorf("CN as the only name: %v", err)
	}
	if _, _, err := a.IssueServer("my broker", nil, nil, 0); err == nil || !strings.Contains(err.Error(), "--dns") {
		t.Errorf("no names: %v", err)
	}
	cc, _, err := a.IssueClient("plc-7", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	verify(t, a, cc, x509.ExtKeyUsageClientAuth)
	if !cc.NotAfter.Equal(t0.AddDate(0, 0, ClientDays)) {
		t.Errorf("client notAfter %v", cc.NotAfter)
	}
}

func TestOpen(t *testing.T) {
	a := newPKI(t)
	b, err := Open(a.Dir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !b.Issuer().Equal(a.Issuer()) {
		t.Error("opened another issuer")
	}
	if _, err := Open(t.TempDir(), nil); err == nil || !strings.Contains(err.Error(), "holds no PKI") {
		t.Errorf("empty directory: %v", err)
	}
	os.Chmod(filepath.Join(a.Dir(), IssuerKey), 0o644)
	if _, err := Open(a.Dir(), nil); err == nil || !strings.Contains(err.Error(), "mode 0644") {
		t.Errorf("loose CA key: %v", err)
	}
	os.Chmod(filepath.Join(a.Dir(), IssuerKey), 0o600)
	os.WriteFile(filepath.Join(a.Dir(), indexFile), []byte("{"), 0o600)
	if _, err := Open(a.Dir(), nil); err == nil || !strings.Contains(err.Error(), "index.json is damaged") {
		t.Errorf("damaged index: %v", err)
	}
}

// Two stations signing at once both land in the index.
func TestConcurrentSigning(t *testing.T) {
	a := newPKI(t)
	b, err := Open(a.Dir(), func() time.Time { return t0 })
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i, auth := range []*Authority{a, b, a, b, a, b, a, b} {
		req := csr(t, p256(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "EGW-C" + string(rune('0'+i))}})
		wg.Go(func() {
			if _, err := auth.SignCSR(req, SignOptions{}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if l, _ := a.List(); len(l) != 8 {
		t.Errorf("index holds %d certificates, want 8", len(l))
	}
}

func TestParse(t *testing.T) {
	for in, want := range map[string]string{"3039": "3039", "0x3039": "3039", "30:39": "3039", "ab": "AB"} {
		s, err := ParseSerial(in)
		if err != nil || SerialString(s) != want {
			t.Errorf("ParseSerial(%q) = %v, %v; want %s", in, s, err, want)
		}
	}
	if _, err := ParseSerial("xyz"); err == nil {
		t.Error("ParseSerial(xyz) succeeded")
	}
	if r, err := ParseReason("keyCompromise"); err != nil || r != 1 {
		t.Errorf("keyCompromise: %v %v", r, err)
	}
	if _, err := ParseReason("stolen"); err == nil || !strings.Contains(err.Error(), "superseded") {
		t.Errorf("unknown reason: %v", err)
	}
}

// client-cert is held to the same rules as a device's CSR: a name with a
// valid certificate is refused unless renewing (under
// use_identity_as_username that certificate is the device), and the name
// must match the pattern. Server certificates may share a name.
func TestIssueClientRefusals(t *testing.T) {
	a := newPKI(t)
	if _, err := a.SignCSR(csr(t, p256(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "EGW-1"}}), SignOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.IssueClient("EGW-1", 0, false); err == nil || !strings.Contains(err.Error(), "already has a valid certificate") {
		t.Errorf("client-cert for a device's CN: %v", err)
	}
	if _, _, err := a.IssueClient("EGW-1", 0, true); err != nil {
		t.Errorf("client-cert --renew: %v", err)
	}
	for _, cn := range []string{"a/+/#", "x\ny", "", strings.Repeat("a", 65)} {
		if _, _, err := a.IssueClient(cn, 0, false); err == nil {
			t.Errorf("client-cert for %q succeeded", cn)
		}
	}
	for range 2 {
		if _, _, err := a.IssueServer("EGW-1", []string{"egw-1.site"}, nil, 0); err != nil {
			t.Errorf("server certificate sharing a name: %v", err)
		}
	}
}

func TestInitRefusesADirectoryInUse(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("mine"), 0o644)
	os.Chmod(dir, 0o755)
	if _, err := Init(dir, InitOptions{Org: "Acme"}); err == nil || !strings.Contains(err.Error(), "is not empty (notes.txt)") {
		t.Errorf("init in a directory in use: %v", err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o755 {
		t.Errorf("a refused init changed the directory's mode to %04o", fi.Mode().Perm())
	}
	half := t.TempDir()
	os.WriteFile(filepath.Join(half, RootKey), []byte("k"), 0o600)
	if _, err := Init(half, InitOptions{Org: "Acme"}); err == nil || !strings.Contains(err.Error(), "incomplete PKI") {
		t.Errorf("init over a cut-short init: %v", err)
	}
}

// A certificate this CA issued but the index lost (an older backup
// restored) can still be revoked by file.
func TestRevokeCertMissingFromIndex(t *testing.T) {
	a := newPKI(t)
	c, err := a.SignCSR(csr(t, p256(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "EGW-5"}}), SignOptions{})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(a.Dir(), indexFile), []byte(`{"format":1,"org":"Acme","cn_pattern":".*","crl_number":0,"certs":[]}`), 0o600)
	e, err := a.RevokeCert(CertPEM(c), Reasons["keyCompromise"])
	if err != nil || e.CN != "EGW-5" || !e.Revoked() {
		t.Fatalf("RevokeCert: %+v, %v", e, err)
	}
	der, _ := a.CRL(0)
	crl, _ := x509.ParseRevocationList(der)
	if len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(c.SerialNumber) != 0 {
		t.Error("the CRL does not list it")
	}
}

func TestCertificateFields(t *testing.T) {
	a := newPKI(t)
	if a.Root().MaxPathLen != 1 || !a.Root().IsCA {
		t.Errorf("root: IsCA %v, MaxPathLen %d, want a CA with path length 1", a.Root().IsCA, a.Root().MaxPathLen)
	}
	c, err := a.SignCSR(csr(t, p256(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "EGW-6"}}), SignOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c.KeyUsage != x509.KeyUsageDigitalSignature || c.IsCA {
		t.Errorf("device certificate: key usage %v, IsCA %v; want digitalSignature only", c.KeyUsage, c.IsCA)
	}
	// As openssl prints serials: an even number of hex digits.
	for _, n := range []int64{0xA, 0x1ABC, 0x12345} {
		if s := SerialString(big.NewInt(n)); len(s)%2 != 0 {
			t.Errorf("SerialString(%#x) = %q", n, s)
		}
	}
}
