package localbroker

import (
	"bytes"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// flowHook keeps to the receive maximum an MQTT 5 client sets in its
// CONNECT (MQTT 5 §4.9), and to the broker's max_inflight_messages, if
// set, for clients of either version (as Mosquitto's, and EMQX's
// max_inflight, the smaller of the two for MQTT 5): the broker
// has at most that many QoS 1 and 2 messages unacknowledged at the
// client; the rest wait in the session, in order, and go out as
// acknowledgements come. QoS 0 messages are not held.
//
// mochi v2.7.9 holds an MQTT 5 client's messages over its receive
// maximum, but then sends them in no particular order (the low 16 bits of
// the second they were made in), takes the one it sends out of the
// session (a client that goes away before it acknowledges it never gets
// it), and does not count it back in when it is acknowledged: after as
// many as the client's receive maximum had been sent so, nothing more
// was, until the client reconnected. Its limit is switched off
// (OnConnect), and this one is kept where every message to a client
// passes: mochi's write of the packet.
//
//   - A message that finds the window full, or messages already waiting,
//     is noted as held, and mochi is handed a PINGREQ in its place, a
//     packet the broker never sends, which the connection does not write
//     (corkConn.Write). The message stays in the session as mochi has it.
//   - An acknowledgement of a message sent (PUBACK, PUBCOMP, or a PUBREC
//     with an error) frees its place, and the oldest held message is sent
//     from the session, by the client's reader, which processed the
//     acknowledgement. While it does, what else comes is held behind it,
//     so nothing overtakes it.
//
// mochi resends a resumed session's messages through the same write, so
// a resend keeps to the new connection's window too. It sends them all
// with DUP set, also those never written to the client (queued while it
// was away, or held on its last connection): those are marked in the
// session (packets.Packet.Ignore, which mochi reads only on a client's
// own publishes, and copies with the session), and go out without DUP
// [MQTT-3.3.1-1], as Mosquitto sends them. A session restored from disk
// has no marks: what it resends has DUP set.
//
// It also gives the topic aliases of what the broker sends (MQTT 5
// §3.3.2.3.4), in the order it is written. mochi gave them as it queued a
// message, and kept the message without its topic: a message sent ahead
// of the one that set its alias (a QoS 0 one past a held one), or resent
// to the next connection, carried an alias the client did not know.
type flowHook struct {
	mqtt.HookBase
	srv         *mqtt.Server
	maxInflight uint16 // the broker's max_inflight_messages; 0: none
	maxQueued   uint16 // mochi's MaximumInflight: a window as large holds nothing
	maxAliases  uint16 // topic aliases given to a client at most
	// message returns the broker's message to the client under the id,
	// also while the client's own flow uses the id (packetids.go).
	message func(*mqtt.Client, uint16) (packets.Packet, bool)
	// markUnsent sets or clears the mark of a message never written.
	markUnsent func(cl *mqtt.Client, id uint16, m message, unsent bool)
	// drop deletes the broker's message from the client's session;
	// dropped, if set, is told of one deleted (the session store).
	drop    func(cl *mqtt.Client, id uint16, m message) bool
	dropped func(*mqtt.Client, packets.Packet)
}

func (h *flowHook) ID() string { return "fieldgate-flow" }

func (h *flowHook) Provides(b byte) bool {
	return b == mqtt.OnConnect || b == mqtt.OnQosPublish || b == mqtt.OnPacketEncode || b == mqtt.OnPacketSent || b == mqtt.OnPacketRead || b == mqtt.OnPacketProcessed
}

// OnPacketRead takes one from the client's receive quota for each
// PUBCOMP, before mochi's processPubcomp adds one: the QoS 2 message it
// completes holds no place of the client's (see OnPacketProcessed). At a
// quota of 0 the take does nothing, and the client is left one more
// (lenient), never one fewer.
func (h *flowHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type == packets.Pubcomp {
		cl.State.Inflight.DecreaseReceiveQuota()
	}
	return pk, nil
}

// window is a connection's count of what is unacknowledged at the client.
type window struct {
	max int

	mu        sync.Mutex
	out       map[uint16]struct{} // sent, not yet acknowledged
	held      []heldMessage       // in the order they came
	releasing bool                // a held one is being sent: the rest wait
	release   uint16              // its packet id, until it passes the gate
}

// heldMessage is a message of the session held back, as mochi has it
// under its packet id.
type heldMessage struct {
	id uint16
	m  message
}

// aliases are the topic aliases the broker has given a client on this
// connection, at most the client's topic alias maximum.
type aliases struct {
	max uint16

	mu      sync.Mutex
	byTopic map[string]alias
}

type alias struct {
	n    uint16
	sent bool // written with its topic: the client knows it
}

// OnConnect switches mochi's limit and topic aliases off (it reads the
// client's receive maximum from Props again when it takes a session over)
// and sets the connection's window and aliases, and its gathering of
// writes (corkConn.gatherFor). A window as large as what
// a session may hold is not needed: mochi drops what a session cannot
// hold.
func (h *flowHook) OnConnect(cl *mqtt.Client, _ packets.Packet) error {
	cc, _ := cl.Net.Conn.(*corkConn)
	max := h.maxInflight
	if cl.Properties.ProtocolVersion == 5 {
		if rm := cl.Properties.Props.ReceiveMaximum; rm > 0 && (max == 0 || rm < max) { // clamped by mochi to MaximumInflight
			max = rm
		}
		cl.Properties.Props.ReceiveMaximum = 0
		cl.State.Inflight.ResetSendQuota(0)
		if tam := cl.Properties.Props.TopicAliasMaximum; tam > 0 {
			cl.Properties.Props.TopicAliasMaximum = 0
			if cc != nil {
				// As many as the broker takes from a client: each keeps
				// a topic for as long as the connection lasts.
				cc.aliases = &aliases{max: min(tam, h.maxAliases), byTopic: map[string]alias{}}
			}
		}
	}
	cc.gatherFor(cl)
	if cc != nil && max > 0 && max < h.maxQueued {
		cc.window = &window{max: int(max), out: map[uint16]struct{}{}}
	}
	return nil
}

// OnQosPublish marks a message mochi queues for a client that is away:
// it has not been written.
func (h *flowHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	if pk.FixedHeader.Type == packets.Publish && !pk.FixedHeader.Dup && !cl.Net.Inline && cl.Closed() {
		h.markUnsent(cl, pk.PacketID, messageOfPacket(pk), true)
	}
}

// OnPacketEncode is the window's gate, for each QoS 1 or 2 message mochi
// is about to write to the client, and gives what is written its alias.
//
// A message larger than the client's maximum packet size is discarded,
// as if it had been sent [MQTT-3.1.2-25]: mochi refused to write it and
// kept it in the session, and its resend failed every later connection
// of the client right after its CONNACK.
func (h *flowHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	cc, ok := cl.Net.Conn.(*corkConn)
	if !ok {
		return pk
	}
	if pk.FixedHeader.Type == packets.Pubrel {
		// A QoS 2 message counts until its PUBCOMP [MQTT-3.3.4-9]: one
		// a resumed session resends at its PUBREL takes a place (as
		// Mosquitto counts it), even over the window.
		if w := cc.window; w != nil {
			w.mu.Lock()
			w.out[pk.PacketID] = struct{}{}
			w.mu.Unlock()
		}
		return pk
	}
	if pk.FixedHeader.Type != packets.Publish || pk.Mods.MaxSize == 1 { // 1: see takeoverHook
		return pk
	}
	m := messageOfPacket(pk) // with its topic, as the session has it
	if a := cc.aliases; a != nil && pk.TopicName != "" && a.give(&pk) && !fits(pk) {
		// An alias given with the topic makes the packet 3 bytes larger.
		pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = 0, false
	}
	if !fits(pk) {
		h.discard(cl, pk, m)
		return heldPacket
	}
	if w := cc.window; w != nil && pk.FixedHeader.Qos > 0 {
		var mark func()
		if !pk.FixedHeader.Dup && !pk.Ignore { // a first attempt
			mark = func() { h.markUnsent(cl, pk.PacketID, m, true) }
		}
		if w.hold(pk.PacketID, m, mark) {
			return heldPacket
		}
	}
	if pk.Ignore {
		// Never written before: not a duplicate. (If this write fails,
		// the client may have got it.)
		h.markUnsent(cl, pk.PacketID, m, false)
		pk.Ignore, pk.FixedHeader.Dup = false, false
	}
	return pk
}

// heldPacket is what mochi is handed instead of a message not written
// now (held, or discarded): a PINGREQ, which a broker never sends.
// pingreqMarker is how mochi encodes it, which corkConn.Write does not
// write.
var (
	heldPacket    = packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}
	pingreqMarker = []byte{packets.Pingreq << 4, 0}
)

func isHeldMarker(p []byte) bool { return bytes.Equal(p, pingreqMarker) }

// discard deletes a QoS 1 or 2 message too large for the client from its
// session.
func (h *flowHook) discard(cl *mqtt.Client, pk packets.Packet, m message) {
	if pk.FixedHeader.Qos == 0 || !h.drop(cl, pk.PacketID, m) {
		return
	}
	atomic.AddInt64(&h.srv.Info.Inflight, -1)
	if h.dropped != nil {
		h.dropped(cl, pk)
	}
}

// hold tells whether message m under id waits: the window is full, or
// others wait, or one is being sent from those waiting. mark, if set, is
// called for one that waits before any release can take it: the mark
// must not come after the message was written.
func (w *window) hold(id uint16, m message, mark func()) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch _, again := w.out[id]; {
	case again:
	case w.releasing && id == w.release:
		w.release = 0
		w.out[id] = struct{}{}
	case w.releasing || len(w.held) > 0 || len(w.out) >= w.max:
		if mark != nil {
			mark()
		}
		w.held = append(w.held, heldMessage{id, m})
		return true
	default:
		w.out[id] = struct{}{}
	}
	return false
}

// give gives pk's topic an alias: the one it has, alone once the client
// knows it; a new one while there are aliases left; none after. It tells
// whether pk carries the alias with its topic.
func (a *aliases) give(pk *packets.Packet) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	al, ok := a.byTopic[pk.TopicName]
	if !ok {
		if len(a.byTopic) >= int(a.max) {
			return false
		}
		al = alias{n: uint16(len(a.byTopic) + 1)}
		a.byTopic[pk.TopicName] = al
	}
	pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = al.n, true
	if al.sent {
		pk.TopicName = ""
	}
	return !al.sent
}

// OnPacketSent notes an alias the client now knows, and takes a held
// message's PINGREQ, which was not written, off mochi's counts.
func (h *flowHook) OnPacketSent(cl *mqtt.Client, pk packets.Packet, b []byte) {
	switch pk.FixedHeader.Type {
	case packets.Pingreq:
		atomic.AddInt64(&h.srv.Info.PacketsSent, -1)
		atomic.AddInt64(&h.srv.Info.BytesSent, -int64(len(b)))
	case packets.Publish:
		cc, ok := cl.Net.Conn.(*corkConn)
		if !ok || cc.aliases == nil || pk.TopicName == "" || pk.Properties.TopicAlias == 0 {
			return
		}
		a := cc.aliases
		a.mu.Lock()
		if al := a.byTopic[pk.TopicName]; al.n == pk.Properties.TopicAlias {
			al.sent = true
			a.byTopic[pk.TopicName] = al
		}
		a.mu.Unlock()
	}
}

// fits tells whether mochi will write pk: it does not write one larger
// than the client's maximum packet size. Most are well below it: those
// are not encoded once more to tell.
func fits(pk packets.Packet) bool {
	if pk.Mods.MaxSize == 0 || publishSizeAtMost(&pk) <= int(pk.Mods.MaxSize) {
		return true
	}
	var buf bytes.Buffer
	return pk.PublishEncode(&buf) == nil && uint32(buf.Len()) <= pk.Mods.MaxSize
}

// publishSizeAtMost is a bound on the size of PUBLISH pk encoded: each
// property a PUBLISH carries at its largest, and the fixed header's and
// the properties' lengths at 4 bytes.
func publishSizeAtMost(pk *packets.Packet) int {
	p := &pk.Properties
	props := 2 + 5 + 3 + // payload format, message expiry, topic alias
		3 + len(p.ContentType) + 3 + len(p.ResponseTopic) + 3 + len(p.CorrelationData) +
		5*len(p.SubscriptionIdentifier)
	for _, u := range p.User {
		props += 5 + len(u.Key) + len(u.Val)
	}
	return 1 + 4 + 2 + len(pk.TopicName) + 2 + 4 + props + len(pk.Payload)
}

// OnPacketProcessed frees the place of an acknowledged message, and sends
// what was held: after an acknowledgement, or after any packet that may
// have ended the client's own use of a held message's packet id.
func (h *flowHook) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, err error) {
	if pk.FixedHeader.Type == packets.Pubrec && err == nil && !acknowledges(pk) {
		// mochi took a QoS 2 message the broker sent, now at its PUBREL,
		// off the client's receive quota, which is for what the client
		// sends: given back (and not given again at the PUBCOMP).
		if ack, ok := cl.State.Inflight.Get(pk.PacketID); ok && ack.FixedHeader.Type == packets.Pubrel {
			cl.State.Inflight.IncreaseReceiveQuota()
		}
	}
	cc, ok := cl.Net.Conn.(*corkConn)
	if !ok || cc.window == nil {
		return
	}
	w := cc.window
	if err == nil && acknowledges(pk) {
		w.mu.Lock()
		delete(w.out, pk.PacketID)
		w.mu.Unlock()
	}
	h.sendHeld(cl)
}

// acknowledges tells whether pk, from the client, ends a message the
// broker sent: a PUBACK, a PUBCOMP, or a PUBREC with an error (or a
// reason code a PUBREC does not have).
func acknowledges(pk packets.Packet) bool {
	switch pk.FixedHeader.Type {
	case packets.Puback, packets.Pubcomp:
		return true
	case packets.Pubrec: // as mochi's processPubrec
		return pk.ReasonCode >= packets.ErrUnspecifiedError.Code || !pk.ReasonCodeValid()
	}
	return false
}

// sendHeld sends held messages while the window has room, one caller at
// a time: another that comes meanwhile leaves it to the one at work.
func (h *flowHook) sendHeld(cl *mqtt.Client) {
	cc, ok := cl.Net.Conn.(*corkConn)
	if !ok || cc.window == nil {
		return
	}
	w := cc.window
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.releasing {
		return
	}
	for len(w.held) > 0 && len(w.out) < w.max {
		next := w.held[0]
		w.held = w.held[1:]
		w.releasing, w.release = true, next.id
		w.mu.Unlock()
		// mochi deletes a message that expired, and a client's
		// acknowledgement of one it was never sent.
		if pk, ok := h.message(cl, next.id); ok && pk.FixedHeader.Type == packets.Publish && next.m.is(pk) {
			// Written before (to an earlier connection) unless marked.
			pk.FixedHeader.Dup = !pk.Ignore
			_ = cl.WritePacket(pk) // a failure ends the connection; the session keeps the message
		}
		w.mu.Lock()
	}
	w.releasing, w.release = false, 0
}
