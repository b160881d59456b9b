package localbroker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldgate/fieldgate/bridge/mosquittotest"
	"github.com/fieldgate/fieldgate/provisioning/pkitest"
)

// logLines is a slog handler that sends each record's message and
// attributes as one line on a channel, so a test can wait for a line.
type logLines chan string

func (l logLines) Enabled(context.Context, slog.Level) bool { return true }
func (l logLines) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s=%v", a.Key, a.Value); return true })
	select {
	case l <- b.String():
	default:
	}
	return nil
}
func (l logLines) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l logLines) WithGroup(string) slog.Handler      { return l }

func (l logLines) wait(t *testing.T, substr string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case line := <-l:
			if strings.Contains(line, substr) {
				return
			}
		case <-deadline:
			t.Fatalf("nothing logged containing %q", substr)
		}
	}
}

// A TLS listener set up as a site's Mosquitto would be: client
// certificates required, CN as username, a CRL. Real mosquitto_pub clients.
func TestTLSListener(t *testing.T) {
	pub := mosquittotest.Binary(t, "mosquitto_pub")
	ca := pkitest.NewCA(t, "Site CA")
	other := pkitest.NewCA(t, "Other CA")
	srv := ca.Server(t, "site-server")
	good, revokedPair, expired := ca.Client(t, "sensor-1"), ca.Client(t, "sensor-2"), ca.Expired(t, "sensor-3")
	stranger := other.Client(t, "sensor-1")
	crl, err := LoadCRL(ca.CRL(t, revokedPair.Cert), ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(srv.CertFile, srv.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	acl, err := ParseACL("acl", []byte("user sensor-1\ntopic write sensors/#\n"))
	if err != nil {
		t.Fatal(err)
	}
	logs := make(logLines, 100)
	b, err := New(&Options{
		Listeners: []Listener{{Address: "127.0.0.1:0", TLS: &TLS{
			Certificate: cert, ClientCAs: pool, RequireCertificate: true, IdentityAsUsername: true, CRL: crl,
		}}},
		Security: Security{ACL: acl},
	}, slog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	delivered := make(chan Message, 10)
	b.Subscribe("#", 1, func(m Message) { delivered <- m })
	port := b.Addrs()[0][strings.LastIndexByte(b.Addrs()[0], ':')+1:]

	publish := func(p *pkitest.Pair, topic string) error {
		args := []string{"-h", "localhost", "-p", port, "--cafile", ca.CertFile, "-t", topic, "-m", "x", "-q", "1", "-i", "sensor-1"}
		if p != nil {
			args = append(args, "--cert", p.CertFile, "--key", p.KeyFile)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, pub, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}

	if err := publish(&good, "sensors/t1"); err != nil {
		t.Fatalf("a certificate from the site CA: %v", err)
	}
	select {
	case m := <-delivered:
		if m.Topic != "sensors/t1" {
			t.Errorf("delivered %s, want sensors/t1", m.Topic)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the publish of sensor-1 (ACL by its CN) was not delivered")
	}

	for _, tc := range []struct {
		name   string
		pair   *pkitest.Pair
		reason string
	}{
		{"another CA", &stranger, "client certificate from an unknown CA"},
		{"expired", &expired, "client certificate expired or not yet valid"},
		{"revoked", &revokedPair, "is revoked"},
		{"no certificate", nil, "no client certificate, and one is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := publish(tc.pair, "sensors/t1"); err == nil {
				t.Fatal("accepted")
			}
			logs.wait(t, tc.reason)
		})
	}

	// TLS 1.1 is never accepted.
	conn, err := tls.Dial("tcp", b.Addrs()[0], &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11})
	if err == nil {
		conn.Close()
		t.Error("a TLS 1.1 handshake succeeded")
	}
	logs.wait(t, "TLS version too old")
}

func TestLoadCRL(t *testing.T) {
	ca, other := pkitest.NewCA(t, "Site CA"), pkitest.NewCA(t, "Other CA")
	path := ca.CRL(t)
	if _, err := LoadCRL(path, ca.CertFile); err != nil {
		t.Errorf("CRL of the CA: %v", err)
	}
	if _, err := LoadCRL(path, other.CertFile); err == nil || !strings.Contains(err.Error(), "is not signed by a CA in") {
		t.Errorf("CRL checked against another CA: got %v", err)
	}
	junk := filepath.Join(t.TempDir(), "junk.crl")
	os.WriteFile(junk, []byte("junk"), 0o600)
	if _, err := LoadCRL(junk, ca.CertFile); err == nil {
		t.Error("junk accepted as a CRL")
	}
}

// A new CRL disconnects the clients it revokes; the others stay.
func TestNewCRLDisconnectsRevoked(t *testing.T) {
	ca := pkitest.NewCA(t, "Site CA")
	srv := ca.Server(t, "site-server")
	keep, drop := ca.Client(t, "keep"), ca.Client(t, "drop")
	cert, _ := tls.LoadX509KeyPair(srv.CertFile, srv.KeyFile)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	opts := &TLS{Certificate: cert, ClientCAs: pool, RequireCertificate: true, IdentityAsUsername: true}
	b, err := New(&Options{Listeners: []Listener{{Address: "127.0.0.1:0", TLS: opts}}}, slog.New(logLines(make(chan string, 100))))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	lost := map[string]chan error{}
	for _, p := range []pkitest.Pair{keep, drop} {
		c, err := tls.LoadX509KeyPair(p.CertFile, p.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		ch := make(chan error, 1)
		lost[p.Cert.Subject.CommonName] = ch
		cl := paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + b.Addrs()[0]).SetClientID(p.Cert.Subject.CommonName).
			SetTLSConfig(&tls.Config{Certificates: []tls.Certificate{c}, RootCAs: pool, ServerName: "localhost"}).
			SetAutoReconnect(false).SetConnectionLostHandler(func(_ paho.Client, err error) { ch <- err }))
		if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("%s: %v", p.Cert.Subject.CommonName, tok.Error())
		}
		defer cl.Disconnect(0)
	}
	withCRL := *opts
	withCRL.CRL, err = LoadCRL(ca.CRL(t, drop.Cert), ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.SetListenerTLS(0, &withCRL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lost["drop"]:
	case <-time.After(10 * time.Second):
		t.Fatal("the revoked client is still connected")
	}
	select {
	case err := <-lost["keep"]:
		t.Errorf("the client that is not revoked was disconnected: %v", err)
	default:
	}
}
