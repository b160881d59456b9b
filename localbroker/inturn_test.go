package localbroker

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
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
		id, code := ackOf(p)
		if id != want.id || code != want.code {
			t.Fatalf("got %s for %d with %#x, want it for %d with %#x", p, id, code, want.id, want.code)
		}
	}
}

// ackOf returns the packet id and reason code of a PUBACK or PUBREC.
func ackOf(p *packets.ControlPacket) (id uint16, code byte) {
	switch c := p.Content.(type) {
	case *packets.Puback:
		return c.PacketID, c.ReasonCode
	case *packets.Pubrec:
		return c.PacketID, c.ReasonCode
	}
	return 0, 0
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

func rawConnect311(t *testing.T, b *Broker, id string, opts ...func(*pahopk.ConnectPacket)) net.Conn {
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
	for _, o := range opts {
		o(cp)
	}
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
	r.publish(0, "t/b", 0, "remap", &packets.Properties{TopicAlias: &alias}) // delivered in its turn
	close(gate)
	r.expect(packets.PUBREC)
	for _, want := range []string{"t/a", "t/b"} {
		if p := sub.expect(packets.PUBLISH).Content.(*packets.Publish); p.Topic != want {
			t.Fatalf("got %s, want %s", p.Topic, want)
		}
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

// pollUntil polls cond (broker state, no event to wait on) for at most
// wait.
func pollUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // polling the broker's state, with a deadline
	}
}

// A QoS 2 publish that is not stored, waiting its turn behind a stored
// one, whose connection ends before its turn, is not delivered: the
// client never got its PUBREC, and sends it again on its next connection
// (its session kept), when it is delivered, once.
func TestUnstoredQoS2InTurnDeliveredOnce(t *testing.T) {
	b, gate := gatedBroker(t)
	sub := dial5(t, b)
	sub.connect(connectPacket5("sub", true, 30, nil))
	sub.subscribe(1, "local", 0)

	keep := &packets.Properties{SessionExpiryInterval: u32(300)}
	dev := dial5(t, b)
	dev.connect(connectPacket5("dev", false, 30, keep))
	dev.publish(1, "routed", 1, "stored", nil) // waits for the disk
	dev.publish(2, "local", 2, "once", nil)    // not stored: queued behind it
	dev.send(&packets.Pingreq{})
	dev.expect(packets.PINGRESP) // both read
	old, _ := b.srv.Clients.Get("dev")
	dev.Close() // the device's link drops before the disk is done
	pollUntil(t, "the old connection to close", old.Closed)

	dev2 := dial5(t, b)
	if ca := dev2.connect(connectPacket5("dev", false, 30, keep)); !ca.SessionPresent {
		t.Fatal("session not present")
	}
	// No PUBREC was received for 2: the client sends it again [MQTT-4.4.0-1].
	dev2.send(&packets.Publish{PacketID: 2, Topic: "local", QoS: 2, Duplicate: true, Payload: []byte("once"), Properties: &packets.Properties{}})
	// It takes its turn after the old connection's publishes: those wait
	// for the disk.
	close(gate)
	// PUBREC (perhaps first one mochi resends from the session), PUBREL,
	// PUBCOMP.
	for released := false; ; {
		p := dev2.expectOneOf(packets.PUBREC, packets.PUBCOMP)
		if p.Type == packets.PUBCOMP {
			break
		}
		if pr := p.Content.(*packets.Pubrec); pr.ReasonCode < 0x80 && !released {
			released = true
			dev2.send(&packets.Pubrel{PacketID: 2, Properties: &packets.Properties{}})
		} else if !released {
			t.Fatalf("PUBREC %#x", pr.ReasonCode)
		}
	}

	// The old connection's waiter drops its slot when it is done.
	pollUntil(t, "the old waiter to finish", func() bool { _, ok := b.gate.slots.Load(old); return !ok })
	dev2.publish(0, "local", 0, "end", nil)
	n := 0
	for {
		p := sub.expect(packets.PUBLISH).Content.(*packets.Publish)
		if string(p.Payload) == "end" {
			break
		}
		n++
	}
	if n != 1 {
		t.Errorf("the QoS 2 publish was delivered %d times, want once", n)
	}
}

// A device sets a retained value at QoS 1 and replaces it at QoS 0 while
// the first waits for the disk: the broker keeps the last one.
func TestRetainedInOrderAcrossQoS(t *testing.T) {
	b, gate := gatedBroker(t)
	r := dial5(t, b)
	r.connect(connectPacket5("dev", true, 30, nil))
	r.send(&packets.Publish{PacketID: 1, Topic: "routed", QoS: 1, Retain: true, Payload: []byte("old"), Properties: &packets.Properties{}})
	r.send(&packets.Publish{Topic: "routed", QoS: 0, Retain: true, Payload: []byte("new"), Properties: &packets.Properties{}})
	r.send(&packets.Pingreq{})
	r.expect(packets.PINGRESP)
	close(gate)
	r.expect(packets.PUBACK)
	r.send(&packets.Pingreq{})
	r.expect(packets.PINGRESP)
	cl, _ := b.srv.Clients.Get("dev")
	pollUntil(t, "the waiter", func() bool { return !b.gate.pending(cl) })
	for _, m := range b.srv.Topics.Messages("routed") {
		if string(m.Payload) != "new" {
			t.Errorf("retained %q, want the last one published, %q", m.Payload, "new")
		}
	}
}

// A 3.1.1 client that the broker disconnects for a QoS 1 publish the ACL
// denies has not sent a DISCONNECT: its will is published
// [MQTT-3.1.2-8].
func TestDeniedPublishKeepsWill311(t *testing.T) {
	b := interopBrokerForwarding(t, Limits{}, nil)
	wills := make(chan Message, 1)
	if err := b.Subscribe("will/#", 98, func(m Message) { wills <- m }); err != nil {
		t.Fatal(err)
	}
	conn := connectWithWill311(t, b, "will/dev", false)
	p := pahopk.NewControlPacket(pahopk.Publish).(*pahopk.PublishPacket)
	p.TopicName, p.Qos, p.MessageID, p.Payload = suiteNoSubscribe, 1, 1, []byte("denied")
	p.Write(conn)
	for { // the broker closes the connection
		if _, err := pahopk.ReadPacket(conn); err != nil {
			break
		}
	}
	// mochi sends the will, to the inline subscriber at once, before the
	// client's goroutine ends and it is no longer counted.
	pollUntil(t, "the client to be gone", func() bool { return b.Clients() == 0 })
	select {
	case m := <-wills:
		if m.Topic != "will/dev" || string(m.Payload) != "offline" {
			t.Errorf("will %s %q, want will/dev \"offline\"", m.Topic, m.Payload)
		}
	default:
		t.Fatal("the will of a client the broker disconnected was not published")
	}
}

// What a client the ACL denies a topic can get through, with and without
// stored publishes ahead of it: nothing, retained or not, any QoS, by
// topic alias; and each denied QoS 1 or 2 publish gets 0x87.
func TestDeniedPublishes(t *testing.T) {
	for _, ahead := range []bool{false, true} {
		b, gate := gatedBroker(t)
		got := make(chan Message, 100)
		b.Subscribe("#", 99, func(m Message) { got <- m })
		r := dial5(t, b)
		r.connect(connectPacket5("dev", true, 30, nil))
		if ahead {
			r.publish(1, "routed", 1, "stored", nil)
		}
		one, two := uint16(1), uint16(2)
		for _, p := range []*packets.Publish{
			{PacketID: 2, Topic: suiteNoSubscribe, QoS: 1, Retain: true, Payload: []byte("r1")},
			{Topic: suiteNoSubscribe, QoS: 0, Retain: true, Payload: []byte("r0")},
			{PacketID: 3, Topic: suiteNoSubscribe, QoS: 2, Retain: true, Payload: []byte("r2")},
			{Topic: "ok", QoS: 0, Payload: []byte("set alias 1"), Properties: &packets.Properties{TopicAlias: &one}},
			{Topic: suiteNoSubscribe, QoS: 0, Payload: []byte("set alias 2"), Properties: &packets.Properties{TopicAlias: &two}},
			{PacketID: 4, QoS: 1, Retain: true, Payload: []byte("alias 2"), Properties: &packets.Properties{TopicAlias: &two}},
			{QoS: 0, Payload: []byte("alias 2 qos0"), Properties: &packets.Properties{TopicAlias: &two}},
		} {
			if p.Properties == nil {
				p.Properties = &packets.Properties{}
			}
			r.send(p)
		}
		r.send(&packets.Pingreq{})
		denials := func() {
			for _, id := range []uint16{2, 3, 4} {
				p := r.expectOneOf(packets.PUBACK, packets.PUBREC)
				got, code := ackOf(p)
				if got != id || code != 0x87 {
					t.Errorf("ahead=%v: %s for %d %#x, want it for %d 0x87", ahead, p, got, code, id)
				}
			}
		}
		if !ahead {
			denials()
		}
		r.expect(packets.PINGRESP)
		close(gate)
		if ahead {
			r.expect(packets.PUBACK) // of the stored one, first
			denials()
		}
		r.send(&packets.Pingreq{})
		r.expect(packets.PINGRESP)
		cl, _ := b.srv.Clients.Get("dev")
		pollUntil(t, "the waiter to deliver what it holds", func() bool { return !b.gate.pending(cl) })
		for done := false; !done; {
			select {
			case m := <-got:
				if m.Topic != "ok" && m.Topic != "routed" {
					t.Errorf("ahead=%v: delivered %q on %q", ahead, m.Payload, m.Topic)
				}
			default:
				done = true
			}
		}
		for _, rm := range b.srv.Topics.Messages(suiteNoSubscribe) {
			t.Errorf("ahead=%v: retained %q", ahead, rm.Payload)
		}
	}
}

// A device's will goes out after its publishes still waiting for the disk:
// its retained "online", stored late, does not replace the will's
// "offline", for the site or (as the outbox has "online" first) upstream.
func TestWillAfterStoredPublishes(t *testing.T) {
	for _, ending := range []string{"denied publish", "dropped link"} {
		t.Run(ending, func(t *testing.T) {
			release := make(chan error, 1)
			forwarding := make(chan struct{})
			b := interopBrokerForwarding(t, Limits{}, func(m Message) (<-chan error, error) {
				if m.Topic == "status/dev" && string(m.Payload) == "online" {
					close(forwarding)
					return release, nil
				}
				return nil, nil
			})
			got := make(chan Message, 10)
			if err := b.Subscribe("status/#", 97, func(m Message) { got <- m }); err != nil {
				t.Fatal(err)
			}
			conn := connectWithWill311(t, b, "status/dev", true)
			willWaits := make(chan struct{})
			b.gate.willWaits = func() { close(willWaits) }
			p := pahopk.NewControlPacket(pahopk.Publish).(*pahopk.PublishPacket)
			p.TopicName, p.Qos, p.Retain, p.MessageID, p.Payload = "status/dev", 1, true, 1, []byte("online")
			p.Write(conn)
			<-forwarding
			if ending == "dropped link" {
				conn.Close()
			} else {
				p = pahopk.NewControlPacket(pahopk.Publish).(*pahopk.PublishPacket)
				p.TopicName, p.Qos, p.MessageID, p.Payload = suiteNoSubscribe, 1, 2, []byte("x")
				p.Write(conn) // the broker ends the connection
			}
			select {
			case <-willWaits:
			case m := <-got:
				t.Fatalf("got %s %q while the device's publish waits for the disk", m.Topic, m.Payload)
			case <-time.After(wait):
				t.Fatal("the will did not wait for the device's publish")
			}
			release <- nil // "online" is on disk now
			var order []string
			for len(order) < 2 {
				select {
				case m := <-got:
					order = append(order, string(m.Payload))
				case <-time.After(wait):
					t.Fatalf("got %v only", order)
				}
			}
			if order[0] != "online" {
				t.Errorf("local subscribers got %v: the will came before the device's earlier publish", order)
			}
			if r, ok := b.srv.Topics.Retained.Get("status/dev"); !ok || string(r.Payload) != "offline" {
				t.Errorf("retained on status/dev: %q, want the will's \"offline\"", r.Payload)
			}
		})
	}
}

// connectWithWill311 connects a 3.1.1 client "dev" with a QoS 1 will
// "offline" on topic.
func connectWithWill311(t *testing.T, b *Broker, topic string, retain bool) net.Conn {
	t.Helper()
	return rawConnect311(t, b, "dev", func(cp *pahopk.ConnectPacket) {
		cp.WillFlag, cp.WillTopic, cp.WillMessage, cp.WillQos, cp.WillRetain = true, topic, []byte("offline"), 1, retain
	})
}

// A stored publish that no subscriber here matches is not handed to mochi
// again, unless it is retained: a client that subscribes later gets it.
func TestStoredRetainedWithoutSubscribers(t *testing.T) {
	b := interopBrokerForwarding(t, Limits{}, func(m Message) (<-chan error, error) {
		stored := make(chan error, 1)
		stored <- nil
		return stored, nil
	})
	pub := rawConnect311(t, b, "pub")
	for i, retain := range []bool{true, false} {
		p := pahopk.NewControlPacket(pahopk.Publish).(*pahopk.PublishPacket)
		p.TopicName, p.Qos, p.Retain, p.MessageID, p.Payload = "routed/"+string('a'+byte(i)), 1, retain, uint16(i+1), []byte("x")
		p.Write(pub)
		if a, err := pahopk.ReadPacket(pub); err != nil {
			t.Fatal(err)
		} else if ack, ok := a.(*pahopk.PubackPacket); !ok || ack.MessageID != uint16(i+1) {
			t.Fatalf("got %v, want the PUBACK of %d", a, i+1)
		}
	}
	sub := rawConnect311(t, b, "sub")
	sub.SetReadDeadline(time.Now().Add(10 * time.Second))
	s := pahopk.NewControlPacket(pahopk.Subscribe).(*pahopk.SubscribePacket)
	s.MessageID, s.Topics, s.Qoss = 1, []string{"routed/#"}, []byte{1}
	s.Write(sub)
	for {
		p, err := pahopk.ReadPacket(sub)
		if err != nil {
			t.Fatalf("the retained message did not come: %v", err)
		}
		if m, ok := p.(*pahopk.PublishPacket); ok {
			if m.TopicName != "routed/a" || !m.Retain {
				t.Errorf("got %s (retained %v), want routed/a retained", m.TopicName, m.Retain)
			}
			return
		}
	}
}

// An MQTT 5 client that sends more unacknowledged QoS 1 publishes than its
// receive maximum, while they wait for the disk, is disconnected with
// 0x93, as mochi does for those it acknowledges at once; up to the
// maximum, all are acknowledged.
func TestReceiveMaximumWhileStoring(t *testing.T) {
	gate := make(chan error)
	b := interopBrokerForwarding(t, Limits{MaxInflight: 3}, func(m Message) (<-chan error, error) {
		return gate, nil
	})
	r := dial5(t, b)
	if ack := r.connect(connectPacket5("dev", true, 30, nil)); ack.Properties == nil || ack.Properties.ReceiveMaximum == nil || *ack.Properties.ReceiveMaximum != 3 {
		t.Fatalf("CONNACK %+v, want receive maximum 3", ack.Properties)
	}
	for id := uint16(1); id <= 3; id++ {
		r.publish(id, "routed", 1, "x", nil)
	}
	r.send(&packets.Pingreq{}) // all three read, none acknowledged
	r.expect(packets.PINGRESP)
	go func() {
		for range 3 {
			gate <- nil
		}
	}()
	for want := uint16(1); want <= 3; want++ {
		if id, code := ackOf(r.expect(packets.PUBACK)); id != want || code != 0 {
			t.Fatalf("PUBACK %d with %#x, want %d with 0", id, code, want)
		}
	}

	r2 := dial5(t, b)
	r2.connect(connectPacket5("dev2", true, 30, nil))
	for id := uint16(1); id <= 4; id++ {
		r2.publish(id, "routed", 1, "x", nil)
	}
	if code := r2.disconnectedWith(); code != 0x93 {
		t.Errorf("a fourth publish over receive maximum 3: disconnected with %#x, want 0x93", code)
	}
}

// A client that connects again while its last connection's publishes
// wait for the disk has its new publishes delivered after them, in the
// order it sent them all.
func TestReconnectKeepsPublishOrder(t *testing.T) {
	b, gate := gatedBroker(t)
	delivered := make(chan string, 10)
	if err := b.Subscribe("#", 0, func(m Message) { delivered <- m.Topic }); err != nil {
		t.Fatal(err)
	}
	old := dial5(t, b)
	old.connect(connectPacket5("dev", true, 30, nil))
	old.publish(1, "routed", 1, "before", nil) // waits for the disk
	old.send(&packets.Pingreq{})
	old.expect(packets.PINGRESP)
	again := dial5(t, b)
	again.connect(connectPacket5("dev", true, 30, nil)) // takes over
	again.publish(1, "local", 1, "after", nil)          // not stored
	again.send(&packets.Pingreq{})
	again.expect(packets.PINGRESP)
	select {
	case topic := <-delivered:
		t.Fatalf("%s delivered while the last connection's publish waits for the disk", topic)
	default:
	}
	close(gate)
	var got []string
	for len(got) < 2 {
		select {
		case topic := <-delivered:
			got = append(got, topic)
		case <-time.After(wait):
			t.Fatalf("delivered only %v", got)
		}
	}
	if got[0] != "routed" || got[1] != "local" {
		t.Errorf("delivered %v, want [routed local]", got)
	}
	if id, code := ackOf(again.expect(packets.PUBACK)); id != 1 || code != 0 {
		t.Errorf("PUBACK %d with %#x, want 1 with 0", id, code)
	}
}

// The same when the new connection comes while the old one's reader waits
// for room (its queue is full: the disk is behind) or its will waits for
// its publishes: the old connection's end comes later than the new one's
// CONNACK.
func TestTakeoverKeepsPublishOrder(t *testing.T) {
	for _, tc := range []struct {
		name string
		old  func(t *testing.T, b *Broker) *raw5
	}{
		{"reader waiting for room", func(t *testing.T, b *Broker) *raw5 {
			old := dial5(t, b)
			old.connect(connectPacket5("dev", true, 30, nil))
			old.publish(1, "routed", 1, "before", nil) // waits for the disk
			for range maxDeferred + 10 {
				old.publish(0, "local", 0, "old", nil) // in turn behind it
			}
			cl, _ := b.srv.Clients.Get("dev")
			pollUntil(t, "the old reader to wait for room", cl.Net.Conn.(*corkConn).stalled.Load)
			return old
		}},
		{"will waiting", func(t *testing.T, b *Broker) *raw5 {
			old := dial5(t, b)
			cp := connectPacket5("dev", true, 30, nil)
			cp.WillFlag, cp.WillTopic, cp.WillMessage, cp.WillProperties = true, "will", []byte("will"), &packets.Properties{}
			old.connect(cp)
			old.publish(1, "routed", 1, "before", nil)
			old.send(&packets.Pingreq{})
			old.expect(packets.PINGRESP)
			return old
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, gate := gatedBroker(t)
			var open sync.Once
			t.Cleanup(func() { open.Do(func() { close(gate) }) }) // before the broker's Close
			delivered := make(chan string, 2*maxDeferred)
			if err := b.Subscribe("#", 0, func(m Message) { delivered <- m.Topic + " " + string(m.Payload) }); err != nil {
				t.Fatal(err)
			}
			tc.old(t, b)
			again := dial5(t, b)
			again.connect(connectPacket5("dev", true, 30, nil)) // takes over
			again.publish(1, "local", 1, "after", nil)
			again.send(&packets.Pingreq{})
			again.expect(packets.PINGRESP) // the publish has been read
			select {
			case m := <-delivered:
				t.Fatalf("%q delivered while the last connection's publish waits for the disk", m)
			default:
			}
			open.Do(func() { close(gate) })
			select {
			case m := <-delivered:
				if m != "routed before" {
					t.Errorf("delivered %q first, want the old connection's stored publish", m)
				}
			case <-time.After(wait):
				t.Fatal("nothing delivered")
			}
		})
	}
}

// Once the connection before has finished, a connection's waiter does not
// keep it (and its queue's room) alive.
func TestWaiterLetsGoOfFinished(t *testing.T) {
	b, gate := gatedBroker(t)
	var ws []*waiter
	for i := range 2 {
		c := dial5(t, b)
		c.connect(connectPacket5("dev", true, 30, nil))
		c.publish(1, "routed", 1, "x", nil)
		c.send(&packets.Pingreq{})
		c.expect(packets.PINGRESP)
		cl, _ := b.srv.Clients.Get("dev")
		b.gate.mu.Lock()
		ws = append(ws, b.gate.waiters[cl])
		b.gate.mu.Unlock()
		if i == 1 && ws[1].after != ws[0] {
			t.Fatal("the second connection's waiter does not wait for the first's")
		}
	}
	close(gate)
	pollUntil(t, "the second waiter to let go of the first", func() bool {
		b.gate.mu.Lock()
		defer b.gate.mu.Unlock()
		return ws[1].after == nil
	})
}

// A device that ends its session with its DISCONNECT (session expiry 0)
// while messages are being queued for it has no session afterwards, and
// the hooks that queue them, on the publishers' goroutines, do not read
// the expiry mochi's reader changes (go test -race).
func TestDisconnectEndsSessionWhileDelivering(t *testing.T) {
	b := interopBroker(t, Limits{})
	keep := &packets.Properties{SessionExpiryInterval: u32(300)}
	for round := range 5 {
		sub := dial5(t, b)
		sub.connect(connectPacket5("sub", false, 30, keep))
		sub.subscribe(1, "local", 1)
		pub := dial5(t, b)
		pub.connect(connectPacket5(fmt.Sprint("pub", round), true, 30, nil))
		// The broker delivers these while it reads the DISCONNECT.
		for i := range 50 {
			pub.publish(uint16(i+1), "local", 1, fmt.Sprint(i), nil)
		}
		sub.send(&packets.Disconnect{ReasonCode: 0, Properties: &packets.Properties{SessionExpiryInterval: u32(0)}})
		pub.send(&packets.Pingreq{})
		for pub.expectOneOf(packets.PUBACK, packets.PINGRESP).Type != packets.PINGRESP {
		} // all 50 handled
		pub.Close()
		again := dial5(t, b)
		if ca := again.connect(connectPacket5("sub", false, 30, keep)); ca.SessionPresent {
			t.Fatalf("round %d: a session ended by DISCONNECT with expiry 0 is still there", round)
		}
		again.send(&packets.Disconnect{ReasonCode: 0, Properties: &packets.Properties{SessionExpiryInterval: u32(0)}})
		again.Close()
	}
}
