package localbroker

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	pahopk "github.com/eclipse/paho.mqtt.golang/packets"
	mqtt "github.com/mochi-mqtt/server/v2"
	mochipk "github.com/mochi-mqtt/server/v2/packets"

	"github.com/fieldgate/fieldgate/provisioning/pkitest"
)

// A client that disconnects and at once connects again with the same
// client id and a clean session gets what it subscribes to on the new
// connection: the old connection's clean-up must not remove the new one.
// (mochi v2.7.9 deletes the client id from its client list after the old
// connection ends; a new connection registered in between was deleted with
// it, and nothing was delivered to it.)
func TestQuickReconnectKeepsDeliveries(t *testing.T) {
	b := interopBroker(t, Limits{})
	for i := range 1000 {
		r := dial5(t, b)
		r.connect(connectPacket5("quick", true, 0, nil))
		r.subscribe(1, "quick/t", 1)
		want := fmt.Sprint("round ", i)
		r.publish(2, "quick/t", 1, want, nil)
		got := r.exchange(1)
		if string(got[0].Payload) != want {
			t.Fatalf("round %d: got %q, want %q", i, got[0].Payload, want)
		}
		r.send(&packets.Disconnect{Properties: &packets.Properties{}})
		r.Close()
	}
}

// A device cannot take over the gateway's own clients inside the broker
// (the one the sensors publish with, the one the uplink delivers with):
// its CONNECT is refused as an invalid client id, and the gateway's
// publishes still reach the site's subscribers.
func TestReservedClientIDs(t *testing.T) {
	b := interopBroker(t, Limits{})
	got := make(chan Message, 10)
	if err := b.Subscribe("site/#", 1, func(m Message) { got <- m }); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"inline", "fieldgate-uplink"} {
		r := dial5(t, b)
		r.send(connectPacket5(id, true, 0, nil))
		if ca := r.expect(packets.CONNACK).Content.(*packets.Connack); ca.ReasonCode != 0x85 {
			t.Errorf("client id %q: CONNACK %#x, want 0x85 (client identifier not valid)", id, ca.ReasonCode)
		}
		r.Close()
	}
	if err := b.Publish(Message{Topic: "site/a", Payload: []byte("sensor"), QoS: 1}); err != nil {
		t.Fatalf("the sensors' client: %v", err)
	}
	if err := b.PublishLocal(Message{Topic: "site/b", Payload: []byte("uplink"), QoS: 1}); err != nil {
		t.Fatalf("the uplink's client: %v", err)
	}
	for _, want := range []string{"site/a", "site/b"} {
		select {
		case m := <-got:
			if m.Topic != want {
				t.Errorf("got %s, want %s", m.Topic, want)
			}
		case <-time.After(wait):
			t.Fatalf("%s never arrived", want)
		}
	}
}

// A connection that takes a client id over does not wait out takeoverWait
// when the old connection is idle, mid-packet, or has its reader held up
// by the waiter (a 3.1.1 device that publishes faster than the disk).
func TestTakeoverDoesNotWaitOut(t *testing.T) {
	b, gate := gatedBroker(t)
	defer close(gate)
	takeover := func(t *testing.T, id string) int64 {
		t.Helper()
		before := b.takeover.gaveUp.Load()
		rawConnect311(t, b, id).Close()
		return b.takeover.gaveUp.Load() - before
	}
	t.Run("idle", func(t *testing.T) {
		rawConnect311(t, b, "idle")
		if n := takeover(t, "idle"); n > 0 {
			t.Errorf("taking an idle connection over waited out takeoverWait")
		}
	})
	t.Run("mid-packet", func(t *testing.T) {
		old := rawConnect311(t, b, "mid")
		p := pahopk.NewControlPacket(pahopk.Publish).(*pahopk.PublishPacket)
		p.TopicName, p.Qos, p.MessageID, p.Payload = "local", 1, 1, bytes.Repeat([]byte("x"), 1000)
		var buf bytes.Buffer
		p.Write(&buf)
		old.Write(buf.Bytes()[:500]) // the link drops half way
		if n := takeover(t, "mid"); n > 0 {
			t.Errorf("taking a connection over mid-packet waited out takeoverWait")
		}
	})
	t.Run("reader-held-by-disk", func(t *testing.T) {
		old := rawConnect311(t, b, "busy")
		var buf bytes.Buffer
		for i := 1; i <= maxDeferred+50; i++ { // more than the waiter's queue holds
			p := pahopk.NewControlPacket(pahopk.Publish).(*pahopk.PublishPacket)
			p.TopicName, p.Qos, p.MessageID, p.Payload = "routed", 1, uint16(i), []byte("x")
			p.Write(&buf)
		}
		old.Write(buf.Bytes())
		cl, _ := b.srv.Clients.Get("busy")
		pollUntil(t, "the waiter's queue to fill", func() bool {
			b.gate.mu.Lock()
			w := b.gate.waiters[cl]
			b.gate.mu.Unlock()
			if w == nil {
				return false
			}
			w.q.mu.Lock()
			defer w.q.mu.Unlock()
			return w.q.n == maxDeferred
		})
		// The device gave up waiting for its PUBACKs and connects again.
		if n := takeover(t, "busy"); n > 0 {
			t.Error("taking over waited out takeoverWait: the old connection's reader waits for the disk, not for the client")
		}
	})
}

// Over TLS: a DISCONNECT with session expiry 0 sent just before the
// client connects again ends the session; and taking an idle TLS
// connection over does not wait out takeoverWait.
func TestTakeoverTLS(t *testing.T) {
	ca := pkitest.NewCA(t, "Site CA")
	srv := ca.Server(t, "site-server")
	cert, err := tls.LoadX509KeyPair(srv.CertFile, srv.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(&Options{Listeners: []Listener{{Address: "127.0.0.1:0", TLS: &TLS{Certificate: cert}}},
		Security: Security{AllowAnonymous: true}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	dial := func() *raw5 {
		c, err := tls.Dial("tcp", b.Addrs()[0], &tls.Config{RootCAs: pool, ServerName: "localhost"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return &raw5{c, t}
	}
	cp := func(clean bool, expiry uint32) *packets.Connect {
		return &packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, ClientID: "tlsdev", CleanStart: clean, KeepAlive: 30,
			Properties: &packets.Properties{SessionExpiryInterval: u32(expiry)}}
	}
	inherited := 0
	for range 40 {
		a := dial()
		a.connect(cp(true, 60))
		a.subscribe(1, "t", 1)
		a.send(&packets.Disconnect{Properties: &packets.Properties{SessionExpiryInterval: u32(0)}})
		n := dial()
		if n.connect(cp(false, 60)).SessionPresent {
			inherited++
		}
		a.Close()
		n.Close()
	}
	if inherited > 0 {
		t.Errorf("%d of 40 sessions inherited after a DISCONNECT with expiry 0", inherited)
	}
	a := dial()
	a.connect(cp(true, 60))
	before := b.takeover.gaveUp.Load()
	dial().connect(cp(false, 60))
	if b.takeover.gaveUp.Load() > before {
		t.Error("taking an idle TLS connection over waited out takeoverWait")
	}
}

// OnQosPublish sees every QoS 1 and 2 message queued for a client: for one
// whose session no other connection took, it allocates nothing (it once
// copied each message, 800 bytes, to the heap).
func TestTakeoverOnQosPublishAllocatesNothing(t *testing.T) {
	srv := mqtt.New(&mqtt.Options{InlineClient: true})
	h := &takeoverHook{srv: srv}
	server, client := net.Pipe()
	defer client.Close()
	cl := srv.NewClient(&corkConn{Conn: server}, "t", "sub", false)
	pk := mochipk.Packet{FixedHeader: mochipk.FixedHeader{Type: mochipk.Publish, Qos: 1}, TopicName: "t", Payload: []byte("x"), PacketID: 1}
	if n := testing.AllocsPerRun(100, func() { h.OnQosPublish(cl, pk, 0, 0) }); n != 0 {
		t.Errorf("%v allocations a message, want 0", n)
	}
}
