// Package provisioning holds the device identity: the private key, kept in
// a key store (a protected file, a TPM 2.0, or a PKCS#11 token) from which
// it never leaves; the certificate the factory signed for it; and the TLS
// material and certificate requests made from them.
package provisioning

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/fieldgate/fieldgate/internal/atomicfile"
)

// Slot names one of the two keys a store can hold. The current key is the
// one the device uses; a pending key is made by a renewal and replaces the
// current one only once its certificate is installed, so that a renewal
// that never completes leaves the device as it was.
type Slot int

const (
	Current Slot = iota
	Pending
)

func (s Slot) String() string {
	if s == Pending {
		return "pending"
	}
	return "current"
}

// ErrNoKey is returned (wrapped) by Store.Load when the slot is empty.
var ErrNoKey = errors.New("no key")

// ErrInsecure is matched (errors.Is) by the error of a key or PIN file
// that others could read or replace: the gateway refuses to start then.
var ErrInsecure = errors.New("insecure key file")

type insecureError struct{ msg string }

func (e insecureError) Error() string        { return e.msg }
func (e insecureError) Is(target error) bool { return target == ErrInsecure }

// KeyType is the kind of key Generate makes.
type KeyType string

const (
	ECDSAP256 KeyType = "ecdsa-p256" // the default, and all a TPM or token is asked for
	RSA2048   KeyType = "rsa2048"
	RSA3072   KeyType = "rsa3072"
)

// Store is where the device's private key lives. Keys are made inside the
// store and used through crypto.Signer; no store hands out the key itself.
type Store interface {
	// Load opens the key in slot. An empty slot is an error wrapping
	// ErrNoKey.
	Load(slot Slot) (crypto.Signer, error)
	// Generate makes a new key of type kt in slot, replacing what was
	// there. Callers decide whether replacing is allowed.
	Generate(slot Slot, kt KeyType) (crypto.Signer, error)
	// Promote makes the pending key the current one and destroys the old
	// current key.
	Promote() error
	// String is the store's URI.
	String() string
	Close() error
}

// Owner is the user and group that the files a store writes are given to.
type Owner = atomicfile.Owner

// Options are what stores need beyond their URI.
type Options struct {
	// Owner, if set, is given the files the store writes (the service
	// user, when root provisions the device); nil leaves them to the
	// process's user.
	Owner *Owner
	// StateDir holds what a hardware store keeps on disk (a TPM key's
	// wrapped blob, which PKCS#11 object is current). Default
	// /var/lib/fieldgate.
	StateDir string
}

// Open opens the key store named by uri:
//
//	file:/var/lib/fieldgate/device.key       a PEM file, mode 0600
//	tpm:/dev/tpmrm0                           a TPM 2.0 (kernel resource manager)
//	tpm:tcp://127.0.0.1:2321                  a TPM simulator (swtpm), command port
//	pkcs11:token=T;object=O?module-path=M&pin-value=P   a PKCS#11 token (build tag pkcs11)
func Open(uri string, opt Options) (Store, error) {
	if opt.StateDir == "" {
		opt.StateDir = "/var/lib/fieldgate"
	}
	scheme, rest, ok := strings.Cut(uri, ":")
	if !ok {
		return nil, fmt.Errorf("provisioning: key %q: want a URI such as file:/var/lib/fieldgate/device.key", RedactURI(uri))
	}
	switch scheme {
	case "file":
		if !filepath.IsAbs(rest) {
			return nil, fmt.Errorf("provisioning: key %q: want an absolute path after file:", uri)
		}
		return &fileStore{path: rest, owner: opt.Owner}, nil
	case "tpm":
		return openTPM(uri, rest, opt)
	case "pkcs11":
		return openPKCS11(uri, opt)
	}
	return nil, fmt.Errorf("provisioning: key %q: unknown key store %q (supported: %s)", RedactURI(uri), scheme, strings.Join(Schemes(), ", "))
}

// CheckURI checks the form of a key URI without opening the store, for
// check-config.
func CheckURI(uri string) error {
	scheme, rest, ok := strings.Cut(uri, ":")
	if !ok {
		return fmt.Errorf("want a key URI such as \"file:/var/lib/fieldgate/device.key\", got %q", RedactURI(uri))
	}
	switch scheme {
	case "file":
		if !filepath.IsAbs(rest) {
			return fmt.Errorf("%q: want an absolute path after file:", uri)
		}
		return nil
	case "tpm":
		if strings.HasPrefix(rest, "/") {
			return nil
		}
		if addr, ok := strings.CutPrefix(rest, "tcp://"); ok {
			if _, _, err := net.SplitHostPort(addr); err == nil {
				return nil
			}
		}
		return fmt.Errorf("%q: want tpm:/dev/tpmrm0 or tpm:tcp://HOST:PORT", uri)
	case "pkcs11":
		if !pkcs11Supported {
			return fmt.Errorf("key store \"pkcs11\" is not in this build (build with -tags pkcs11; supported: %s)", strings.Join(Schemes(), ", "))
		}
		_, err := parsePKCS11URI(uri)
		if err != nil {
			return errors.New(strings.TrimPrefix(err.Error(), "provisioning: "))
		}
		return nil
	}
	return fmt.Errorf("unknown key store %q (supported: %s)", scheme, strings.Join(Schemes(), ", "))
}

// Schemes lists the key stores this build supports.
func Schemes() []string {
	s := []string{"file", "tpm"}
	if pkcs11Supported {
		s = append(s, "pkcs11")
	}
	return s
}

// LoadSigner opens the current key of the store named by uri.
func LoadSigner(uri string, opt Options) (crypto.Signer, error) {
	st, err := Open(uri, opt)
	if err != nil {
		return nil, err
	}
	// The signer of a hardware store keeps its connection: the store is
	// not closed while the signer lives, which is the life of the process.
	return st.Load(Current)
}

// fileStore keeps the key in a PEM file (PKCS#8), its pending key beside it
// with the suffix ".next".
type fileStore struct {
	path  string
	owner *Owner
}

func (s *fileStore) String() string { return "file:" + s.path }
func (s *fileStore) Close() error   { return nil }

func (s *fileStore) slotPath(slot Slot) string {
	if slot == Pending {
		return s.path + ".next"
	}
	return s.path
}

func (s *fileStore) Load(slot Slot) (crypto.Signer, error) {
	path := s.slotPath(slot)
	if err := CheckPrivate(path); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("provisioning: %w", err)
	}
	return ParsePrivateKey(path, data)
}

// ParsePrivateKey reads a PEM private key (PKCS#8, SEC 1 EC or PKCS#1
// RSA); name is used in errors.
func ParsePrivateKey(name string, data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("provisioning: key file %s: no PEM block", name)
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("provisioning: key file %s: unexpected PEM block %q", name, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("provisioning: key file %s: %w", name, err)
	}
	switch k := key.(type) {
	case *ecdsa.PrivateKey, *rsa.PrivateKey, ed25519.PrivateKey:
		return k.(crypto.Signer), nil
	}
	return nil, fmt.Errorf("provisioning: key file %s: unsupported key type %T", name, key)
}

func (s *fileStore) Generate(slot Slot, kt KeyType) (crypto.Signer, error) {
	key, err := NewSoftwareKey(kt)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("provisioning: %w", err)
	}
	path := s.slotPath(slot)
	if err := atomicfile.MkdirAllOwned(filepath.Dir(path), 0o700, s.owner); err != nil {
		return nil, fmt.Errorf("provisioning: %w", err)
	}
	if err := atomicfile.WriteFileOwned(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600, s.owner); err != nil {
		return nil, fmt.Errorf("provisioning: writing key: %w", err)
	}
	return key, nil
}

func (s *fileStore) Promote() error {
	if err := atomicfile.Rename(s.slotPath(Pending), s.path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("provisioning: %s: %w in the pending slot", s, ErrNoKey)
		}
		return fmt.Errorf("provisioning: %w", err)
	}
	return nil
}

// NewSoftwareKey makes a key of type kt in memory.
func NewSoftwareKey(kt KeyType) (crypto.Signer, error) {
	switch kt {
	case "", ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case RSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case RSA3072:
		return rsa.GenerateKey(rand.Reader, 3072)
	}
	return nil, fmt.Errorf("provisioning: key type %q: want %s, %s or %s", kt, ECDSAP256, RSA2048, RSA3072)
}

// CheckPrivate refuses a secret file that others could read or replace,
// as ssh does with its keys: the file and its directory must belong to
// the service user and be inaccessible to group and others. The service
// user is the one the process runs as; for root (an installer running
// "fieldgate provision"), the owner of the file's directory, which is the
// service's state directory. A missing file is an error wrapping ErrNoKey.
func CheckPrivate(path string) error {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("provisioning: %s: %w (no such file or directory)", path, ErrNoKey)
	}
	if err != nil {
		return fmt.Errorf("provisioning: %w", err)
	}
	dir := filepath.Dir(path)
	di, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("provisioning: %w", err)
	}
	uid, _ := ServiceUser(dir)
	if err := checkOwnerMode(path, fi, "file", uid); err != nil {
		return err
	}
	return checkOwnerMode(dir, di, "directory", uid)
}

// ServiceUser is the user and group the service's files in stateDir must
// belong to: the process's own, or, when it runs as root, the owner of
// stateDir if that is another user (systemd's StateDirectory= makes it the
// service's User=).
func ServiceUser(stateDir string) (uid, gid int) {
	uid, gid = os.Geteuid(), os.Getegid()
	if uid != 0 {
		return uid, gid
	}
	if fi, err := os.Stat(stateDir); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 {
			return int(st.Uid), int(st.Gid)
		}
	}
	return uid, gid
}

func checkOwnerMode(path string, fi fs.FileInfo, what string, uid int) error {
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		fix := "chmod 600"
		if fi.IsDir() {
			fix = "chmod 700"
		}
		return insecureError{fmt.Sprintf("provisioning: %s %s has mode %04o: it must not be accessible by group or others (%s)", what, path, perm, fix)}
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != uid {
		return insecureError{fmt.Sprintf("provisioning: %s %s is owned by uid %d, not by the service user (uid %d)", what, path, st.Uid, uid)}
	}
	return nil
}

// ClientCertificate builds the TLS certificate the device presents: the
// chain in certPath (leaf first, then any intermediates) and signer, which
// must hold the leaf's private key.
func ClientCertificate(signer crypto.Signer, certPath string) (tls.Certificate, error) {
	chain, err := ReadCertificates(certPath)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf := chain[0]
	if !SamePublicKey(leaf.PublicKey, signer.Public()) {
		return tls.Certificate{}, fmt.Errorf("provisioning: %s: certificate (CN %q) does not match the device key", certPath, leaf.Subject.CommonName)
	}
	der := make([][]byte, len(chain))
	for i, c := range chain {
		der[i] = c.Raw
	}
	return tls.Certificate{Certificate: der, PrivateKey: signer, Leaf: leaf}, nil
}

// ReadCertificates reads the PEM certificates in path, in order.
func ReadCertificates(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("provisioning: %w", err)
	}
	certs, err := ParseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("provisioning: %s: %w", path, err)
	}
	return certs, nil
}

// ParseCertificates parses the PEM certificates in data, in order; other
// PEM blocks are skipped.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return certs, nil
}

// CertPool reads the PEM certificates in path.
func CertPool(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("provisioning: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("provisioning: %s: no PEM certificate found", path)
	}
	return pool, nil
}

// SamePublicKey tells whether a and b are the same public key.
func SamePublicKey(a, b crypto.PublicKey) bool {
	ka, err1 := x509.MarshalPKIXPublicKey(a)
	kb, err2 := x509.MarshalPKIXPublicKey(b)
	return err1 == nil && err2 == nil && bytes.Equal(ka, kb)
}
