// Package pki is the factory's and the site's certificate authority: the
// openssl recipes of Mosquitto tutorials (make a CA, sign a device's
// request, issue server and client certificates, revoke, publish a CRL) as
// one small API with safe defaults.
//
// A PKI is a directory:
//
//	root-ca.crt, root-ca.key         the root (20 years); its key is needed
//	                                 again only to make a new issuing CA, so
//	                                 it can be moved offline after Init
//	issuing-ca.crt, issuing-ca.key   the issuing CA (10 years, path length 0)
//	                                 that signs every certificate and the CRL
//	ca-chain.crt                     issuing CA then root: what a broker's
//	                                 cafile / client_ca and a device's
//	                                 [identity] ca point at
//	index.json                       every certificate issued, and its state
//	certs/SERIAL.crt                 a copy of each
//
// Keys are ECDSA P-256, mode 0600, in a 0700 directory. Every file is
// written atomically, and changes take a lock on the directory, so two
// factory stations sharing it do not lose each other's work.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/fieldgate/fieldgate/internal/atomicfile"
)

// Validity and clock-skew defaults.
const (
	RootDays    = 20 * 365
	IssuerDays  = 10 * 365
	DeviceDays  = 3 * 365 // devices renew at identity.renew_after of this
	ServerDays  = 825
	ClientDays  = 825
	CRLDays     = 30
	Backdate    = time.Hour // notBefore is this far in the past, for clocks that lag
	serialBits  = 128
	indexFormat = 1
)

// DefaultCNPattern is what a device's CN may be unless the PKI says
// otherwise: a Fieldgate device id (letters, digits and -._:).
const DefaultCNPattern = `^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$`

// File names inside a PKI directory.
const (
	RootCert   = "root-ca.crt"
	RootKey    = "root-ca.key"
	IssuerCert = "issuing-ca.crt"
	IssuerKey  = "issuing-ca.key"
	ChainFile  = "ca-chain.crt"
	indexFile  = "index.json"
	certsDir   = "certs"
	lockFile   = ".lock"
)

// Kind is what a certificate was issued for.
type Kind string

const (
	Device Kind = "device" // signed from a device's CSR: clientAuth
	Client Kind = "client" // key made here, for devices that cannot make a CSR: clientAuth
	Server Kind = "server" // key made here: serverAuth
)

// Reason is a CRL reason code (RFC 5280, 5.3.1).
type Reason int

// Reasons by the names revoke takes.
var Reasons = map[string]Reason{
	"unspecified":          0,
	"keyCompromise":        1,
	"cACompromise":         2,
	"affiliationChanged":   3,
	"superseded":           4,
	"cessationOfOperation": 5,
	"privilegeWithdrawn":   9,
}

func (r Reason) String() string {
	for n, v := range Reasons {
		if v == r {
			return n
		}
	}
	return fmt.Sprintf("reason(%d)", int(r))
}

// ParseReason reads a reason by its RFC 5280 name.
func ParseReason(s string) (Reason, error) {
	if r, ok := Reasons[s]; ok {
		return r, nil
	}
	names := make([]string, 0, len(Reasons))
	for n := range Reasons {
		names = append(names, n)
	}
	slices.Sort(names)
	return 0, fmt.Errorf("pki: reason %q: want one of %s", s, strings.Join(names, ", "))
}

// Entry is one issued certificate in the index.
type Entry struct {
	Serial    string    `json:"serial"` // upper-case hex, as openssl prints it
	CN        string    `json:"cn"`
	Kind      Kind      `json:"kind"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	RevokedAt time.Time `json:"revoked_at,omitzero"`
	Reason    Reason    `json:"reason,omitempty"`
}

// Revoked tells whether the certificate is revoked.
func (e Entry) Revoked() bool { return !e.RevokedAt.IsZero() }

// State is "valid", "expired" or "revoked (reason)" at now.
func (e Entry) State(now time.Time) string {
	switch {
	case e.Revoked():
		return "revoked (" + e.Reason.String() + ")"
	case now.After(e.NotAfter):
		return "expired"
	}
	return "valid"
}

type index struct {
	Format    int     `json:"format"`
	Org       string  `json:"org"`
	CNPattern string  `json:"cn_pattern"`
	CRLNumber int64   `json:"crl_number"`
	Certs     []Entry `json:"certs"`
}

// InitOptions configure Init.
type InitOptions struct {
	Org string
	// CNPattern is the regular expression device CNs must match; empty
	// means DefaultCNPattern.
	CNPattern string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Authority is an opened PKI directory.
type Authority struct {
	dir    string
	now    func() time.Time
	root   *x509.Certificate
	issuer *x509.Certificate
	key    crypto.Signer // the issuing CA's
}

// Init makes a new PKI in dir: a root CA and an issuing CA for org. It
// refuses a directory that already holds one.
func Init(dir string, o InitOptions) (*Authority, error) {
	if o.Org == "" {
		return nil, errors.New("pki: init: an organisation name is needed (it goes in every certificate's subject)")
	}
	if o.CNPattern == "" {
		o.CNPattern = DefaultCNPattern
	}
	if _, err := regexp.Compile(o.CNPattern); err != nil {
		return nil, fmt.Errorf("pki: init: CN pattern: %w", err)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: init: %w", err)
	}
	unlock, err := lock(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	// Checked under the lock, so two stations cannot both make one.
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("pki: init: %w", err)
	}
	var names []string
	for _, e := range entries {
		if e.Name() != lockFile {
			names = append(names, e.Name())
		}
	}
	switch {
	case slices.Contains(names, indexFile):
		return nil, fmt.Errorf("pki: init: %s already holds a PKI (%s exists); nothing was changed", dir, indexFile)
	case slices.Contains(names, RootKey) || slices.Contains(names, IssuerKey):
		return nil, fmt.Errorf("pki: init: %s holds an incomplete PKI (CA keys but no %s: an init cut short?); nothing was changed: move it away and run init again", dir, indexFile)
	case len(names) > 0:
		return nil, fmt.Errorf("pki: init: %s is not empty (%s): init makes a PKI in a new or empty directory; nothing was changed", dir, names[0])
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: init: %w", err)
	}
	if err := os.Mkdir(filepath.Join(dir, certsDir), 0o700); err != nil {
		return nil, fmt.Errorf("pki: init: %w", err)
	}

	now := o.Now()
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: init: %w", err)
	}
	rootTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: o.Org + " Root CA", Organization: []string{o.Org}},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              now.AddDate(0, 0, RootDays),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            1,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	root, err := create(rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		return nil, err
	}
	issKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: init: %w", err)
	}
	issuer, err := create(&x509.Certificate{
		Subject:               pkix.Name{CommonName: o.Org + " Issuing CA", Organization: []string{o.Org}},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              now.AddDate(0, 0, IssuerDays),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}, root, issKey.Public(), rootKey)
	if err != nil {
		return nil, err
	}
	// Keys first, the index last: a PKI whose index exists is complete.
	writes := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{RootKey, keyPEM(rootKey), 0o600},
		{IssuerKey, keyPEM(issKey), 0o600},
		{RootCert, certPEM(root), 0o644},
		{IssuerCert, certPEM(issuer), 0o644},
		{ChainFile, append(certPEM(issuer), certPEM(root)...), 0o644},
	}
	for _, w := range writes {
		if err := atomicfile.WriteFile(filepath.Join(dir, w.name), w.data, w.mode); err != nil {
			return nil, fmt.Errorf("pki: init: %w", err)
		}
	}
	if err := saveIndex(dir, &index{Format: indexFormat, Org: o.Org, CNPattern: o.CNPattern}); err != nil {
		return nil, err
	}
	return &Authority{dir: dir, now: o.Now, root: root, issuer: issuer, key: issKey}, nil
}

// Open opens the PKI in dir; now nil means time.Now. The issuing CA's key
// must be private to this user (mode 0600).
func Open(dir string, now func() time.Time) (*Authority, error) {
	if now == nil {
		now = time.Now
	}
	if _, err := os.Stat(filepath.Join(dir, indexFile)); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("pki: %s holds no PKI (no %s): make one with \"fieldgate-factory init --dir %s --org ORG\"", dir, indexFile, dir)
	}
	if _, err := loadIndex(dir); err != nil {
		return nil, err
	}
	root, err := readCert(filepath.Join(dir, RootCert))
	if err != nil {
		return nil, err
	}
	issuer, err := readCert(filepath.Join(dir, IssuerCert))
	if err != nil {
		return nil, err
	}
	keyPath := filepath.Join(dir, IssuerKey)
	fi, err := os.Stat(keyPath)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("pki: %s has mode %04o: the CA key must not be accessible by group or others (chmod 600)", keyPath, fi.Mode().Perm())
	}
	data, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("pki: %s: no PEM block", keyPath)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", keyPath, err)
	}
	key, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("pki: %s: unsupported key %T", keyPath, k)
	}
	if err := issuer.CheckSignatureFrom(root); err != nil {
		return nil, fmt.Errorf("pki: %s is not signed by %s: %w", IssuerCert, RootCert, err)
	}
	if !samePublic(issuer.PublicKey, key.Public()) {
		return nil, fmt.Errorf("pki: %s does not belong to %s", IssuerKey, IssuerCert)
	}
	return &Authority{dir: dir, now: now, root: root, issuer: issuer, key: key}, nil
}

// Dir is the PKI's directory.
func (a *Authority) Dir() string { return a.dir }

// Root and Issuer are the CA certificates.
func (a *Authority) Root() *x509.Certificate   { return a.root }
func (a *Authority) Issuer() *x509.Certificate { return a.issuer }

// ChainPEM is the issuing CA then the root, as in ca-chain.crt.
func (a *Authority) ChainPEM() []byte {
	return append(certPEM(a.issuer), certPEM(a.root)...)
}

// SignOptions configure SignCSR.
type SignOptions struct {
	Days int // 0 means DeviceDays
	// Renew allows a CN that already has a valid certificate (a device
	// renewing); the old certificate stays valid until it expires or is
	// revoked (superseded).
	Renew bool
	// CNPattern overrides the PKI's pattern for this request.
	CNPattern string
}

// SignCSR issues a device certificate (clientAuth) for a PEM certificate
// request. It checks the request's signature (the device proves it holds
// the key), its CN against the PKI's pattern, and its key type and size.
// Only the CN is taken from the request: any extensions or other subject
// fields it asks for are not.
func (a *Authority) SignCSR(csrPEM []byte, o SignOptions) (*x509.Certificate, error) {
	block, _ := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
		return nil, errors.New("pki: sign: no PEM CERTIFICATE REQUEST in the input")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: sign: the request does not parse: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("pki: sign: the request's signature does not verify (it was not signed by the key it carries): %w", err)
	}
	return a.issue(csr.Subject.CommonName, Device, csr.PublicKey, o.Days, o.Renew, o.CNPattern, nil, nil)
}

// IssueServer makes a key and a serverAuth certificate for cn with the
// given names and addresses (cn itself is added as a DNS name when it looks
// like one and no names are given). It is for the local broker and for
// test central brokers.
func (a *Authority) IssueServer(cn string, dns []string, ips []net.IP, days int) (*x509.Certificate, crypto.Signer, error) {
	if len(dns) == 0 && len(ips) == 0 {
		if ip := net.ParseIP(cn); ip != nil {
			ips = []net.IP{ip}
		} else if hostRE.MatchString(cn) {
			dns = []string{cn}
		} else {
			return nil, nil, fmt.Errorf("pki: server certificate %q: give the DNS names (--dns) or addresses (--ip) clients connect to; clients do not look at the CN", cn)
		}
	}
	for _, d := range dns {
		if !hostRE.MatchString(d) {
			return nil, nil, fmt.Errorf("pki: server certificate: DNS name %q is not a host name", d)
		}
	}
	if days == 0 {
		days = ServerDays
	}
	// A broker may hold several server certificates for one name (one
	// per host), so they are not one per CN.
	return a.issueWithKey(cn, Server, days, true, dns, ips)
}

// IssueClient makes a key and a clientAuth certificate for cn, for site
// devices that cannot make a request themselves, and for test clients. As
// with SignCSR, cn must match the PKI's pattern and must not have a valid
// client or device certificate already, unless renew: under
// use_identity_as_username a second certificate for a name is that client.
func (a *Authority) IssueClient(cn string, days int, renew bool) (*x509.Certificate, crypto.Signer, error) {
	if days == 0 {
		days = ClientDays
	}
	return a.issueWithKey(cn, Client, days, renew, nil, nil)
}

func (a *Authority) issueWithKey(cn string, kind Kind, days int, renew bool, dns []string, ips []net.IP) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: %w", err)
	}
	cert, err := a.issue(cn, kind, key.Public(), days, renew, "", dns, ips)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

var hostRE = regexp.MustCompile(`^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)

func (a *Authority) issue(cn string, kind Kind, pub crypto.PublicKey, days int, renew bool, pattern string, dns []string, ips []net.IP) (*x509.Certificate, error) {
	if days == 0 {
		days = DeviceDays
	}
	if days < 0 {
		return nil, fmt.Errorf("pki: %d days: want a positive number", days)
	}
	if err := checkKey(pub); err != nil {
		return nil, err
	}
	unlock, err := lock(a.dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	idx, err := loadIndex(a.dir)
	if err != nil {
		return nil, err
	}
	if cn == "" {
		return nil, errors.New("pki: the request has no CN: it names the device")
	}
	if kind != Server {
		if pattern == "" {
			pattern = idx.CNPattern
		}
		re, err := regexp.Compile(pattern)
		if err != nil {
			return nil, fmt.Errorf("pki: CN pattern: %w", err)
		}
		if !re.MatchString(cn) {
			return nil, fmt.Errorf("pki: CN %q does not match the pattern %s", cn, pattern)
		}
	}
	now := a.now()
	if !renew {
		for _, e := range idx.Certs {
			if e.CN == cn && e.Kind != Server && !e.Revoked() && now.Before(e.NotAfter) {
				return nil, fmt.Errorf("pki: CN %q already has a valid certificate (serial %s, until %s): revoke it first, or sign with --renew if the device is renewing", cn, e.Serial, e.NotAfter.UTC().Format(time.DateOnly))
			}
		}
	}
	notAfter := now.AddDate(0, 0, days)
	if notAfter.After(a.issuer.NotAfter) {
		return nil, fmt.Errorf("pki: %d days would outlive the issuing CA (valid until %s)", days, a.issuer.NotAfter.UTC().Format(time.DateOnly))
	}
	serial, err := newSerial(idx)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{idx.Org}},
		NotBefore:    now.Add(-Backdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	if _, ok := pub.(*rsa.PublicKey); ok {
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	if kind == Server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	cert, err := create(tmpl, a.issuer, pub, a.key)
	if err != nil {
		return nil, err
	}
	e := Entry{Serial: SerialString(serial), CN: cn, Kind: kind, NotBefore: cert.NotBefore, NotAfter: cert.NotAfter}
	if err := atomicfile.WriteFile(filepath.Join(a.dir, certsDir, e.Serial+".crt"), certPEM(cert), 0o644); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	idx.Certs = append(idx.Certs, e)
	if err := saveIndex(a.dir, idx); err != nil {
		return nil, err
	}
	return cert, nil
}

// checkKey accepts ECDSA P-256 and P-384 and RSA of 2048 to 4096 bits.
func checkKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() {
			return nil
		}
		return fmt.Errorf("pki: ECDSA key on %s: want P-256 or P-384", k.Curve.Params().Name)
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < 2048 || n > 4096 {
			return fmt.Errorf("pki: RSA key of %d bits: want 2048 to 4096", n)
		}
		return nil
	}
	return fmt.Errorf("pki: key type %T: want ECDSA P-256/P-384 or RSA 2048–4096", pub)
}

// newSerial is a random positive 128-bit serial not yet in the index.
func newSerial(idx *index) (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), serialBits)
	for {
		s, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("pki: serial: %w", err)
		}
		if s.Sign() == 0 || slices.ContainsFunc(idx.Certs, func(e Entry) bool { return e.Serial == SerialString(s) }) {
			continue
		}
		return s, nil
	}
}

// SerialString is a serial as openssl prints it: upper-case hex, an even
// number of digits.
func SerialString(s *big.Int) string {
	h := strings.ToUpper(s.Text(16))
	if len(h)%2 == 1 {
		h = "0" + h
	}
	return h
}

// ParseSerial reads a serial in hex, with or without colons or 0x.
func ParseSerial(s string) (*big.Int, error) {
	t := strings.TrimPrefix(strings.ToLower(strings.ReplaceAll(s, ":", "")), "0x")
	n, ok := new(big.Int).SetString(t, 16)
	if !ok || t == "" {
		return nil, fmt.Errorf("pki: serial %q: want hexadecimal, as list prints it", s)
	}
	return n, nil
}

// Revoke marks the certificate with serial as revoked for reason. The
// revocation takes effect for brokers with the next CRL.
func (a *Authority) Revoke(serial *big.Int, reason Reason) (Entry, error) {
	unlock, err := lock(a.dir)
	if err != nil {
		return Entry{}, err
	}
	defer unlock()
	idx, err := loadIndex(a.dir)
	if err != nil {
		return Entry{}, err
	}
	s := SerialString(serial)
	i := slices.IndexFunc(idx.Certs, func(e Entry) bool { return e.Serial == s })
	if i < 0 {
		return Entry{}, fmt.Errorf("pki: no certificate with serial %s was issued by this PKI", s)
	}
	e := &idx.Certs[i]
	if e.Revoked() {
		return *e, fmt.Errorf("pki: %s (CN %q) was already revoked on %s (%s)", s, e.CN, e.RevokedAt.UTC().Format(time.RFC3339), e.Reason)
	}
	e.RevokedAt, e.Reason = a.now().UTC().Truncate(time.Second), reason
	if err := saveIndex(a.dir, idx); err != nil {
		return Entry{}, err
	}
	return *e, nil
}

// RevokeCert revokes the PEM certificate in data, which this PKI's issuing
// CA must have signed. One missing from the index (restored from an older
// backup) is added to it, so that it can be revoked all the same.
func (a *Authority) RevokeCert(data []byte, reason Reason) (Entry, error) {
	c, err := a.parseIssued(data)
	if err != nil {
		return Entry{}, err
	}
	unlock, err := lock(a.dir)
	if err != nil {
		return Entry{}, err
	}
	idx, err := loadIndex(a.dir)
	if err == nil && !slices.ContainsFunc(idx.Certs, func(e Entry) bool { return e.Serial == SerialString(c.SerialNumber) }) {
		kind := Device
		if slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
			kind = Server
		}
		idx.Certs = append(idx.Certs, Entry{Serial: SerialString(c.SerialNumber), CN: c.Subject.CommonName, Kind: kind, NotBefore: c.NotBefore, NotAfter: c.NotAfter})
		err = saveIndex(a.dir, idx)
	}
	unlock()
	if err != nil {
		return Entry{}, err
	}
	return a.Revoke(c.SerialNumber, reason)
}

func (a *Authority) parseIssued(data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("pki: no PEM CERTIFICATE in the input")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	if err := c.CheckSignatureFrom(a.issuer); err != nil {
		return nil, fmt.Errorf("pki: the certificate (CN %q) was not issued by this PKI's issuing CA", c.Subject.CommonName)
	}
	return c, nil
}

// SerialOf returns the serial of the PEM certificate in data, checking
// that this PKI issued it.
func (a *Authority) SerialOf(data []byte) (*big.Int, error) {
	c, err := a.parseIssued(data)
	if err != nil {
		return nil, err
	}
	return c.SerialNumber, nil
}

// CRL makes the issuing CA's CRL (DER), valid for days (0: CRLDays), with
// the next CRL number. Brokers refuse every client once a CRL's next
// update has passed, so publish a new one well before.
func (a *Authority) CRL(days int) ([]byte, error) {
	if days == 0 {
		days = CRLDays
	}
	if days < 0 {
		return nil, fmt.Errorf("pki: %d days: want a positive number", days)
	}
	unlock, err := lock(a.dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	idx, err := loadIndex(a.dir)
	if err != nil {
		return nil, err
	}
	idx.CRLNumber++
	now := a.now()
	tmpl := &x509.RevocationList{
		Number:     big.NewInt(idx.CRLNumber),
		ThisUpdate: now.Add(-Backdate),
		NextUpdate: now.AddDate(0, 0, days),
	}
	for _, e := range idx.Certs {
		if !e.Revoked() {
			continue
		}
		s, err := ParseSerial(e.Serial)
		if err != nil {
			return nil, err
		}
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{
			SerialNumber: s, RevocationTime: e.RevokedAt, ReasonCode: int(e.Reason),
		})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, a.issuer, a.key)
	if err != nil {
		return nil, fmt.Errorf("pki: crl: %w", err)
	}
	if err := saveIndex(a.dir, idx); err != nil {
		return nil, err
	}
	return der, nil
}

// List returns the issued certificates, oldest first.
func (a *Authority) List() ([]Entry, error) {
	idx, err := loadIndex(a.dir)
	if err != nil {
		return nil, err
	}
	return idx.Certs, nil
}

// CertPEM encodes a certificate as PEM.
func CertPEM(c *x509.Certificate) []byte { return certPEM(c) }

// KeyPEM encodes a key made here as PKCS#8 PEM.
func KeyPEM(k crypto.Signer) []byte { return keyPEM(k) }

// CRLPEM encodes a CRL as PEM, as Mosquitto's crlfile takes it.
func CRLPEM(der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}) }

func create(tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) (*x509.Certificate, error) {
	if tmpl.SerialNumber == nil {
		s, err := newSerial(&index{})
		if err != nil {
			return nil, err
		}
		tmpl.SerialNumber = s
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	return x509.ParseCertificate(der)
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func keyPEM(k crypto.Signer) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		panic(err) // only keys made here, which marshal
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func readCert(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("pki: %s: no PEM certificate", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", path, err)
	}
	return c, nil
}

func samePublic(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

func loadIndex(dir string) (*index, error) {
	path := filepath.Join(dir, indexFile)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	var idx index
	if err := json.Unmarshal(data, &idx); err != nil {
		return nil, fmt.Errorf("pki: %s is damaged: %w", path, err)
	}
	if idx.Format != indexFormat {
		return nil, fmt.Errorf("pki: %s: format %d, want %d", path, idx.Format, indexFormat)
	}
	return &idx, nil
}

func saveIndex(dir string, idx *index) error {
	data, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, indexFile), append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("pki: writing the index: %w", err)
	}
	return nil
}

// lock takes an exclusive lock on the PKI directory, waiting for another
// process that holds it.
func lock(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("pki: lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("pki: lock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}
