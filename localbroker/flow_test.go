package localbroker

// The receive maximum an MQTT 5 client gives in its CONNECT: the broker
// sends it at most that many QoS 1 and 2 messages unacknowledged, holds
// the rest in the session in order, and sends them as acknowledgements
// come (MQTT 5 §4.9).

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	paho5 "github.com/eclipse/paho.golang/paho"
	pahopk "github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/fieldgate/fieldgate/bridge/mosquittotest"
	mqtt "github.com/mochi-mqtt/server/v2"
	mochipk "github.com/mochi-mqtt/server/v2/packets"
)

// flowSubscriber connects id as a raw MQTT 5 client with receive maximum
// max, subscribed to topic at qos; a session that outlives the connection
// when persistent.
func flowSubscriber(t *testing.T, b *Broker, id string, max uint16, persistent bool, topic string, qos byte) *raw5 {
	t.Helper()
	props := &packets.Properties{ReceiveMaximum: u16(max), SessionExpiryInterval: u32(0)}
	if persistent {
		props.SessionExpiryInterval = u32(3600)
	}
	r := dial5(t, b)
	r.connect(connectPacket5(id, !persistent, 0, props))
	if topic != "" {
		r.subscribe(1, topic, qos)
	}
	return r
}

// nextPublish reads the next packet, which must be a PUBLISH.
func (r *raw5) nextPublish() *packets.Publish {
	r.t.Helper()
	return r.expect(packets.PUBLISH).Content.(*packets.Publish)
}

// onlyHeld publishes a QoS 0 sentinel and checks that it is the next
// thing r gets: whatever QoS 1 or 2 message was queued before it is held
// back.
func onlyHeld(t *testing.T, pub *client5, r *raw5, topic, after string) {
	t.Helper()
	pub.pub(t, &paho5.Publish{Topic: topic, QoS: 0, Payload: []byte(sentinel)})
	if p := r.nextPublish(); string(p.Payload) != sentinel {
		t.Fatalf("%s: got %q (QoS %d), want the sentinel", after, p.Payload, p.QoS)
	}
}

func TestReceiveMaximumKeepsOrder(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	const max, n = 3, 40
	topic := topics5[0]
	r := flowSubscriber(t, b, "slow", max, false, topic, 1)
	pub := connect5(t, b, &paho5.Connect{ClientID: "pub", CleanStart: true})
	publishNumbered(t, pub, topic, 1, n)
	var unacked []*packets.Publish
	for next, acked := 0, 0; acked < n; {
		for len(unacked) < max && next < n {
			p := r.nextPublish()
			if exp := fmt.Sprintf("m%d", next); string(p.Payload) != exp || p.QoS != 1 {
				t.Fatalf("got %q QoS %d, want %q QoS 1", p.Payload, p.QoS, exp)
			}
			unacked = append(unacked, p)
			next++
		}
		onlyHeld(t, pub, r, topic, fmt.Sprintf("%d unacknowledged", len(unacked)))
		// The oldest, or the two oldest at once now and then.
		k := min(1+acked%2, len(unacked))
		for _, p := range unacked[:k] {
			r.send(&packets.Puback{PacketID: p.PacketID, Properties: &packets.Properties{}})
		}
		unacked, acked = unacked[k:], acked+k
	}
}

func TestReceiveMaximumQoS2(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	topic := topics5[0]
	r := flowSubscriber(t, b, "slow2", 1, false, topic, 2)
	pub := connect5(t, b, &paho5.Connect{ClientID: "pub2", CleanStart: true})
	publishNumbered(t, pub, topic, 2, 3)
	for i := range 3 {
		p := r.nextPublish()
		if exp := fmt.Sprintf("m%d", i); string(p.Payload) != exp {
			t.Fatalf("got %q, want %q", p.Payload, exp)
		}
		onlyHeld(t, pub, r, topic, "before the PUBREC")
		r.send(&packets.Pubrec{PacketID: p.PacketID, Properties: &packets.Properties{}})
		if rel := r.expect(packets.PUBREL).Content.(*packets.Pubrel); rel.PacketID != p.PacketID {
			t.Fatalf("PUBREL %d, want %d", rel.PacketID, p.PacketID)
		}
		// The message is not complete until the PUBCOMP.
		onlyHeld(t, pub, r, topic, "before the PUBCOMP")
		r.send(&packets.Pubcomp{PacketID: p.PacketID, Properties: &packets.Properties{}})
	}
	onlyHeld(t, pub, r, topic, "after all three")
}

// A message sent from what was held is kept in the session until it is
// acknowledged, and what is still held is kept too: a client that goes
// away gets both when it comes back.
func TestReceiveMaximumHeldSurviveReconnect(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	topic := topics5[0]
	r := flowSubscriber(t, b, "away", 1, true, topic, 1)
	pub := connect5(t, b, &paho5.Connect{ClientID: "pub3", CleanStart: true})
	publishNumbered(t, pub, topic, 1, 4)
	first := r.nextPublish()
	r.send(&packets.Puback{PacketID: first.PacketID, Properties: &packets.Properties{}})
	if second := r.nextPublish(); string(second.Payload) != "m1" {
		t.Fatalf("after the first acknowledgement: got %q, want m1", second.Payload)
	}
	onlyHeld(t, pub, r, topic, "m1 unacknowledged")
	r.Close() // m1 unacknowledged, m2 and m3 held

	r = flowSubscriber(t, b, "away", 2, true, "", 0)
	var got []*packets.Publish
	for range 2 {
		got = append(got, r.nextPublish())
	}
	if string(got[0].Payload) != "m1" || !got[0].Duplicate || string(got[1].Payload) != "m2" {
		t.Fatalf("after reconnecting with receive maximum 2: got %q (DUP %v), %q; want m1 (DUP), m2", got[0].Payload, got[0].Duplicate, got[1].Payload)
	}
	onlyHeld(t, pub, r, topic, "the resend with receive maximum 2")
	r.send(&packets.Puback{PacketID: 0xfffe, Properties: &packets.Properties{}}) // of nothing sent: frees nothing
	onlyHeld(t, pub, r, topic, "an acknowledgement of nothing sent")
	r.send(&packets.Puback{PacketID: got[0].PacketID, Properties: &packets.Properties{}})
	if p := r.nextPublish(); string(p.Payload) != "m3" {
		t.Fatalf("after m1's acknowledgement: got %q, want m3", p.Payload)
	}
	onlyHeld(t, pub, r, topic, "m2 and m3 unacknowledged")
}

// max_inflight_messages bounds what a 3.1.1 client, which has no receive
// maximum, has unacknowledged, as Mosquitto's does.
func TestMaxInflightMessages311(t *testing.T) {
	t.Parallel()
	const max = 3
	b := interopBroker(t, Limits{MaxInflightOut: max})
	topic := suiteTopics[0]
	r := subscriber311(t, b, "slow311", topic, 1)
	pub := connect5(t, b, &paho5.Connect{ClientID: "pub311", CleanStart: true})
	const n = 10
	publishNumbered(t, pub, topic, 1, n)
	var unacked []*pahopk.PublishPacket
	for next := 0; next < n || len(unacked) > 0; {
		for len(unacked) < max && next < n {
			p, ok := r.next().(*pahopk.PublishPacket)
			if !ok || string(p.Payload) != fmt.Sprintf("m%d", next) {
				t.Fatalf("got %v, want PUBLISH m%d", p, next)
			}
			unacked = append(unacked, p)
			next++
		}
		pub.pub(t, &paho5.Publish{Topic: topic, QoS: 0, Payload: []byte(sentinel)})
		if p, ok := r.next().(*pahopk.PublishPacket); !ok || string(p.Payload) != sentinel {
			t.Fatalf("%d unacknowledged: got %v, want the sentinel", len(unacked), p)
		}
		ack := pahopk.NewControlPacket(pahopk.Puback).(*pahopk.PubackPacket)
		ack.MessageID = unacked[0].MessageID
		r.send(ack)
		unacked = unacked[1:]
	}
}

// An MQTT 5 client that allows more than max_inflight_messages gets
// max_inflight_messages.
func TestMaxInflightMessagesBelowReceiveMaximum(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{MaxInflightOut: 2})
	topic := topics5[0]
	r := flowSubscriber(t, b, "wide", 50, false, topic, 1)
	pub := connect5(t, b, &paho5.Connect{ClientID: "pubw", CleanStart: true})
	publishNumbered(t, pub, topic, 1, 3)
	first := r.nextPublish()
	r.nextPublish()
	onlyHeld(t, pub, r, topic, "2 unacknowledged, max_inflight_messages 2")
	r.send(&packets.Puback{PacketID: first.PacketID, Properties: &packets.Properties{}})
	if p := r.nextPublish(); string(p.Payload) != "m2" {
		t.Fatalf("got %q, want m2", p.Payload)
	}
}

// next reads the next packet, and fails when none comes.
func (r *raw311) next() pahopk.ControlPacket {
	r.t.Helper()
	p, err := r.read()
	if err != nil {
		r.t.Fatal(err)
	}
	return p
}

// A held message whose packet id the client's own QoS 2 publish uses
// when its turn comes (the two directions number apart; mochi keeps both
// in one map, and packetids.go sets the broker's message aside) is sent
// in its turn, not skipped.
func TestReceiveMaximumHeldIDInUseByClient(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	topic := topics5[0]
	r := flowSubscriber(t, b, "both", 1, false, topic, 1)
	pub := connect5(t, b, &paho5.Connect{ClientID: "pubboth", CleanStart: true})
	publishNumbered(t, pub, topic, 1, 3)
	m0 := r.nextPublish()
	onlyHeld(t, pub, r, topic, "m0 unacknowledged")
	// The broker numbers its messages in turn: m1 has m0's id + 1.
	r.publish(m0.PacketID+1, topics5[1], 2, "mine", nil)
	if rec := r.expect(packets.PUBREC).Content.(*packets.Pubrec); rec.PacketID != m0.PacketID+1 {
		t.Fatalf("PUBREC %d, want %d", rec.PacketID, m0.PacketID+1)
	}
	r.send(&packets.Puback{PacketID: m0.PacketID, Properties: &packets.Properties{}})
	m1 := r.nextPublish()
	if string(m1.Payload) != "m1" || m1.PacketID != m0.PacketID+1 {
		t.Fatalf("after m0's acknowledgement: got %q (id %d), want m1 (id %d)", m1.Payload, m1.PacketID, m0.PacketID+1)
	}
	r.send(&packets.Pubrel{PacketID: m1.PacketID, Properties: &packets.Properties{}})
	r.expect(packets.PUBCOMP)
	r.send(&packets.Puback{PacketID: m1.PacketID, Properties: &packets.Properties{}})
	if p := r.nextPublish(); string(p.Payload) != "m2" {
		t.Fatalf("after m1's acknowledgement: got %q, want m2", p.Payload)
	}
	onlyHeld(t, pub, r, topic, "m2 unacknowledged")
}

// aliasReader checks the topic aliases of what r gets: each must have
// been given with its topic on this connection.
type aliasReader struct {
	*raw5
	known map[uint16]string
}

func (a *aliasReader) next() *packets.Publish {
	a.t.Helper()
	p := a.nextPublish()
	if p.Properties == nil || p.Properties.TopicAlias == nil {
		return p
	}
	n := *p.Properties.TopicAlias
	switch topic, ok := a.known[n]; {
	case p.Topic != "":
		a.known[n] = p.Topic
	case !ok:
		a.t.Fatalf("%q (QoS %d): topic alias %d, never given on this connection", p.Payload, p.QoS, n)
	default:
		p.Topic = topic
	}
	return p
}

// A QoS 0 message goes out past a held one; the alias of its topic must
// not be one that the held one is to give.
func TestTopicAliasPastHeldMessage(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	r := dial5(t, b)
	r.connect(connectPacket5("alias", true, 0, &packets.Properties{ReceiveMaximum: u16(1), TopicAliasMaximum: u16(10)}))
	r.subscribe(1, topics5[0], 1)
	r.subscribe(2, topics5[1], 1)
	a := &aliasReader{r, map[uint16]string{}}
	pub := connect5(t, b, &paho5.Connect{ClientID: "pubalias", CleanStart: true})
	pub.pub(t, &paho5.Publish{Topic: topics5[0], QoS: 1, Payload: []byte("a")}) // sent: the window is full
	pub.pub(t, &paho5.Publish{Topic: topics5[1], QoS: 1, Payload: []byte("b")}) // held
	pub.pub(t, &paho5.Publish{Topic: topics5[1], QoS: 0, Payload: []byte("c")}) // goes past b
	first := a.next()
	if c := a.next(); string(c.Payload) != "c" || c.Topic != topics5[1] {
		t.Fatalf("got %q on %q, want c on %s", c.Payload, c.Topic, topics5[1])
	}
	r.send(&packets.Puback{PacketID: first.PacketID, Properties: &packets.Properties{}})
	if b := a.next(); string(b.Payload) != "b" || b.Topic != topics5[1] {
		t.Fatalf("got %q on %q, want b on %s", b.Payload, b.Topic, topics5[1])
	}
}

// Aliases do not carry over to the next connection [MQTT-3.3.2-7]: what
// a resumed session resends has its topic, or an alias given anew.
func TestTopicAliasesAfterReconnect(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	props := func() *packets.Properties {
		return &packets.Properties{TopicAliasMaximum: u16(10), SessionExpiryInterval: u32(3600)}
	}
	r := dial5(t, b)
	r.connect(connectPacket5("again", true, 0, props()))
	r.subscribe(1, topics5[0], 1)
	a := &aliasReader{r, map[uint16]string{}}
	pub := connect5(t, b, &paho5.Connect{ClientID: "pubagain", CleanStart: true})
	for i := range 3 {
		pub.pub(t, &paho5.Publish{Topic: topics5[0], QoS: 1, Payload: fmt.Appendf(nil, "m%d", i)})
	}
	for i := range 3 {
		p := a.next()
		if p.Topic != topics5[0] {
			t.Fatalf("message %d: topic %q", i, p.Topic)
		}
		if i == 0 {
			r.send(&packets.Puback{PacketID: p.PacketID, Properties: &packets.Properties{}})
		}
	}
	r.Close() // m1 and m2 not acknowledged

	r = dial5(t, b)
	r.connect(connectPacket5("again", false, 0, props()))
	a = &aliasReader{r, map[uint16]string{}}
	for i := 1; i < 3; i++ {
		p := a.next()
		if p.Topic != topics5[0] || string(p.Payload) != fmt.Sprintf("m%d", i) {
			t.Fatalf("resent: got %q on %q, want m%d on %s", p.Payload, p.Topic, i, topics5[0])
		}
		r.send(&packets.Puback{PacketID: p.PacketID, Properties: &packets.Properties{}})
	}
}

// A held message is handed to mochi as a PINGREQ that is not written:
// $SYS counts only what the client was sent.
func TestHeldMessagesNotCountedSent(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	topic := topics5[0]
	r := flowSubscriber(t, b, "sys", 1, false, topic, 1)
	before := atomic.LoadInt64(&b.srv.Info.PacketsSent)
	for i := range 3 {
		if err := b.Publish(Message{Topic: topic, QoS: 1, Payload: fmt.Appendf(nil, "m%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Publish(Message{Topic: topic, QoS: 0, Payload: []byte(sentinel)}); err != nil {
		t.Fatal(err)
	}
	for string(r.nextPublish().Payload) != sentinel {
	}
	// mochi counts a packet once it is written.
	pollUntil(t, "the sentinel to be counted", func() bool { return atomic.LoadInt64(&b.srv.Info.PacketsSent)-before >= 2 })
	if n := atomic.LoadInt64(&b.srv.Info.PacketsSent) - before; n != 2 {
		t.Errorf("$SYS packets sent: %d, want 2 (m0 and the sentinel; m1 and m2 are held)", n)
	}
}

// What a session resends goes out with DUP set only if it was written
// before [MQTT-3.3.1-1]: not a message queued while the client was away,
// nor one held on its last connection.
func TestResentDupOnlyIfWritten(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	topic := topics5[0]
	r := flowSubscriber(t, b, "dup", 1, true, topic, 1)
	pub := connect5(t, b, &paho5.Connect{ClientID: "pubdup", CleanStart: true})
	publishNumbered(t, pub, topic, 1, 2)
	r.nextPublish()
	onlyHeld(t, pub, r, topic, "m0 unacknowledged")
	r.send(&packets.Disconnect{Properties: &packets.Properties{}}) // m0 written, m1 held
	r.Close()
	pollUntil(t, "the client to be gone", func() bool { cl, ok := b.srv.Clients.Get("dup"); return ok && cl.Closed() })
	pub.pub(t, &paho5.Publish{Topic: topic, QoS: 1, Payload: []byte("m2")}) // queued while it is away

	r = flowSubscriber(t, b, "dup", 1, true, "", 0)
	for i, wantDup := range []bool{true, false, false} {
		p := r.nextPublish()
		if string(p.Payload) != fmt.Sprintf("m%d", i) || p.Duplicate != wantDup {
			t.Errorf("got %q DUP %v, want m%d DUP %v", p.Payload, p.Duplicate, i, wantDup)
		}
		r.send(&packets.Puback{PacketID: p.PacketID, Properties: &packets.Properties{}})
	}
}

// publishSize is the size of the PUBLISH the broker writes for a QoS 1
// message on topic (with a topic alias if alias) with payload: mochi adds
// the message expiry interval.
func publishSize(t *testing.T, topic string, payload []byte, alias bool) int {
	t.Helper()
	pk := mochipk.Packet{FixedHeader: mochipk.FixedHeader{Type: mochipk.Publish, Qos: 1}, PacketID: 1, TopicName: topic, Payload: payload, ProtocolVersion: 5}
	pk.Properties.MessageExpiryInterval = 1 << 30
	if alias {
		pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = 1, true
	}
	var buf bytes.Buffer
	if err := pk.PublishEncode(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Len()
}

// A message that fits the client's maximum packet size only without a
// topic alias goes without one, and takes its place in the window; one
// that fits only with its alias alone waits its turn like any other.
func TestTopicAliasAndMaximumPacketSize(t *testing.T) {
	t.Parallel()
	t.Run("fits without an alias", func(t *testing.T) {
		t.Parallel()
		b := interopBroker(t, Limits{})
		topic := "flow/size"
		big := []byte(strings.Repeat("x", 200))
		max := publishSize(t, topic, big, false)
		r := dial5(t, b)
		r.connect(connectPacket5("size", true, 0, &packets.Properties{ReceiveMaximum: u16(1), TopicAliasMaximum: u16(10), MaximumPacketSize: u32(uint32(max))}))
		r.subscribe(1, topic, 1)
		pub := connect5(t, b, &paho5.Connect{ClientID: "pubsize", CleanStart: true})
		pub.pub(t, &paho5.Publish{Topic: topic, QoS: 1, Payload: big})
		pub.pub(t, &paho5.Publish{Topic: topic, QoS: 1, Payload: []byte("small")})
		p := r.nextPublish()
		if !bytes.Equal(p.Payload, big) || p.Topic != topic {
			t.Fatalf("got %.10q on %q, want the large message on %s", p.Payload, p.Topic, topic)
		}
		onlyHeld(t, pub, r, topic, "the large message unacknowledged")
		r.send(&packets.Puback{PacketID: p.PacketID, Properties: &packets.Properties{}})
		if p := r.nextPublish(); string(p.Payload) != "small" {
			t.Fatalf("got %q, want small", p.Payload)
		}
	})
	t.Run("fits with its alias alone", func(t *testing.T) {
		t.Parallel()
		b := interopBroker(t, Limits{})
		topic := "flow/" + strings.Repeat("t", 100)
		payload := []byte(strings.Repeat("x", 100))
		max := publishSize(t, topic, payload, false) - 1
		r := dial5(t, b)
		r.connect(connectPacket5("bypass", true, 0, &packets.Properties{ReceiveMaximum: u16(1), TopicAliasMaximum: u16(10), MaximumPacketSize: u32(uint32(max))}))
		r.subscribe(1, topic, 1)
		a := &aliasReader{r, map[uint16]string{}}
		pub := connect5(t, b, &paho5.Connect{ClientID: "pubbypass", CleanStart: true})
		pub.pub(t, &paho5.Publish{Topic: topic, QoS: 1, Payload: []byte("a")})
		first := a.next()
		pub.pub(t, &paho5.Publish{Topic: topic, QoS: 1, Payload: payload})
		onlyHeld(t, pub, r, topic, "a unacknowledged, receive maximum 1")
		r.send(&packets.Puback{PacketID: first.PacketID, Properties: &packets.Properties{}})
		if p := a.next(); !bytes.Equal(p.Payload, payload) {
			t.Fatalf("got %.10q, want the message that fits with its alias alone", p.Payload)
		}
	})
}

// A message too large for the client is discarded as if sent
// [MQTT-3.1.2-25]: it does not stay in the session, where mochi's resend
// of it ended every later connection of the client after its CONNACK,
// and it frees its place.
func TestTooLargeForClientDiscarded(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	topic := "flow/toolarge"
	props := func() *packets.Properties {
		return &packets.Properties{MaximumPacketSize: u32(100), SessionExpiryInterval: u32(3600), ReceiveMaximum: u16(1)}
	}
	r := dial5(t, b)
	r.connect(connectPacket5("toolarge", true, 0, props()))
	r.subscribe(1, topic, 1)
	pub := connect5(t, b, &paho5.Connect{ClientID: "pubtoolarge", CleanStart: true})
	pub.pub(t, &paho5.Publish{Topic: topic, QoS: 1, Payload: []byte(strings.Repeat("x", 200))})
	pub.pub(t, &paho5.Publish{Topic: topic, QoS: 1, Payload: []byte("small")})
	if p := r.nextPublish(); string(p.Payload) != "small" {
		t.Fatalf("got %.10q, want small", p.Payload)
	}
	r.Close() // small not acknowledged
	r = dial5(t, b)
	r.connect(connectPacket5("toolarge", false, 0, props()))
	if p := r.nextPublish(); string(p.Payload) != "small" || !p.Duplicate {
		t.Fatalf("resent: got %.10q DUP %v, want small DUP", p.Payload, p.Duplicate)
	}
	r.send(&packets.Pingreq{})
	r.expect(packets.PINGRESP)
}

// A PUBREC with a reason code a PUBREC does not have ends the message
// (as mochi takes it), and frees its place.
func TestPubrecInvalidReasonFreesPlace(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	topic := topics5[0]
	r := flowSubscriber(t, b, "badrec", 1, false, topic, 2)
	pub := connect5(t, b, &paho5.Connect{ClientID: "pubbadrec", CleanStart: true})
	publishNumbered(t, pub, topic, 2, 2)
	m0 := r.nextPublish()
	onlyHeld(t, pub, r, topic, "m0 unacknowledged")
	r.send(&packets.Pubrec{PacketID: m0.PacketID, ReasonCode: 0x01, Properties: &packets.Properties{}})
	if p := r.nextPublish(); string(p.Payload) != "m1" {
		t.Fatalf("after m0's PUBREC 0x01: got %q, want m1", p.Payload)
	}
}

// The mark of a held message never written is set while the window is
// locked, so before the reader can take the message and write it: a mark
// set after that write would have the next connection's resend send it
// without DUP, though the client got it.
func TestUnsentMarkedBeforeRelease(t *testing.T) {
	b := interopBroker(t, Limits{})
	marked := make(chan bool, 10) // whether the window was locked
	mark := b.flow.markUnsent
	b.flow.markUnsent = func(cl *mqtt.Client, id uint16, m message, unsent bool) {
		if w := cl.Net.Conn.(*corkConn).window; unsent && w != nil && !cl.Closed() {
			locked := !w.mu.TryLock()
			if !locked {
				w.mu.Unlock()
			}
			marked <- locked
		}
		mark(cl, id, m, unsent)
	}
	// mochi keeps its hooks in an atomic.Value: a hook added after the
	// change makes the broker's goroutines see it.
	if err := b.srv.AddHook(new(nopHook), nil); err != nil {
		t.Fatal(err)
	}
	topic := topics5[0]
	r := flowSubscriber(t, b, "racer", 1, true, topic, 1)
	pub := connect5(t, b, &paho5.Connect{ClientID: "pubracer", CleanStart: true})
	publishNumbered(t, pub, topic, 1, 2)
	r.nextPublish()
	onlyHeld(t, pub, r, topic, "m0 unacknowledged")
	if locked := <-marked; !locked {
		t.Error("m1 was marked never written with the window unlocked: a release could write it first")
	}
}

type nopHook struct{ mqtt.HookBase }

func (nopHook) ID() string { return "test-nop" }

// Without max_inflight_messages a 3.1.1 client gets what is queued for it
// without waiting for its acknowledgements (as before: a window costs a
// subscriber whose acknowledgements come late), up to
// max_queued_messages.
func TestNoWindowByDefault311(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	topic := suiteTopics[0]
	r := subscriber311(t, b, "fast311", topic, 1)
	pub := connect5(t, b, &paho5.Connect{ClientID: "pubfast311", CleanStart: true})
	const n = 300 // more than max_inflight's default, 100
	publishNumbered(t, pub, topic, 1, n)
	for i := range n {
		if p, ok := r.next().(*pahopk.PublishPacket); !ok || string(p.Payload) != fmt.Sprintf("m%d", i) {
			t.Fatalf("none acknowledged: got %v, want PUBLISH m%d", p, i)
		}
	}
}

// subscriber311 connects id as a raw MQTT 3.1.1 client subscribed to
// topic at qos.
func subscriber311(t *testing.T, b *Broker, id, topic string, qos byte) *raw311 {
	t.Helper()
	r := dial311(t, b)
	r.send(connectPacket311(id, true, 0))
	if ca := r.connack(); ca.ReturnCode != 0 {
		t.Fatalf("connect: return code %d", ca.ReturnCode)
	}
	sp := pahopk.NewControlPacket(pahopk.Subscribe).(*pahopk.SubscribePacket)
	sp.MessageID, sp.Topics, sp.Qoss = 1, []string{topic}, []byte{qos}
	r.send(sp)
	if _, ok := r.next().(*pahopk.SubackPacket); !ok {
		t.Fatal("no SUBACK")
	}
	return r
}

// A QoS 2 message whose PUBREL the client had not completed when it left
// still counts against its receive maximum when its session is resumed
// (no PUBCOMP yet [MQTT-3.3.4-9]), as Mosquitto counts it.
func TestPubrelStageCountsAfterReconnect(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	topic := topics5[0]
	r := flowSubscriber(t, b, "relstage", 1, true, topic, 2)
	pub := connect5(t, b, &paho5.Connect{ClientID: "pubrelstage", CleanStart: true})
	publishNumbered(t, pub, topic, 2, 2)
	m0 := r.nextPublish()
	r.send(&packets.Pubrec{PacketID: m0.PacketID, Properties: &packets.Properties{}})
	r.expect(packets.PUBREL)
	onlyHeld(t, pub, r, topic, "m0's PUBREL not completed")
	r.Close()

	r = flowSubscriber(t, b, "relstage", 1, true, "", 0)
	if rel := r.expect(packets.PUBREL).Content.(*packets.Pubrel); rel.PacketID != m0.PacketID {
		t.Fatalf("PUBREL %d, want %d", rel.PacketID, m0.PacketID)
	}
	onlyHeld(t, pub, r, topic, "m0's resent PUBREL not completed, receive maximum 1")
	r.send(&packets.Pubcomp{PacketID: m0.PacketID, Properties: &packets.Properties{}})
	if p := r.nextPublish(); string(p.Payload) != "m1" {
		t.Fatalf("after m0's PUBCOMP: got %q, want m1", p.Payload)
	}
}

// A client may allow the broker 65535 topic aliases; it is given as many
// as the broker takes from clients (10), each holding a topic.
func TestTopicAliasesCapped(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	r := dial5(t, b)
	r.connect(connectPacket5("many", true, 0, &packets.Properties{TopicAliasMaximum: u16(65535)}))
	r.subscribe(1, prefix5+"many/#", 0)
	a := &aliasReader{r, map[uint16]string{}}
	pub := connect5(t, b, &paho5.Connect{ClientID: "pubmany", CleanStart: true})
	for i := range 12 {
		pub.pub(t, &paho5.Publish{Topic: fmt.Sprintf("%smany/%d", prefix5, i), QoS: 0, Payload: []byte("x")})
	}
	for i := range 12 {
		p := a.next()
		switch alias := p.Properties.TopicAlias; {
		case i < 10 && (alias == nil || *alias != uint16(i+1)):
			t.Errorf("topic %d: alias %v, want %d", i, alias, i+1)
		case i >= 10 && alias != nil:
			t.Errorf("topic %d: alias %d, want none past 10", i, *alias)
		}
	}
}

// The real mosquitto_sub, MQTT 5 with receive maximum 2, gets 30 QoS 1
// messages published while it is connected, all of them, in order.
// (mochi's own limit sent it m0, m1, m2, m7 and m20, and then nothing.)
func TestReceiveMaximumMosquittoSub(t *testing.T) {
	t.Parallel()
	sub := mosquittotest.Binary(t, "mosquitto_sub")
	b := interopBroker(t, Limits{})
	topic := topics5[0]
	host, port, _ := net.SplitHostPort(b.Addrs()[0])
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const n = 30
	cmd := exec.CommandContext(ctx, sub, "-h", host, "-p", port, "-u", interopUser, "-P", interopPassword,
		"-V", "mqttv5", "-i", "mosq-slow", "-D", "connect", "receive-maximum", "2", "-q", "1", "-t", topic, "-C", fmt.Sprint(n))
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pollUntil(t, "mosquitto_sub to subscribe", func() bool {
		cl, ok := b.srv.Clients.Get("mosq-slow")
		return ok && cl.State.Subscriptions.Len() > 0
	})
	pub := connect5(t, b, &paho5.Connect{ClientID: "pubmosq", CleanStart: true})
	publishNumbered(t, pub, topic, 1, n)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("mosquitto_sub: %v; it printed %q", err, out.String())
	}
	got := strings.Fields(out.String())
	for i := range n {
		if i >= len(got) || got[i] != fmt.Sprintf("m%d", i) {
			t.Fatalf("mosquitto_sub printed %v, want m0 … m%d in order", got, n-1)
		}
	}
}

// publishNumbered publishes m0, m1, … m(n-1) on topic at qos, each once
// acknowledged (QoS 1 and 2).
func publishNumbered(t *testing.T, pub *client5, topic string, qos byte, n int) {
	t.Helper()
	for i := range n {
		pub.pub(t, &paho5.Publish{Topic: topic, QoS: qos, Payload: fmt.Appendf(nil, "m%d", i)})
	}
}

// publishSizeAtMost is never below what mochi encodes, whatever the
// properties; fits falls back on encoding near the limit.
func TestPublishSizeAtMost(t *testing.T) {
	full := mochipk.Properties{
		PayloadFormat: 1, PayloadFormatFlag: true, MessageExpiryInterval: 1 << 30,
		ContentType: "application/senml+json", ResponseTopic: "reply/to/me", CorrelationData: []byte("corr-1234"),
		SubscriptionIdentifier: []int{1, 200, 70000, 1 << 27}, TopicAlias: 7, TopicAliasFlag: true,
		User: []mochipk.UserProperty{{Key: "site", Val: "greenhouse-2"}, {Key: "", Val: ""}},
	}
	for _, tc := range []struct {
		name  string
		props mochipk.Properties
		size  int
	}{
		{"no properties", mochipk.Properties{}, 10},
		{"every property", full, 10},
		{"every property, large payload", full, 300000},
		{"remaining length of 4 bytes", mochipk.Properties{}, 3 << 20},
	} {
		pk := mochipk.Packet{FixedHeader: mochipk.FixedHeader{Type: mochipk.Publish, Qos: 1}, PacketID: 9, TopicName: "site/sensors/t1",
			Payload: make([]byte, tc.size), Properties: tc.props, ProtocolVersion: 5, Mods: mochipk.Mods{AllowResponseInfo: true}}
		var buf bytes.Buffer
		if err := pk.PublishEncode(&buf); err != nil {
			t.Fatal(err)
		}
		if bound := publishSizeAtMost(&pk); bound < buf.Len() {
			t.Errorf("%s: bound %d, encoded %d", tc.name, bound, buf.Len())
		}
		for _, max := range []int{buf.Len(), buf.Len() - 1} {
			pk.Mods.MaxSize = uint32(max)
			if got, want := fits(pk), max >= buf.Len(); got != want {
				t.Errorf("%s: fits with maximum %d (encoded %d): %v, want %v", tc.name, max, buf.Len(), got, want)
			}
		}
	}
}

// A subscriber's QoS 2 messages waiting for their PUBCOMP take nothing of
// what the client may itself have unacknowledged (its receive quota,
// max_inflight): mochi took one for each PUBREC, until the PUBCOMP, so a
// subscriber with max_inflight of them was disconnected at its next
// publish, over MQTT 3.1.1 too (found by a helper's end-to-end test). The
// second round shows the quota does not drift at the PUBCOMPs either.
func TestQoS2DeliveriesLeaveReceiveQuota(t *testing.T) {
	t.Parallel()
	const n = 100 // the broker's max_inflight
	b := interopBroker(t, Limits{})
	deliver := func(t *testing.T, topic string) {
		t.Helper()
		for i := range n {
			if err := b.Publish(Message{Topic: topic, QoS: 2, Payload: fmt.Appendf(nil, "m%d", i)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Run("3.1.1", func(t *testing.T) {
		t.Parallel()
		topic := suiteTopics[0] + "/q2-311"
		r := subscriber311(t, b, "q2sub311", topic, 2)
		for round := range 2 {
			deliver(t, topic)
			var rels []uint16
			for len(rels) < n {
				switch p := r.next().(type) {
				case *pahopk.PublishPacket:
					rec := pahopk.NewControlPacket(pahopk.Pubrec).(*pahopk.PubrecPacket)
					rec.MessageID = p.MessageID
					r.send(rec)
				case *pahopk.PubrelPacket:
					rels = append(rels, p.MessageID)
				default:
					t.Fatalf("round %d, %d PUBRELs in: got %v", round, len(rels), p)
				}
			}
			pp := pahopk.NewControlPacket(pahopk.Publish).(*pahopk.PublishPacket)
			pp.TopicName, pp.Qos, pp.MessageID, pp.Payload = topic+"/own", 1, uint16(round+1), []byte("x")
			r.send(pp)
			if p, err := r.read(); err != nil {
				t.Fatalf("round %d: %d deliveries at their PUBREL, the client's publish ended the connection: %v", round, n, err)
			} else if ack, ok := p.(*pahopk.PubackPacket); !ok || ack.MessageID != uint16(round+1) {
				t.Fatalf("round %d: got %v, want the PUBACK of the client's publish", round, p)
			}
			for _, id := range rels {
				comp := pahopk.NewControlPacket(pahopk.Pubcomp).(*pahopk.PubcompPacket)
				comp.MessageID = id
				r.send(comp)
			}
		}
	})
	t.Run("5", func(t *testing.T) {
		t.Parallel()
		topic := topics5[0] + "/q2-5"
		r := flowSubscriber(t, b, "q2sub5", 0, false, topic, 2)
		for round := range 2 {
			deliver(t, topic)
			var rels []uint16
			for len(rels) < n {
				switch p := r.expectOneOf(packets.PUBLISH, packets.PUBREL).Content.(type) {
				case *packets.Publish:
					r.send(&packets.Pubrec{PacketID: p.PacketID, Properties: &packets.Properties{}})
				case *packets.Pubrel:
					rels = append(rels, p.PacketID)
				}
			}
			r.publish(uint16(round+1), topic+"/own", 1, "x", nil)
			if ack := r.expect(packets.PUBACK).Content.(*packets.Puback); ack.PacketID != uint16(round+1) || ack.ReasonCode >= 0x80 {
				t.Fatalf("round %d: PUBACK %d reason %#x, want %d, success", round, ack.PacketID, ack.ReasonCode, round+1)
			}
			for _, id := range rels {
				r.send(&packets.Pubcomp{PacketID: id, Properties: &packets.Properties{}})
			}
		}
	})
}
