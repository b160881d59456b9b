// Package provisioning holds the device identity: the private key (in a
// key store: a protected file now; TPM 2.0 and PKCS#11 later), the
// certificate the factory signed for it, and the TLS material built from
// them.
package provisioning

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
)

// LoadSigner opens the private key named by a key URI. Supported:
// "file:/path/to/key.pem" (PKCS#8, SEC 1 EC or PKCS#1 RSA, PEM), which
// must not be readable or writable by group or others.
func LoadSigner(uri string) (crypto.Signer, error) {
	scheme, rest, ok := strings.Cut(uri, ":")
	if !ok {
		return nil, fmt.Errorf("provisioning: key %q: want a URI such as file:/var/lib/fieldgate/device.key", uri)
	}
	switch scheme {
	case "file":
		return loadFileKey(rest)
	}
	return nil, fmt.Errorf("provisioning: key %q: key store %q is not supported by this build", uri, scheme)
}

func loadFileKey(path string) (crypto.Signer, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("provisioning: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("provisioning: key file %s has mode %04o: it must not be accessible by group or others (chmod 600)", path, perm)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("provisioning: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("provisioning: key file %s: no PEM block", path)
	}
	var key any
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("provisioning: key file %s: unexpected PEM block %q", path, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("provisioning: key file %s: %w", path, err)
	}
	switch k := key.(type) {
	case *ecdsa.PrivateKey, *rsa.PrivateKey, ed25519.PrivateKey:
		return k.(crypto.Signer), nil
	}
	return nil, fmt.Errorf("provisioning: key file %s: unsupported key type %T", path, key)
}

// ClientCertificate builds the TLS certificate the device presents: the
// chain in certPath (leaf first, then any intermediates) and signer, which
// must hold the leaf's private key.
func ClientCertificate(signer crypto.Signer, certPath string) (tls.Certificate, error) {
	data, err := os.ReadFile(certPath)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("provisioning: %w", err)
	}
	var chain [][]byte
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type == "CERTIFICATE" {
			chain = append(chain, block.Bytes)
		}
	}
	if len(chain) == 0 {
		return tls.Certificate{}, fmt.Errorf("provisioning: %s: no PEM certificate found", certPath)
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("provisioning: %s: %w", certPath, err)
	}
	if !samePublicKey(leaf.PublicKey, signer.Public()) {
		return tls.Certificate{}, fmt.Errorf("provisioning: %s: certificate (CN %q) does not match the device key", certPath, leaf.Subject.CommonName)
	}
	return tls.Certificate{Certificate: chain, PrivateKey: signer, Leaf: leaf}, nil
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

func samePublicKey(a, b crypto.PublicKey) bool {
	ka, err1 := x509.MarshalPKIXPublicKey(a)
	kb, err2 := x509.MarshalPKIXPublicKey(b)
	return err1 == nil && err2 == nil && bytes.Equal(ka, kb)
}
