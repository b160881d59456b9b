package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldgate/fieldgate/bridge/mosquittotest"
	"github.com/fieldgate/fieldgate/localbroker"
	"github.com/fieldgate/fieldgate/provisioning/pkitest"
)

// siteConfig is a gateway with a password file and an ACL for its site
// devices, a bridge to centralURL, and an outbox that holds max messages
// and rejects beyond them.
func siteConfig(t *testing.T, centralURL string, ca *pkitest.CA, max int) *Config {
	t.Helper()
	dir := t.TempDir()
	dev := ca.Client(t, "EGW-SITE")
	hash, err := localbroker.HashPassword([]byte("pw"), 0)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "passwd"), []byte("plc:"+hash+"\nviewer:"+hash+"\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "acl"), []byte("user plc\ntopic write sensors/#\n\nuser viewer\ntopic read sensors/#\n"), 0o600)
	src := fmt.Sprintf(`[device]
state_dir = %q
[identity]
key = "file:%s"
cert = %q
ca = %q
[broker]
password_file = %q
acl_file = %q
[[broker.listener]]
address = "127.0.0.1:0"
[bridge]
address = [%q]
reconnect_min = "10ms"
reconnect_max = "50ms"
[bridge.outbox]
max_messages = %d
[[bridge.route]]
local = "sensors/#"
overflow = "reject"
`, dir, dev.KeyFile, dev.CertFile, ca.CertFile, filepath.Join(dir, "passwd"), filepath.Join(dir, "acl"), centralURL, max)
	path := filepath.Join(dir, "fieldgate.toml")
	os.WriteFile(path, []byte(src), 0o600)
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// A site device logs in with a Mosquitto password, and what it publishes
// reaches the central broker; the ACL keeps it to its topics.
func TestSiteDeviceToCentral(t *testing.T) {
	c := startCentral(t)
	_, arrived := c.observe(t, "devices/EGW-SITE/sensors/#")
	g := startGateway(t, siteConfig(t, c.broker.URL, c.ca, 0))
	addr := "tcp://" + g.BrokerAddrs()[0]

	connect := func(user, pw string) (paho.Client, error) {
		cl := paho.NewClient(paho.NewClientOptions().AddBroker(addr).SetClientID(user + "-1").
			SetUsername(user).SetPassword(pw).SetAutoReconnect(false).SetConnectRetry(false))
		tok := cl.Connect()
		if !tok.WaitTimeout(10 * time.Second) {
			return nil, errors.New("connect timed out")
		}
		return cl, tok.Error()
	}
	if _, err := connect("plc", "wrong"); err == nil {
		t.Error("wrong password accepted")
	}
	viewer, err := connect("viewer", "pw")
	if err != nil {
		t.Fatal(err)
	}
	defer viewer.Disconnect(0)
	local := make(chan paho.Message, 10)
	if tok := viewer.Subscribe("sensors/#", 1, func(_ paho.Client, m paho.Message) { local <- m }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	plc, err := connect("plc", "pw")
	if err != nil {
		t.Fatal(err)
	}
	defer plc.Disconnect(0)
	if tok := plc.Publish("sensors/plc1/flow", 1, false, "42"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	for _, ch := range []<-chan paho.Message{arrived, local} {
		select {
		case m := <-ch:
			if string(m.Payload()) != "42" {
				t.Errorf("%s: got %q, want 42", m.Topic(), m.Payload())
			}
		case <-time.After(20 * time.Second):
			t.Fatal("the site device's reading did not arrive")
		}
	}
}

// With the outbox full and the route's policy "reject", an MQTT 5 QoS 1
// publisher gets reason code 0x97 (quota exceeded), and nothing stored is
// lost.
func TestOutboxFullRejects(t *testing.T) {
	ca := pkitest.NewCA(t, "Central CA")
	down := fmt.Sprintf("ssl://localhost:%d", mosquittotest.FreePort(t)) // nobody there
	g := startGateway(t, siteConfig(t, down, ca, 5))

	conn, err := net.Dial("tcp", g.BrokerAddrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	cl := paho5.NewClient(paho5.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cl.Connect(ctx, &paho5.Connect{ClientID: "plc-5", Username: "plc", UsernameFlag: true, Password: []byte("pw"), PasswordFlag: true, KeepAlive: 30, CleanStart: true}); err != nil {
		t.Fatal(err)
	}
	defer cl.Disconnect(&paho5.Disconnect{})
	for i := range 7 {
		resp, err := cl.Publish(ctx, &paho5.Publish{Topic: "sensors/plc1/flow", QoS: 1, Payload: []byte(fmt.Sprint(i))})
		code := byte(0)
		if resp != nil {
			code = resp.ReasonCode
		}
		switch {
		case i < 5 && (err != nil || code != 0):
			t.Errorf("publish %d: %v, reason %#x; want stored", i, err, code)
		case i >= 5 && code != 0x97:
			t.Errorf("publish %d into a full outbox: %v, reason %#x; want 0x97", i, err, code)
		}
	}
	st := g.outbox.Stats()
	if st.Messages != 5 || st.Dropped["rejected"] != 2 {
		t.Errorf("outbox: %+v, want the 5 first held and 2 rejected", st)
	}
}

// A corrupt outbox file at start is moved aside and the gateway runs.
func TestCorruptOutboxAtStart(t *testing.T) {
	ca := pkitest.NewCA(t, "Central CA")
	cfg := siteConfig(t, fmt.Sprintf("ssl://localhost:%d", mosquittotest.FreePort(t)), ca, 0)
	junk := bytes.Repeat([]byte("not a bbolt file "), 4096)
	if err := os.WriteFile(filepath.Join(cfg.Device.StateDir, "outbox.db"), junk, 0o600); err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, cfg)
	if aside, _ := filepath.Glob(filepath.Join(cfg.Device.StateDir, "outbox.db.corrupt-*")); len(aside) != 1 {
		t.Errorf("moved aside: %v, want one outbox.db.corrupt-<time>", aside)
	}
	stored, err := g.bridge.Forward("sensors/x", []byte("1"), 1, false)
	if err != nil || stored == nil {
		t.Fatalf("forward into the new outbox: %v", err)
	}
	if err := <-stored; err != nil {
		t.Errorf("the new outbox does not store: %v", err)
	}
}
