package localbroker

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	pahopk "github.com/eclipse/paho.mqtt.golang/packets"
)

// gatedBroker is an interop broker whose Forward stores the publishes on
// topic "routed" once gate is closed, and takes no others.
func gatedBroker(t *testing.T) (*Broker, chan error) {
	gate := make(chan error)
	b := interopBrokerForwarding(t, Limits{}, func(m Message) (<-chan error, error) {
		if m.Topic != "routed" {
			return nil, nil
		}
		return gate, nil
	})
	return b, gate
}

// Acknowledgements go out in the order of the publishes [MQTT-4.6.0-2]
// [MQTT-4.6.0-3], whether a publish waits for the disk, is not stored, or
// is refused: one that is not stored waits for the stored one before it.
func TestAcksInOrder(t *testing.T) {
	b, gate := gatedBroker(t)
	r := dial5(t, b)
	r.connect(connectPacket5("dev", true, 30, nil))
	r.publish(1, "routed", 1, "stored", nil)
	r.publish(2, "local", 1, "not stored", nil)
	r.publish(3, suiteNoSubscribe, 1, "denied by the ACL", nil)
	r.publish(4, "local", 2, "not stored, QoS 2", nil)
	r.publish(5, suiteNoSubscribe, 2, "denied, QoS 2", nil)
	// The broker answers a PINGREQ at once: it has read the publishes
	// before it, and acknowledges none of them before the first.
	r.send(&packets.Pingreq{})
	r.expect(packets.PINGRESP)
	close(gate)
	for _, want := range []struct {
		typ  byte
		id   uint16
		code byte
	}{{packets.PUBACK, 1, 0}, {packets.PUBACK, 2, 0}, {packets.PUBACK, 3, 0x87}, {packets.PUBREC, 4, 0}, {packets.PUBREC, 5, 0x87}} {
		p := r.expect(want.typ)
		var id uint16
		var code byte
		switch c := p.Content.(type) {
		case *packets.Puback:
			id, code = c.PacketID, c.ReasonCode
		case *packets.Pubrec:
			id, code = c.PacketID, c.ReasonCode
		}
		if id != want.id || code != want.code {
			t.Fatalf("got %s for %d with %#x, want it for %d with %#x", p, id, code, want.id, want.code)
		}
	}
}

// The same for MQTT 3.1.1, whose refusals have no acknowledgement.
func TestAcksInOrder311(t *testing.T) {
	b, gate := gatedBroker(t)
	conn := rawConnect311(t, b, "dev")
	for i, topic := range []string{"routed", "local"} {
		p := pahopk.NewControlPacket(pahopk.Publish).(*pahopk.PublishPacket)
		p.TopicName, p.Qos, p.MessageID, p.Payload = topic, 1, uint16(i+1), []byte("x")
		p.Write(conn)
	}
	pahopk.NewControlPacket(pahopk.Pingreq).Write(conn)
	if p, err := pahopk.ReadPacket(conn); err != nil {
		t.Fatal(err)
	} else if _, ok := p.(*pahopk.PingrespPacket); !ok {
		t.Fatalf("got %v before the first publish was stored, want PINGRESP", p)
	}
	close(gate)
	for want := uint16(1); want <= 2; want++ {
		p, err := pahopk.ReadPacket(conn)
		if err != nil {
			t.Fatal(err)
		}
		if a, ok := p.(*pahopk.PubackPacket); !ok || a.MessageID != want {
			t.Fatalf("got %v, want the PUBACK of %d", p, want)
		}
	}
}

func rawConnect311(t *testing.T, b *Broker, id string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", b.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(wait))
	cp := pahopk.NewControlPacket(pahopk.Connect).(*pahopk.ConnectPacket)
	cp.ProtocolName, cp.ProtocolVersion, cp.ClientIdentifier, cp.CleanSession, cp.Keepalive = "MQTT", 4, id, true, 30
	cp.Username, cp.UsernameFlag, cp.Password, cp.PasswordFlag = interopUser, true, []byte(interopPassword), true
	if err := cp.Write(conn); err != nil {
		t.Fatal(err)
	}
	if ack, err := pahopk.ReadPacket(conn); err != nil || ack.(*pahopk.ConnackPacket).ReturnCode != 0 {
		t.Fatalf("CONNACK: %v %v", ack, err)
	}
	return conn
}

// A stored publish's PUBACK, and what else the broker writes to its
// publisher (a PINGRESP), do not wait for a slow local subscriber.
func TestStoredAckNotHeldByDelivery(t *testing.T) {
	stored := make(chan error)
	close(stored) // on disk at once
	b, err := New(&Options{Listeners: []Listener{{Address: "127.0.0.1:0"}}, Security: Security{AllowAnonymous: true},
		Forward: func(Message) (<-chan error, error) { return stored, nil }}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	entered, release := make(chan struct{}, 1), make(chan struct{})
	defer close(release)
	b.Subscribe("sensors/#", 1, func(Message) { entered <- struct{}{}; <-release })

	r := dial5(t, b)
	r.connect(&packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, ClientID: "dev", CleanStart: true, KeepAlive: 30, Properties: &packets.Properties{}})
	r.publish(1, "sensors/t", 1, "x", nil)
	select {
	case <-entered: // the delivery is under way, and stays so
	case <-time.After(wait):
		t.Fatal("the stored publish was not delivered")
	}
	r.send(&packets.Pingreq{})
	r.expect(packets.PUBACK)
	r.expect(packets.PINGRESP)
}

// The marker that tells OnPublish a publish is stored already never
// reaches a client, nor its origin: a QoS 2 publish sent twice with one id
// before it is stored gets PUBREC 0x91 for the second, which mochi made
// from the tagged publish's properties.
func TestMarkerNeverLeaves(t *testing.T) {
	gate := make(chan error)
	forwarded := make(chan struct{}, 10)
	b, err := New(&Options{Listeners: []Listener{{Address: "127.0.0.1:0"}}, Security: Security{AllowAnonymous: true},
		Forward: func(Message) (<-chan error, error) { forwarded <- struct{}{}; return gate, nil }}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	r := dial5(t, b)
	r.connect(&packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, ClientID: "dev", CleanStart: true, KeepAlive: 30, Properties: &packets.Properties{}})
	user := &packets.Properties{User: []packets.User{{Key: "k", Value: "v"}}}
	r.publish(7, "sensors/t", 2, "a", user)
	r.publish(7, "sensors/t", 2, "a", user)
	<-forwarded
	<-forwarded
	close(gate)
	for i := range 2 {
		pr := r.expect(packets.PUBREC).Content.(*packets.Pubrec)
		for _, u := range pr.Properties.User {
			if u.Value == b.gate.marker.Val || u.Key == "fieldgate-origin" {
				t.Errorf("PUBREC %d (%#x) carries %s=%s", i, pr.ReasonCode, u.Key, u.Value)
			}
		}
	}
}

// A stored QoS 2 publish that set a topic alias leaves the client's alias
// table as the client has left it since.
func TestStoredQoS2KeepsTopicAliases(t *testing.T) {
	gate := make(chan error)
	b, err := New(&Options{Listeners: []Listener{{Address: "127.0.0.1:0"}}, Security: Security{AllowAnonymous: true},
		Forward: func(m Message) (<-chan error, error) {
			if m.QoS == 2 {
				return gate, nil
			}
			return nil, nil
		}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	connect := func(id string) *raw5 {
		r := dial5(t, b)
		r.connect(&packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, ClientID: id, CleanStart: true, KeepAlive: 30, Properties: &packets.Properties{}})
		return r
	}
	sub := connect("sub")
	sub.subscribe(1, "t/#", 0)
	r := connect("dev")
	alias := uint16(1)
	r.publish(1, "t/a", 2, "qos 2", &packets.Properties{TopicAlias: &alias})
	r.publish(0, "t/b", 0, "remap", &packets.Properties{TopicAlias: &alias})
	if p := sub.expect(packets.PUBLISH).Content.(*packets.Publish); p.Topic != "t/b" {
		t.Fatalf("got %s, want t/b", p.Topic)
	}
	close(gate)
	r.expect(packets.PUBREC)
	if p := sub.expect(packets.PUBLISH).Content.(*packets.Publish); p.Topic != "t/a" {
		t.Fatalf("got %s, want t/a", p.Topic)
	}
	r.publish(0, "", 0, "by alias", &packets.Properties{TopicAlias: &alias})
	if p := sub.expect(packets.PUBLISH).Content.(*packets.Publish); p.Topic != "t/b" {
		t.Errorf("alias 1 stood for %q, want t/b (the client's last mapping)", p.Topic)
	}
}

// A QoS 2 publish that could not be stored is refused with a PUBREC (an
// MQTT 5 client's QoS 2 flow has no PUBACK), 0x80.
func TestStoreFailureQoS2(t *testing.T) {
	stored := make(chan error, 1)
	stored <- errors.New("no space left on device")
	b, err := New(&Options{Listeners: []Listener{{Address: "127.0.0.1:0"}}, Security: Security{AllowAnonymous: true},
		Forward: func(Message) (<-chan error, error) { return stored, nil }}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	r := dial5(t, b)
	r.connect(&packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, ClientID: "dev", CleanStart: true, KeepAlive: 30, Properties: &packets.Properties{}})
	r.publish(1, "sensors/t", 2, "x", nil)
	if pr := r.expect(packets.PUBREC).Content.(*packets.Pubrec); pr.PacketID != 1 || pr.ReasonCode != 0x80 {
		t.Errorf("PUBREC %d %#x, want 1 0x80", pr.PacketID, pr.ReasonCode)
	}
}
