package bridge

import (
	"bytes"
	"net"
	"slices"
	"testing"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/fieldgate/fieldgate/bridge/outbox"
)

// stream is what a central broker might send the bridge: paho's packets
// and PUBACKs of the bridge's own publishes, mixed. It returns the bytes,
// what paho must get of them, and the ids the bridge must take.
func stream(t *testing.T) (all, forPaho []byte, ours []uint16) {
	t.Helper()
	add := func(p packets.ControlPacket, mine bool) {
		var b bytes.Buffer
		if err := p.Write(&b); err != nil {
			t.Fatal(err)
		}
		all = append(all, b.Bytes()...)
		if !mine {
			forPaho = append(forPaho, b.Bytes()...)
		}
	}
	puback := func(id uint16) packets.ControlPacket {
		p := packets.NewControlPacket(packets.Puback).(*packets.PubackPacket)
		p.MessageID = id
		return p
	}
	// An MQTT 5 style PUBACK, reason code and empty properties after the
	// id, raw: paho's encoder writes 3.1.1 only.
	puback5 := func(id uint16, mine bool) {
		b := []byte{packets.Puback << 4, 4, byte(id >> 8), byte(id), 0x10, 0}
		all = append(all, b...)
		if !mine {
			forPaho = append(forPaho, b...)
		}
	}
	connack := packets.NewControlPacket(packets.Connack)
	add(connack, false)
	suback := packets.NewControlPacket(packets.Suback).(*packets.SubackPacket)
	suback.MessageID, suback.ReturnCodes = 1, []byte{1}
	add(suback, false)
	add(puback(2), false) // paho's birth message
	for i := range 40 {
		id := uint16(firstOwnID + i)
		add(puback(id), true)
		ours = append(ours, id)
		switch i % 7 {
		case 1: // a command coming in on an "in" route, large enough for a length of two bytes
			p := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
			p.TopicName, p.Qos, p.MessageID = "commands/x", 1, uint16(10+i)
			p.Payload = bytes.Repeat([]byte{packets.Puback << 4, 2}, 100) // looks like PUBACKs, is not
			add(p, false)
		case 3:
			add(packets.NewControlPacket(packets.Pingresp), false)
		case 5:
			add(puback(firstOwnID+1000), false) // an id the bridge did not give
			puback5(firstOwnID+1001, false)
		case 6:
			id := uint16(firstOwnID + 100 + i)
			puback5(id, true)
			ours = append(ours, id)
		}
	}
	return all, forPaho, ours
}

// The filter takes out the bridge's PUBACKs and gives paho the rest, byte
// for byte, however the stream is cut into reads.
func TestAckFilter(t *testing.T) {
	all, forPaho, ours := stream(t)
	mine := map[uint16]bool{}
	for _, id := range ours {
		mine[id] = true
	}
	for size := 1; size <= len(all); size += 1 + size/8 {
		var f ackFilter
		var got []byte
		var taken []uint16
		take := func(id uint16) bool {
			if mine[id] {
				taken = append(taken, id)
				return true
			}
			return false
		}
		for in := all; len(in) > 0; {
			k := min(size, len(in))
			f.feed(in[:k], take)
			in = in[k:]
			// paho reads in small pieces meanwhile.
			for f.off < len(f.out) {
				n := min(3, len(f.out)-f.off)
				got = append(got, f.out[f.off:f.off+n]...)
				f.off += n
			}
		}
		if !bytes.Equal(got, forPaho) {
			t.Fatalf("reads of %d: paho got %d bytes, want %d", size, len(got), len(forPaho))
		}
		if !slices.Equal(taken, ours) {
			t.Fatalf("reads of %d: took %v, want %v", size, taken, ours)
		}
	}
}

// A header no MQTT packet has goes to paho as it is, and all after it: a
// PUBACK after it is not looked at.
func TestAckFilterMalformed(t *testing.T) {
	bad := []byte{0x30, 0xff, 0xff, 0xff, 0xff, packets.Puback << 4, 2, 0x80, 0x00}
	var f ackFilter
	f.feed(bad, func(id uint16) bool {
		t.Errorf("took %d after a malformed header", id)
		return true
	})
	if got := f.out[f.off:]; !bytes.Equal(got, bad) {
		t.Errorf("paho got %x, want %x", got, bad)
	}
}

// The bridge's publishes go out with ids of its own range, whole, and are
// done when their PUBACK is read; paho reads what else comes.
func TestOwnPublishes(t *testing.T) {
	server, client := net.Pipe()
	defer server.Close()
	w := newWatchedConn(client)
	defer w.Close()
	var toks []token
	for i := range 3 {
		toks = append(toks, w.publish(outbox.Message{Topic: "devices/x", Payload: []byte{byte(i)}, QoS: 1}))
	}
	qos0 := w.publish(outbox.Message{Topic: "devices/y", QoS: 0})
	var ids []uint16
	for range 4 {
		p, err := packets.ReadPacket(server)
		if err != nil {
			t.Fatal(err)
		}
		pub := p.(*packets.PublishPacket)
		if pub.Qos == 1 {
			ids = append(ids, pub.MessageID)
		}
	}
	if ids[0] < firstOwnID || ids[1] != ids[0]+1 || ids[2] != ids[1]+1 {
		t.Fatalf("ids %v, want consecutive from %d", ids, firstOwnID)
	}
	if !isDone(qos0) || qos0.Error() != nil {
		t.Error("a QoS 0 publish is done once written")
	}
	go func() {
		for _, id := range []uint16{ids[1], 7, ids[0]} { // 7: paho's
			a := packets.NewControlPacket(packets.Puback).(*packets.PubackPacket)
			a.MessageID = id
			a.Write(server)
		}
		packets.NewControlPacket(packets.Pingresp).Write(server)
	}()
	p, err := packets.ReadPacket(w)
	if err != nil {
		t.Fatal(err)
	}
	if a, ok := p.(*packets.PubackPacket); !ok || a.MessageID != 7 {
		t.Fatalf("paho read %v, want the PUBACK of its own 7", p)
	}
	if p, err = packets.ReadPacket(w); err != nil {
		t.Fatal(err)
	} else if _, ok := p.(*packets.PingrespPacket); !ok {
		t.Fatalf("paho read %v, want PINGRESP", p)
	}
	// The PINGRESP came after both PUBACKs: they are done by now.
	if !isDone(toks[0]) || !isDone(toks[1]) || isDone(toks[2]) {
		t.Errorf("done: %v %v %v, want true true false", isDone(toks[0]), isDone(toks[1]), isDone(toks[2]))
	}
	server.Close()
	if _, err := packets.ReadPacket(w); err == nil {
		t.Error("read after the peer closed: want an error")
	}
	if !w.dead.Load() {
		t.Error("the connection is not marked dead after a failed read")
	}
}

// Ids go round their range and skip those still waiting.
func TestOwnIDsWrap(t *testing.T) {
	var a acks
	a.last = 65534
	first := a.add(&sent{done: make(chan struct{})})
	second := a.add(&sent{done: make(chan struct{})})
	a.last = 65535
	third := a.add(&sent{done: make(chan struct{})}) // past 65535, firstOwnID is taken
	a.last = 65534
	fourth := a.add(&sent{done: make(chan struct{})}) // 65535 and firstOwnID are taken
	if first != 65535 || second != firstOwnID || third != firstOwnID+1 || fourth != firstOwnID+2 {
		t.Errorf("ids %d %d %d %d, want 65535 %d %d %d", first, second, third, fourth, firstOwnID, firstOwnID+1, firstOwnID+2)
	}
	if !a.complete(second) || a.complete(second) {
		t.Error("an id completes once")
	}
}

// With every id of the range waiting, a publish fails rather than waits
// for ever.
func TestOwnIDsExhausted(t *testing.T) {
	var a acks
	for range MaxWindow {
		if a.add(&sent{done: make(chan struct{})}) == 0 {
			t.Fatal("an id refused before the range was used up")
		}
	}
	if id := a.add(&sent{done: make(chan struct{})}); id != 0 {
		t.Errorf("got id %d with all %d waiting, want none", id, MaxWindow)
	}
}
