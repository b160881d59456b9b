package provisioning

import (
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"github.com/fieldgate/fieldgate/internal/atomicfile"
)

// LoadIdentity opens the device's current key in st and the certificate
// chain at certPath, and checks that they belong together. If the
// certificate belongs to the pending key instead, an install was cut short
// between writing the certificate and promoting the key: the promotion is
// finished here, so the device comes up with its new identity.
func LoadIdentity(st Store, certPath string) (tls.Certificate, error) {
	signer, err := st.Load(Current)
	if err == nil {
		var cert tls.Certificate
		if cert, err = ClientCertificate(signer, certPath); err == nil {
			return cert, nil
		}
	} else if !errors.Is(err, ErrNoKey) {
		return tls.Certificate{}, err
	}
	// The current key is not the certificate's, or is gone (a store that
	// deletes the old key before it moves the pending one up): the
	// certificate may be the pending key's.
	pending, perr := st.Load(Pending)
	if perr != nil {
		return tls.Certificate{}, err
	}
	if c, cerr := ClientCertificate(pending, certPath); cerr == nil {
		if err := st.Promote(); err != nil {
			return tls.Certificate{}, fmt.Errorf("provisioning: finishing the install of %s: %w", certPath, err)
		}
		return c, nil
	}
	return tls.Certificate{}, err
}

// CreateCSR makes a PEM certificate request for cn, signed by the key in
// signer (which proves to the CA that the device holds it).
func CreateCSR(signer crypto.Signer, cn string) ([]byte, error) {
	if cn == "" {
		return nil, errors.New("provisioning: an empty id: the CSR's CN names the device")
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: cn},
	}, signer)
	if err != nil {
		return nil, fmt.Errorf("provisioning: signing the CSR with %T: %w", signer, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// CheckInstall tells whether the certificate chain certPEM (leaf first,
// then optional intermediates) may be installed for the key whose public
// half is pub: the leaf is for that key, chains to a root in trustPEM
// (intermediates may also be there), is valid at now and allows client
// authentication. It returns the chain to install: the leaf and the
// intermediates that the verification used, without the root.
func CheckInstall(certPEM, trustPEM []byte, pub crypto.PublicKey, now time.Time) ([]*x509.Certificate, error) {
	certs, err := ParseCertificates(certPEM)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	leaf := certs[0]
	if !SamePublicKey(leaf.PublicKey, pub) {
		for _, c := range certs[1:] {
			if SamePublicKey(c.PublicKey, pub) {
				return nil, fmt.Errorf("the device's certificate (CN %q) must come first in the file, then its CAs", c.Subject.CommonName)
			}
		}
		return nil, fmt.Errorf("the certificate (CN %q, serial %X) is for another key, not this device's", leaf.Subject.CommonName, leaf.SerialNumber)
	}
	if now.Before(leaf.NotBefore) {
		return nil, fmt.Errorf("the certificate is not valid before %s (is the clock right? it is %s)", leaf.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("the certificate expired on %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	trust, err := ParseCertificates(trustPEM)
	if err != nil {
		return nil, fmt.Errorf("chain: %w", err)
	}
	// Trust comes from the factory chain only: a root that came with the
	// certificate proves nothing.
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range trust {
		roots.AddCert(c)
	}
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return nil, errors.New("the certificate does not allow client authentication (extended key usage clientAuth)")
	}
	chains, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, fmt.Errorf("the certificate does not chain to the factory CA: %w", err)
	}
	// What the uplink presents: the leaf and the CAs below the root.
	var chain []*x509.Certificate
	for _, c := range chains[0] {
		if c == leaf || !selfSigned(c) {
			chain = append(chain, c)
		}
	}
	return chain, nil
}

func selfSigned(c *x509.Certificate) bool {
	return c.CheckSignatureFrom(c) == nil
}

// WriteChain writes a certificate chain as PEM, atomically, given to owner
// when it is not nil.
func WriteChain(path string, chain []*x509.Certificate, owner *Owner) error {
	var out []byte
	for _, c := range chain {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if err := atomicfile.MkdirAllOwned(filepath.Dir(path), 0o755, owner); err != nil {
		return err
	}
	return atomicfile.WriteFileOwned(path, out, 0o644, owner)
}

// RenewAt is when a certificate is due for renewal: after the fraction
// frac of its lifetime.
func RenewAt(leaf *x509.Certificate, frac float64) time.Time {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	return leaf.NotBefore.Add(time.Duration(float64(life) * frac))
}
