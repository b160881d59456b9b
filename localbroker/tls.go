package localbroker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// TLS configures a TLS listener, with Mosquitto's options.
type TLS struct {
	Certificate tls.Certificate
	// ClientCAs verify client certificates; nil: none are asked for.
	ClientCAs *x509.CertPool
	// RequireCertificate refuses a client without a valid certificate at
	// the handshake (require_certificate true).
	RequireCertificate bool
	// IdentityAsUsername makes the certificate's CN the username, and
	// SubjectAsUsername its whole subject (RFC 2253); such clients need
	// no password.
	IdentityAsUsername, SubjectAsUsername bool
	// BindClientID requires client id == CN.
	BindClientID bool
	// CRL lists revoked client certificates; it was checked against
	// ClientCAs when it was loaded.
	CRL *x509.RevocationList
	// MinVersion is tls.VersionTLS12 or tls.VersionTLS13; 1.0 and 1.1 are
	// never accepted.
	MinVersion uint16
}

// handshakeTimeout bounds a TLS handshake, so that a client that connects
// and says nothing holds nothing for long.
const handshakeTimeout = 10 * time.Second

// aeadSuites are the TLS 1.2 cipher suites offered: forward secret and
// authenticated encryption only. TLS 1.3's are all of that kind.
var aeadSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// tlsListener accepts TCP connections, does the TLS handshake on its own
// goroutine per connection (a slow client does not hold up the others),
// logs each refusal once per address and reason a minute, and hands
// mochi only the connections that passed.
type tlsListener struct {
	net.Listener
	opts     atomic.Pointer[TLS]
	cfg      atomic.Pointer[builtConfig] // config() of the current opts
	log      *slog.Logger
	refusals *refusalLog
	ready    chan net.Conn
	done     chan struct{}
	once     sync.Once
}

func newTLSListener(inner net.Listener, o *TLS, log *slog.Logger, refusals *refusalLog) *tlsListener {
	l := &tlsListener{Listener: inner, log: log, refusals: refusals, ready: make(chan net.Conn), done: make(chan struct{})}
	l.opts.Store(o)
	go l.acceptLoop()
	return l
}

// builtConfig is the tls.Config made from one TLS.
type builtConfig struct {
	o   *TLS
	cfg *tls.Config
}

// config returns the tls.Config of the current TLS material, made once
// per SetListenerTLS and shared by the handshakes: a connection keeps the
// config it was made with, so one per connection cost each idle client
// about 600 bytes.
func (l *tlsListener) config() *tls.Config {
	o := l.opts.Load()
	if b := l.cfg.Load(); b != nil && b.o == o {
		return b.cfg
	}
	cfg := newTLSConfig(o)
	l.cfg.Store(&builtConfig{o: o, cfg: cfg})
	return cfg
}

func newTLSConfig(o *TLS) *tls.Config {
	cfg := &tls.Config{
		Certificates: []tls.Certificate{o.Certificate},
		MinVersion:   max(o.MinVersion, tls.VersionTLS12),
		CipherSuites: aeadSuites,
		ClientCAs:    o.ClientCAs,
		// No session resumption, as before the config was shared (each
		// connection's config had ticket keys of its own, so no ticket
		// was ever accepted): a resumed session skips
		// VerifyPeerCertificate, so the CRL, and the ticket would be one
		// more thing each handshake sends.
		SessionTicketsDisabled: true,
	}
	switch {
	case o.ClientCAs == nil:
		cfg.ClientAuth = tls.NoClientCert
	case o.RequireCertificate:
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	default:
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	if crl := o.CRL; crl != nil {
		cfg.VerifyPeerCertificate = func(_ [][]byte, chains [][]*x509.Certificate) error {
			for _, chain := range chains {
				if revoked(crl, chain[0]) {
					return fmt.Errorf("certificate %s (CN %q) is revoked", chain[0].SerialNumber, chain[0].Subject.CommonName)
				}
			}
			return nil
		}
	}
	return cfg
}

func revoked(crl *x509.RevocationList, cert *x509.Certificate) bool {
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(cert.SerialNumber) == 0 {
			return true
		}
	}
	return false
}

func (l *tlsListener) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			l.once.Do(func() { close(l.done) })
			return
		}
		go l.handshake(c)
	}
}

func (l *tlsListener) handshake(c net.Conn) {
	tc := tls.Server(c, l.config())
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		reason := handshakeReason(err)
		if remote := c.RemoteAddr().String(); l.refusals.allow(remote, reason) {
			l.log.Info("TLS handshake refused", "reason", reason, "remote", remote)
		}
		return
	}
	select {
	case l.ready <- tc:
	case <-l.done:
		tc.Close()
	}
}

// handshakeReason says in a few words why a handshake failed.
func handshakeReason(err error) string {
	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	switch {
	case errors.As(err, &unknown):
		return "client certificate from an unknown CA"
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return "client certificate expired or not yet valid"
	case errors.As(err, &invalid):
		return "client certificate invalid: " + invalid.Error()
	case errors.Is(err, context.DeadlineExceeded):
		return "handshake timed out"
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "revoked"):
		return msg
	case strings.Contains(msg, "didn't provide a certificate"), strings.Contains(msg, "client didn't provide"):
		return "no client certificate, and one is required"
	case strings.Contains(msg, "protocol version"), strings.Contains(msg, "unsupported versions"):
		return "TLS version too old (1.2 is the minimum)"
	case strings.Contains(msg, "EOF"), strings.Contains(msg, "connection reset"):
		return "connection closed during the handshake"
	}
	return msg
}

func (l *tlsListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *tlsListener) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() { close(l.done) })
	return err
}

// LoadCRL reads a CRL (PEM or DER) and checks that one of the CAs in
// caFile signed it.
func LoadCRL(path, caFile string) (*x509.RevocationList, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("localbroker: crl: %w", err)
	}
	if b, _ := pem.Decode(data); b != nil {
		if b.Type != "X509 CRL" {
			return nil, fmt.Errorf("localbroker: crl %s: PEM block %q, want X509 CRL", path, b.Type)
		}
		data = b.Bytes
	}
	crl, err := x509.ParseRevocationList(data)
	if err != nil {
		return nil, fmt.Errorf("localbroker: crl %s: %w", path, err)
	}
	cas, err := loadCerts(caFile)
	if err != nil {
		return nil, err
	}
	for _, ca := range cas {
		if crl.CheckSignatureFrom(ca) == nil {
			return crl, nil
		}
	}
	return nil, fmt.Errorf("localbroker: crl %s is not signed by a CA in %s", path, caFile)
}

func loadCerts(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("localbroker: %w", err)
	}
	var certs []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("localbroker: %s: %w", path, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("localbroker: %s: no PEM certificate found", path)
	}
	return certs, nil
}
