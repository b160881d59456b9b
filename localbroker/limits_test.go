package localbroker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldgate/fieldgate/bridge/mosquittotest"
	"github.com/fieldgate/fieldgate/provisioning/pkitest"
	"github.com/gorilla/websocket"
)

func limitedBroker(t *testing.T, lim Limits) *Broker {
	t.Helper()
	hash, _ := HashPassword([]byte("pw"), 0)
	pw, err := ParsePasswordFile("pw", []byte("dev:"+hash+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(&Options{
		Listeners: []Listener{{Address: "127.0.0.1:0"}},
		Security:  Security{Passwords: pw},
		Limits:    lim,
	}, slog.New(logLines(make(chan string, 100))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func connect3(b *Broker, id, user, pw string) (paho.Client, error) {
	cl := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + b.Addrs()[0]).SetClientID(id).
		SetUsername(user).SetPassword(pw).SetAutoReconnect(false).SetConnectRetry(false))
	tok := cl.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, errors.New("connect timed out")
	}
	return cl, tok.Error()
}

func TestMaxClients(t *testing.T) {
	b := limitedBroker(t, Limits{MaxClients: 2})
	for i := range 2 {
		cl, err := connect3(b, fmt.Sprint("c", i), "dev", "pw")
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Disconnect(0)
	}
	if cl, err := connect3(b, "c3", "dev", "pw"); err == nil {
		cl.Disconnect(0)
		t.Error("a third client got in with max_clients 2")
	}
}

// Failed logins from one address are capped: after them, even the right
// password is refused for a minute. A TCP connection that sends nothing,
// as a health probe does, does not count.
func TestAuthFailureCap(t *testing.T) {
	b := limitedBroker(t, Limits{MaxAuthFailures: 3})
	for range 5 { // health probes
		c, err := net.Dial("tcp", b.Addrs()[0])
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	if cl, err := connect3(b, "ok", "dev", "pw"); err != nil {
		t.Fatalf("after health probes: %v", err)
	} else {
		cl.Disconnect(0)
	}
	for range 3 {
		if _, err := connect3(b, "guess", "dev", "wrong"); err == nil {
			t.Fatal("a wrong password got in")
		}
	}
	if cl, err := connect3(b, "ok", "dev", "pw"); err == nil {
		cl.Disconnect(0)
		t.Error("the right password got in after 3 failures in a minute")
	}
}

func TestMaxPacketSize(t *testing.T) {
	b := limitedBroker(t, Limits{MaxPacketSize: 1024})
	lost := make(chan error, 1)
	cl := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + b.Addrs()[0]).SetClientID("big").
		SetUsername("dev").SetPassword("pw").SetAutoReconnect(false).
		SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err }))
	if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer cl.Disconnect(0)
	cl.Publish("t", 0, false, make([]byte, 2048))
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("a 2 KiB packet did not end a connection limited to 1 KiB")
	}
}

// Beyond max_publish_rate an MQTT 5 publisher gets 0x96.
func TestPublishRate(t *testing.T) {
	b := limitedBroker(t, Limits{MaxPublishRate: 1}) // one a second, burst of one
	conn, err := net.Dial("tcp", b.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	cl := paho5.NewClient(paho5.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := cl.Connect(ctx, &paho5.Connect{ClientID: "fast", Username: "dev", UsernameFlag: true, Password: []byte("pw"), PasswordFlag: true, KeepAlive: 30, CleanStart: true}); err != nil {
		t.Fatal(err)
	}
	defer cl.Disconnect(&paho5.Disconnect{})
	codes := map[byte]int{}
	for range 5 {
		resp, _ := cl.Publish(ctx, &paho5.Publish{Topic: "t", QoS: 1, Payload: []byte("x")})
		if resp != nil {
			codes[resp.ReasonCode]++
		}
	}
	// Five in well under the seconds it would take to earn five tokens.
	if codes[0] < 1 || codes[0x96] < 3 {
		t.Errorf("reason codes %v: want the first accepted and most of the rest 0x96", codes)
	}
}

// Garbage on the wire ends that connection, nothing else: the broker still
// serves a well-behaved client afterwards.
func TestGarbageStreams(t *testing.T) {
	b := limitedBroker(t, Limits{MaxAuthFailures: 1000})
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := range 200 {
		c, err := net.Dial("tcp", b.Addrs()[0])
		if err != nil {
			t.Fatal(err)
		}
		junk := make([]byte, 1+rnd.IntN(4096))
		for j := range junk {
			junk[j] = byte(rnd.Uint32())
		}
		if i%3 == 0 { // a CONNECT header, then garbage
			junk = append([]byte{0x10, 0xff, 0xff, 0xff, 0x7f}, junk...)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write(junk)
		io.Copy(io.Discard, c) // until the broker hangs up (or the deadline)
		c.Close()
	}
	cl, err := connect3(b, "after", "dev", "pw")
	if err != nil {
		t.Fatalf("after 200 garbage streams: %v", err)
	}
	cl.Disconnect(0)
}

func TestClientIDPrefixes(t *testing.T) {
	hash, _ := HashPassword([]byte("pw"), 0)
	pw, _ := ParsePasswordFile("pw", []byte("dev:"+hash+"\n"))
	b, err := New(&Options{
		Listeners: []Listener{{Address: "127.0.0.1:0"}},
		Security:  Security{Passwords: pw, ClientIDPrefixes: []string{"plc-", "hmi-"}},
	}, slog.New(logLines(make(chan string, 100))))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if cl, err := connect3(b, "hmi-2", "dev", "pw"); err != nil {
		t.Errorf("hmi-2: %v", err)
	} else {
		cl.Disconnect(0)
	}
	if cl, err := connect3(b, "laptop", "dev", "pw"); err == nil {
		cl.Disconnect(0)
		t.Error("client id laptop got in with clientid_prefixes plc-, hmi-")
	}
}

// $SYS topics, as Mosquitto publishes them, for a client the ACL lets read
// them (here with the real mosquitto_sub).
func TestSysTopics(t *testing.T) {
	sub := mosquittotest.Binary(t, "mosquitto_sub")
	hash, _ := HashPassword([]byte("pw"), 0)
	pw, _ := ParsePasswordFile("pw", []byte("ops:"+hash+"\n"))
	acl, _ := ParseACL("acl", []byte("user ops\ntopic read $SYS/#\n"))
	b, err := New(&Options{
		Listeners: []Listener{{Address: "127.0.0.1:0"}},
		Security:  Security{Passwords: pw, ACL: acl},
	}, slog.New(logLines(make(chan string, 100))))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	host, port, _ := net.SplitHostPort(b.Addrs()[0])
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, sub, "-h", host, "-p", port, "-u", "ops", "-P", "pw", "-t", "$SYS/broker/clients/connected", "-C", "2").Output() // the retained value, then the next tick's
	if err != nil {
		t.Fatalf("mosquitto_sub: %v", err)
	}
	lines := strings.Fields(string(out))
	if n, err := strconv.Atoi(lines[len(lines)-1]); err != nil || n < 1 {
		t.Errorf("$SYS/broker/clients/connected = %q, want at least 1 (mosquitto_sub itself)", out)
	}
}

func TestKeepaliveBoundsAndTakeover(t *testing.T) {
	hash, _ := HashPassword([]byte("pw"), 0)
	pw, _ := ParsePasswordFile("pw", []byte("dev:"+hash+"\n"))
	logs := make(logLines, 100)
	b, err := New(&Options{
		Listeners: []Listener{{Address: "127.0.0.1:0"}},
		Security:  Security{Passwords: pw},
		Limits:    Limits{MaxKeepalive: time.Minute},
	}, slog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	connect := func(id string, keepalive time.Duration) (paho.Client, error) {
		cl := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + b.Addrs()[0]).SetClientID(id).
			SetUsername("dev").SetPassword("pw").SetKeepAlive(keepalive).SetAutoReconnect(false).SetConnectRetry(false))
		tok := cl.Connect()
		if !tok.WaitTimeout(10 * time.Second) {
			return nil, errors.New("timeout")
		}
		return cl, tok.Error()
	}
	if cl, err := connect("slow", 10*time.Minute); err == nil {
		cl.Disconnect(0)
		t.Error("MQTT 3.1.1 keepalive 10m accepted with max_keepalive 1m")
	}
	logs.wait(t, "keepalive above max_keepalive")

	// MQTT 5: the server's keepalive is sent back.
	conn, err := net.Dial("tcp", b.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	c5 := paho5.NewClient(paho5.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca, err := c5.Connect(ctx, &paho5.Connect{ClientID: "v5", Username: "dev", UsernameFlag: true, Password: []byte("pw"), PasswordFlag: true, KeepAlive: 0, CleanStart: true})
	if err != nil {
		t.Fatal(err)
	}
	if ca.Properties == nil || ca.Properties.ServerKeepAlive == nil || *ca.Properties.ServerKeepAlive != 60 {
		t.Errorf("CONNACK server keepalive: %+v, want 60", ca.Properties)
	}
	c5.Disconnect(&paho5.Disconnect{})

	first, err := connect("plc-1", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Disconnect(0)
	second, err := connect("plc-1", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Disconnect(0)
	logs.wait(t, "client id taken over")
}

// MQTT over WebSocket, with the same password file, for a real paho
// client; and over wss.
func TestWebSocketListeners(t *testing.T) {
	hash, _ := HashPassword([]byte("pw"), 0)
	pw, _ := ParsePasswordFile("pw", []byte("dev:"+hash+"\n"))
	ca := pkitest.NewCA(t, "Site CA")
	srv := ca.Server(t, "ws-server")
	cert, _ := tls.LoadX509KeyPair(srv.CertFile, srv.KeyFile)
	wsAddr := fmt.Sprintf("127.0.0.1:%d", mosquittotest.FreePort(t))
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	logs := logLines(make(chan string, 100))
	b, err := New(&Options{
		Listeners: []Listener{
			{Address: wsAddr, WebSocket: true},
			{Address: "127.0.0.1:0", WebSocket: true, TLS: &TLS{Certificate: cert}},
			// Client certificates, the CN as username, as on TLS.
			{Address: "127.0.0.1:0", WebSocket: true, TLS: &TLS{Certificate: cert, ClientCAs: roots, RequireCertificate: true, IdentityAsUsername: true}},
		},
		Security: Security{Passwords: pw},
	}, slog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	port := func(i int) string { a := b.Addrs()[i]; return a[strings.LastIndexByte(a, ':')+1:] }
	device := ca.Client(t, "ws-device")
	deviceCert, err := tls.LoadX509KeyPair(device.CertFile, device.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		url, user string
		certs     []tls.Certificate
	}{
		{"ws://" + wsAddr, "dev", nil},
		{"wss://localhost:" + port(1), "dev", nil},
		{"wss://localhost:" + port(2), "", []tls.Certificate{deviceCert}},
	} {
		url := tc.url
		o := paho.NewClientOptions().AddBroker(url).SetClientID("ws").SetAutoReconnect(false).
			SetTLSConfig(&tls.Config{RootCAs: roots, Certificates: tc.certs})
		if tc.user != "" {
			o.SetUsername(tc.user).SetPassword("pw")
		}
		cl := paho.NewClient(o)
		if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("%s: %v", url, tok.Error())
		}
		if c, ok := b.srv.Clients.Get("ws"); !ok || tc.certs != nil && string(c.Properties.Username) != "ws-device" {
			t.Errorf("%s: the client's username is not its certificate's CN", url)
		}
		got := make(chan string, 1)
		cl.Subscribe("t", 1, func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) }).WaitTimeout(10 * time.Second)
		cl.Publish("t", 1, false, "over websocket").WaitTimeout(10 * time.Second)
		select {
		case m := <-got:
			if m != "over websocket" {
				t.Errorf("%s: got %q", url, m)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("%s: no message back", url)
		}
		cl.Disconnect(0)
	}
	// A page in a browser (it sends an Origin) may connect with a
	// password, as to Mosquitto, but not where the browser's certificate
	// would name it.
	for i, want := range map[int]bool{0: true, 2: false} {
		scheme := map[int]string{0: "ws", 2: "wss"}[i]
		d := websocket.Dialer{Subprotocols: []string{"mqtt"}, TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{deviceCert}, ServerName: "localhost"}}
		c, resp, err := d.Dial(scheme+"://localhost:"+port(i), http.Header{"Origin": {"https://elsewhere.example"}})
		if err == nil {
			c.Close()
		}
		if (err == nil) != want {
			status := 0
			if resp != nil {
				status = resp.StatusCode
			}
			t.Errorf("%s with an Origin: upgraded %v (HTTP %d), want %v", scheme, err == nil, status, want)
		}
	}

	// No certificate where one is required: refused at the handshake,
	// and logged.
	cl := paho.NewClient(paho.NewClientOptions().AddBroker("wss://localhost:" + port(2)).SetClientID("nocert").
		SetAutoReconnect(false).SetTLSConfig(&tls.Config{RootCAs: roots}))
	if tok := cl.Connect(); tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
		t.Error("wss without a client certificate: connected")
	}
	logs.wait(t, "no client certificate, and one is required")
	if _, err := New(&Options{Listeners: []Listener{{Address: wsAddr, WebSocket: true}}}, slog.New(logLines(make(chan string, 10)))); err == nil {
		t.Error("a WebSocket listener on a port in use was accepted")
	}
}
