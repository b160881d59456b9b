package localbroker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	paho5 "github.com/eclipse/paho.golang/paho"
	pahopk "github.com/eclipse/paho.mqtt.golang/packets"
)

// A device with unacknowledged messages from the broker that publishes
// QoS 1 with one of their packet ids (each direction numbers its own)
// still gets every one of them again when it comes back: mochi deleted
// the broker's message with that id.
func TestClientPacketIDsDoNotDeleteBrokerMessages(t *testing.T) {
	stored := func(Message) (<-chan error, error) {
		done := make(chan error, 1)
		done <- nil
		return done, nil
	}
	for _, tc := range []struct {
		name    string
		forward func(Message) (<-chan error, error)
		restart bool // with a session store, the broker restarted before the device is back
	}{
		{"not forwarded", nil, false},
		{"forwarded (acknowledged once stored)", stored, false},
		{"stored session, across a restart", stored, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := &Options{Listeners: []Listener{{Address: "127.0.0.1:0"}}, Security: Security{AllowAnonymous: true}, Forward: tc.forward}
			if tc.restart {
				opts.SessionFile = filepath.Join(t.TempDir(), "sessions.db")
			}
			b, err := New(opts, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err != nil {
				t.Fatal(err)
			}
			defer func() { b.Close() }()
			dial := func() net.Conn { return rawDevice(t, b, false) }
			c := dial()
			sp := pahopk.NewControlPacket(pahopk.Subscribe).(*pahopk.SubscribePacket)
			sp.MessageID, sp.Topics, sp.Qoss = 1, []string{"cmd/#"}, []byte{1}
			sp.Write(c)
			if _, err := pahopk.ReadPacket(c); err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{"a", "b", "c"} {
				if err := b.Publish(Message{Topic: "cmd/" + p, Payload: []byte(p), QoS: 1}); err != nil {
					t.Fatal(err)
				}
			}
			var ids []uint16
			for range 3 {
				pk, err := pahopk.ReadPacket(c)
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, pk.(*pahopk.PublishPacket).MessageID) // not acknowledged
			}
			// The device publishes telemetry, numbering from 1 as clients do.
			pp := pahopk.NewControlPacket(pahopk.Publish).(*pahopk.PublishPacket)
			pp.TopicName, pp.Qos, pp.MessageID, pp.Payload = "tele/x", 1, ids[0], []byte("21.5")
			pp.Write(c)
			if ack, err := pahopk.ReadPacket(c); err != nil {
				t.Fatal(err)
			} else if pa, ok := ack.(*pahopk.PubackPacket); !ok || pa.MessageID != ids[0] {
				t.Fatalf("got %v, want the PUBACK of the telemetry", ack)
			}
			c.Close()
			if tc.restart {
				if err := b.Close(); err != nil {
					t.Fatal(err)
				}
				opts.Listeners = []Listener{{Address: b.Addrs()[0]}}
				if b, err = New(opts, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
					t.Fatal(err)
				}
			}

			c = dial()
			defer c.Close()
			var again []uint16
			for range 3 {
				pk, err := pahopk.ReadPacket(c)
				if err != nil {
					t.Fatalf("after %v: %v (the broker resent only these)", again, err)
				}
				again = append(again, pk.(*pahopk.PublishPacket).MessageID)
			}
			sort.Slice(again, func(i, j int) bool { return again[i] < again[j] })
			sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
			if len(again) != 3 || again[0] != ids[0] || again[2] != ids[2] {
				t.Errorf("resent %v, want %v", again, ids)
			}
		})
	}
}

// qos2Rig is an MQTT 5 device with a persistent session that has one
// unacknowledged message from the broker, whose packet id it returns.
func qos2Rig(t *testing.T) (*Broker, *raw5, func() *raw5, uint16) {
	b := interopBroker(t, Limits{})
	dial := func() *raw5 {
		r := dial5(t, b)
		r.connect(connectPacket5("device", false, 0, &packets.Properties{SessionExpiryInterval: u32(300)}))
		return r
	}
	r := dial()
	r.subscribe(1, "cmd/#", 1)
	if err := b.Publish(Message{Topic: "cmd/a", Payload: []byte("a"), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	p := r.expect(packets.PUBLISH).Content.(*packets.Publish) // not acknowledged
	if p.Topic != "cmd/a" {
		t.Fatalf("got %s, want cmd/a", p.Topic)
	}
	return b, r, dial, p.PacketID
}

// nextPublish returns the topic of the next PUBLISH r gets, after b
// publishes a sentinel on cmd/z: cmd/z itself if nothing was resent.
func nextPublish(t *testing.T, b *Broker, r *raw5) string {
	t.Helper()
	// mochi resends the session's messages after the CONNACK, in the
	// connection's goroutine, and only then reads the client's packets: a
	// PINGRESP comes after what it resent. cmd/z, published before that,
	// could come first.
	r.send(&packets.Pingreq{})
	for {
		p, err := r.read()
		if err != nil {
			t.Fatal(err)
		}
		if p.Type == packets.PUBLISH {
			return p.Content.(*packets.Publish).Topic // resent
		}
		if p.Type == packets.PINGRESP {
			break
		}
	}
	if err := b.Publish(Message{Topic: "cmd/z", Payload: []byte("z"), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	return r.expect(packets.PUBLISH).Content.(*packets.Publish).Topic
}

// A device's QoS 2 publish with the id of the broker's unacknowledged
// message to it, and its acknowledgement of that message in the middle of
// its own flow: both flows complete, each once.
func TestQoS2PublishSharesBrokersPacketID(t *testing.T) {
	b, r, dial, id := qos2Rig(t)
	r.publish(id, "tele/x", 2, "21.5", nil)
	if rec := r.expect(packets.PUBREC).Content.(*packets.Pubrec); rec.PacketID != id || rec.ReasonCode >= 0x80 {
		t.Fatalf("PUBREC %d %#x, want %d success", rec.PacketID, rec.ReasonCode, id)
	}
	r.send(&packets.Puback{PacketID: id, Properties: &packets.Properties{}}) // of cmd/a
	r.send(&packets.Pubrel{PacketID: id, Properties: &packets.Properties{}})
	if comp := r.expect(packets.PUBCOMP).Content.(*packets.Pubcomp); comp.PacketID != id || comp.ReasonCode != 0 {
		t.Errorf("PUBCOMP %d %#x, want %d success: the acknowledgement of the broker's message ended the device's QoS 2 flow", comp.PacketID, comp.ReasonCode, id)
	}
	r.Close()
	if got := nextPublish(t, b, dial()); got != "cmd/z" {
		t.Errorf("after coming back the device got %s first, want nothing sent again (cmd/a was acknowledged)", got)
	}
}

// A device that leaves in the middle of its QoS 2 publish with the id of
// the broker's unacknowledged message gets that message again.
func TestQoS2PublishKeepsBrokersMessage(t *testing.T) {
	for _, complete := range []bool{false, true} {
		t.Run(fmt.Sprint("PUBREL sent: ", complete), func(t *testing.T) {
			b, r, dial, id := qos2Rig(t)
			r.publish(id, "tele/x", 2, "21.5", nil)
			r.expect(packets.PUBREC)
			if complete {
				r.send(&packets.Pubrel{PacketID: id, Properties: &packets.Properties{}})
				r.expect(packets.PUBCOMP)
			}
			r.Close()
			if got := nextPublish(t, b, dial()); got != "cmd/a" {
				t.Errorf("after coming back the device got %s first, want cmd/a sent again: the device's QoS 2 publish deleted it", got)
			}
		})
	}
}

// A SUBSCRIBE with the id of the broker's unacknowledged message is
// granted, not refused as "packet identifier in use".
func TestSubscribeSharesBrokersPacketID(t *testing.T) {
	_, r, _, id := qos2Rig(t)
	r.subscribe(id, "other/#", 1) // fails the test on a refusal
	r.send(&packets.Unsubscribe{PacketID: id, Topics: []string{"other/#"}, Properties: &packets.Properties{}})
	if ua := r.expect(packets.UNSUBACK).Content.(*packets.Unsuback); len(ua.Reasons) != 1 || ua.Reasons[0] >= 0x80 {
		t.Errorf("UNSUBACK %v, want success", ua.Reasons)
	}
}

// rawDevice is an MQTT 3.1.1 device "device" with a persistent session,
// subscribed to cmd/#.
func rawDevice(t *testing.T, b *Broker, subscribe bool) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", b.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(wait))
	cp := pahopk.NewControlPacket(pahopk.Connect).(*pahopk.ConnectPacket)
	cp.ProtocolName, cp.ProtocolVersion, cp.ClientIdentifier, cp.Keepalive, cp.CleanSession = "MQTT", 4, "device", 60, false
	if err := cp.Write(c); err != nil {
		t.Fatal(err)
	}
	if ack, err := pahopk.ReadPacket(c); err != nil || ack.(*pahopk.ConnackPacket).ReturnCode != 0 {
		t.Fatalf("connect: %v %v", ack, err)
	}
	if subscribe {
		sp := pahopk.NewControlPacket(pahopk.Subscribe).(*pahopk.SubscribePacket)
		sp.MessageID, sp.Topics, sp.Qoss = 1, []string{"cmd/#"}, []byte{1}
		sp.Write(c)
		if _, err := pahopk.ReadPacket(c); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func rawPublish(t *testing.T, c net.Conn, topic string, id uint16) {
	t.Helper()
	pp := pahopk.NewControlPacket(pahopk.Publish).(*pahopk.PublishPacket)
	pp.TopicName, pp.Qos, pp.MessageID, pp.Payload = topic, 1, id, []byte("21.5")
	if err := pp.Write(c); err != nil {
		t.Fatal(err)
	}
}

// A device's stored publish with the id of the broker's message to it,
// acknowledged (once on disk) after the device has gone: the broker's
// message is sent again when the device is back, before and after a
// restart, and the site's subscribers get the stored publish.
func TestStoredPublishAfterLeaveKeepsBrokersMessage(t *testing.T) {
	release := make(chan error, 1)
	fwd := func(m Message) (<-chan error, error) {
		if m.Topic != "tele/x" {
			return nil, nil
		}
		return release, nil
	}
	opts := &Options{Listeners: []Listener{{Address: "127.0.0.1:0"}}, Security: Security{AllowAnonymous: true}, Forward: fwd,
		SessionFile: filepath.Join(t.TempDir(), "sessions.db")}
	b, err := New(opts, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { b.Close() }()
	local := make(chan Message, 1)
	b.Subscribe("tele/#", 1, func(m Message) { local <- m })

	c := rawDevice(t, b, true)
	b.Publish(Message{Topic: "cmd/a", Payload: []byte("a"), QoS: 1})
	pk, err := pahopk.ReadPacket(c)
	if err != nil {
		t.Fatal(err)
	}
	id := pk.(*pahopk.PublishPacket).MessageID // not acknowledged
	rawPublish(t, c, "tele/x", id)
	// The broker has read it when it answers a PINGREQ sent after it.
	pahopk.NewControlPacket(pahopk.Pingreq).Write(c)
	if p, err := pahopk.ReadPacket(c); err != nil {
		t.Fatal(err)
	} else if _, ok := p.(*pahopk.PingrespPacket); !ok {
		t.Fatalf("got %v, want PINGRESP (the publish waits for storage)", p)
	}
	c.Close()
	deadline := time.Now().Add(wait)
	for cl, ok := b.srv.Clients.Get("device"); !ok || !cl.Closed(); cl, ok = b.srv.Clients.Get("device") {
		if time.Now().After(deadline) {
			t.Fatal("the broker did not see the device leave")
		}
		time.Sleep(time.Millisecond) // polling the broker's state, with a deadline
	}
	release <- nil // stored now: the waiter acknowledges it
	select {
	case m := <-local:
		if m.Topic != "tele/x" {
			t.Fatalf("local subscriber got %s", m.Topic)
		}
	case <-time.After(wait):
		t.Fatal("the stored publish of a device that left never reached the site's subscriber")
	}
	for restart := range 2 {
		if restart == 1 {
			b.Close()
			opts.Listeners = []Listener{{Address: b.Addrs()[0]}}
			if b, err = New(opts, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
				t.Fatal(err)
			}
		}
		c = rawDevice(t, b, false)
		p, err := pahopk.ReadPacket(c)
		if pp, ok := p.(*pahopk.PublishPacket); err != nil || !ok || pp.TopicName != "cmd/a" {
			t.Fatalf("coming back (restart %v): got %v %v, want cmd/a again", restart == 1, p, err)
		}
		c.Close()
	}
}

// The waiter acknowledging a device's stored publish with id N while the
// device's reader processes its PUBACK of the broker's message N: both
// end, and nothing is left in the session.
func TestStoredPublishRacesPuback(t *testing.T) {
	release := make(chan chan error, 1)
	fwd := func(m Message) (<-chan error, error) {
		if m.Topic != "tele/x" {
			return nil, nil
		}
		ch := make(chan error, 1)
		release <- ch
		return ch, nil
	}
	b, err := New(&Options{Listeners: []Listener{{Address: "127.0.0.1:0"}}, Security: Security{AllowAnonymous: true}, Forward: fwd},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	c := rawDevice(t, b, true)
	for i := range 300 {
		c.SetDeadline(time.Now().Add(wait))
		b.Publish(Message{Topic: "cmd/a", Payload: []byte("a"), QoS: 1})
		pk, err := pahopk.ReadPacket(c)
		if err != nil {
			t.Fatal(err)
		}
		id := pk.(*pahopk.PublishPacket).MessageID
		rawPublish(t, c, "tele/x", id)
		(<-release) <- nil // the waiter goes
		pa := pahopk.NewControlPacket(pahopk.Puback).(*pahopk.PubackPacket)
		pa.MessageID = id
		pa.Write(c) // and the reader, at once
		pahopk.NewControlPacket(pahopk.Pingreq).Write(c)
		for got := 0; got < 2; got++ { // the PUBACK of tele/x and the PINGRESP, in either order
			if _, err := pahopk.ReadPacket(c); err != nil {
				t.Fatalf("round %d: %v", i, err)
			}
		}
		cl, _ := b.srv.Clients.Get("device")
		deadline := time.Now().Add(wait)
		for cl.State.Inflight.Len() > 0 { // the waiter may be settling still
			if time.Now().After(deadline) {
				left, _ := cl.State.Inflight.Get(id)
				t.Fatalf("round %d: packet type %d left under id %d", i, left.FixedHeader.Type, id)
			}
			time.Sleep(time.Millisecond) // polling the broker's state, with a deadline
		}
	}
}

// A PUBLISH with an empty topic and an alias the client never set ends
// the connection (0x82) and goes nowhere: not forwarded, not delivered.
func TestUnknownTopicAliasNotForwarded(t *testing.T) {
	forwarded := make(chan Message, 10)
	b, err := New(&Options{Listeners: []Listener{{Address: "127.0.0.1:0"}}, Security: Security{AllowAnonymous: true},
		Forward: func(m Message) (<-chan error, error) { forwarded <- m; return nil, nil }}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	r := dial5(t, b)
	r.connect(&packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, ClientID: "aliaser", CleanStart: true, Properties: &packets.Properties{}})
	a := uint16(3)
	r.publish(1, "", 1, "who knows where", &packets.Properties{TopicAlias: &a})
	if p := r.expect(packets.DISCONNECT); p.Content.(*packets.Disconnect).ReasonCode != 0x82 {
		t.Errorf("DISCONNECT %#x, want 0x82", p.Content.(*packets.Disconnect).ReasonCode)
	}
	b.Close() // waits for the client's goroutine to end
	select {
	case m := <-forwarded:
		t.Errorf("forwarded %q (%q), want nothing", m.Topic, m.Payload)
	default:
	}
}

// A stored retained publish whose commit completes after the broker has
// closed (the outbox is closed after the broker) is not a panic.
func TestStoredRetainedAfterClose(t *testing.T) {
	stored := make(chan error, 1)
	forwarding := make(chan struct{})
	b, err := New(&Options{Listeners: []Listener{{Address: "127.0.0.1:0"}}, Security: Security{AllowAnonymous: true},
		RetainedFile: filepath.Join(t.TempDir(), "broker.db"),
		Forward:      func(Message) (<-chan error, error) { close(forwarding); return stored, nil }}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	c := rawDevice(t, b, false)
	pp := pahopk.NewControlPacket(pahopk.Publish).(*pahopk.PublishPacket)
	pp.TopicName, pp.Qos, pp.Retain, pp.MessageID, pp.Payload = "site/setting", 1, true, 7, []byte("on")
	if err := pp.Write(c); err != nil {
		t.Fatal(err)
	}
	<-forwarding
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	stored <- nil // the outbox's last commit
	// The waiter lets go of the client's slot when it is done.
	deadline := time.Now().Add(wait)
	for {
		n := 0
		b.gate.slots.Range(func(any, any) bool { n++; return true })
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the waiter did not finish: %d slots held", n)
		}
		time.Sleep(time.Millisecond) // polling the broker's state, with a deadline
	}
}

// A device that comes back again and again with its persistent session
// leaves nothing behind per connection.
func TestReconnectsLeaveNoSlots(t *testing.T) {
	b, err := New(&Options{Listeners: []Listener{{Address: "127.0.0.1:0"}}, Security: Security{AllowAnonymous: true}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for range 20 {
		c := rawDevice(t, b, true) // its SUBSCRIBE takes the slot
		c.Close()
	}
	deadline := time.Now().Add(wait)
	for {
		n := 0
		b.gate.slots.Range(func(any, any) bool { n++; return true })
		if cl, ok := b.srv.Clients.Get("device"); n == 0 && ok && cl.Closed() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d slots left after 20 connections of one device", n)
		}
		time.Sleep(time.Millisecond) // polling the broker's state, with a deadline
	}
}

// A stored publish of a device that left before it was on disk is
// delivered to the site's subscribers as from that device: its own
// noLocal subscription does not get it back when it returns.
func TestStoredPublishOfLeaverKeepsNoLocal(t *testing.T) {
	release := make(chan error, 1)
	forwarding := make(chan struct{})
	b := interopBrokerForwarding(t, Limits{}, func(m Message) (<-chan error, error) {
		if m.Topic != "tele/x" {
			return nil, nil
		}
		close(forwarding)
		return release, nil
	})
	persistent := &paho5.ConnectProperties{SessionExpiryInterval: u32(3600)}
	dev := connect5(t, b, &paho5.Connect{ClientID: "dev", Properties: persistent})
	dev.sub(t, nil, paho5.SubscribeOptions{Topic: "tele/#", QoS: 1, NoLocal: true})
	other := connect5(t, b, &paho5.Connect{ClientID: "other", CleanStart: true})
	other.sub(t, nil, paho5.SubscribeOptions{Topic: "tele/#", QoS: 1})

	go dev.Publish(context.Background(), &paho5.Publish{Topic: "tele/x", QoS: 1, Payload: []byte("21.5")})
	<-forwarding
	dev.disconnect(t, &paho5.Disconnect{})
	deadline := time.Now().Add(wait)
	for cl, ok := b.srv.Clients.Get("dev"); !ok || !cl.Closed(); cl, ok = b.srv.Clients.Get("dev") {
		if time.Now().After(deadline) {
			t.Fatal("the broker did not see the device leave")
		}
		time.Sleep(time.Millisecond) // polling the broker's state, with a deadline
	}
	release <- nil // on disk now
	if m := other.in.next(t); m.topic != "tele/x" {
		t.Fatalf("the other subscriber got %s, want tele/x", m.topic)
	}
	other.pub(t, &paho5.Publish{Topic: "tele/end", QoS: 1, Payload: []byte(sentinel)})
	// mochi acknowledges a publish before it queues it for a client that
	// is away: the sentinel is in the device's session before it comes
	// back (a message published while it does can be lost in mochi v2.7.9;
	// see the note).
	pollUntil(t, "the sentinel to be queued for the device", func() bool {
		cl, ok := b.srv.Clients.Get("dev")
		if !ok {
			return false
		}
		for _, pk := range cl.State.Inflight.GetAll(false) {
			if string(pk.Payload) == sentinel {
				return true
			}
		}
		return false
	})

	dev = connect5(t, b, &paho5.Connect{ClientID: "dev", Properties: persistent})
	if !dev.connack.SessionPresent {
		t.Fatal("the device's session was not there when it came back")
	}
	if got := dev.in.upTo(t); len(got) > 0 {
		t.Errorf("the device got %v back through its noLocal subscription", got)
	}
}
