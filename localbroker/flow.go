package localbroker

import (
	"bytes"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// flowHook keeps to the receive maximum an MQTT 5 client sets in its
// CONNECT (MQTT 5 §4.9), and to the broker's max_inflight, for clients of
// either version (as Mosquitto's max_inflight_messages, and EMQX's
// max_inflight, which take the smaller of the two for MQTT 5): the broker
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
// a resend keeps to the new connection's window too.
type flowHook struct {
	mqtt.HookBase
	maxInflight uint16 // the broker's max_inflight
	maxQueued   uint16 // mochi's MaximumInflight: a window as large holds nothing
}

func (h *flowHook) ID() string { return "fieldgate-flow" }

func (h *flowHook) Provides(b byte) bool {
	return b == mqtt.OnConnect || b == mqtt.OnPacketEncode || b == mqtt.OnPacketProcessed
}

// window is a connection's count of what is unacknowledged at the client.
type window struct {
	max int

	mu        sync.Mutex
	out       map[uint16]struct{} // sent, not yet acknowledged
	held      []heldMessage       // in the order they came
	releasing bool                // the reader is sending a held one
	release   uint16              // its packet id
}

// heldMessage is a message of the session held back, as mochi has it
// under its packet id.
type heldMessage struct {
	id  uint16
	dup bool
	m   message
}

// pingreqMarker is what a held message is handed to mochi as: a PINGREQ,
// which a broker never sends, encoded.
var pingreqMarker = []byte{packets.Pingreq << 4, 0}

func isHeldMarker(p []byte) bool { return bytes.Equal(p, pingreqMarker) }

func windowOf(cl *mqtt.Client) *window {
	if cc, ok := cl.Net.Conn.(*corkConn); ok {
		return cc.window
	}
	return nil
}

// OnConnect switches mochi's limit off (it reads the client's receive
// maximum from Props again when it takes a session over) and sets the
// connection's window. A window as large as what a session may hold is
// not needed: mochi drops what a session cannot hold.
func (h *flowHook) OnConnect(cl *mqtt.Client, _ packets.Packet) error {
	max := h.maxInflight
	if cl.Properties.ProtocolVersion == 5 {
		if rm := cl.Properties.Props.ReceiveMaximum; rm > 0 { // clamped by mochi to MaximumInflight
			max = min(max, rm)
		}
		cl.Properties.Props.ReceiveMaximum = 0
		cl.State.Inflight.ResetSendQuota(0)
	}
	if cc, ok := cl.Net.Conn.(*corkConn); ok && max > 0 && max < h.maxQueued {
		cc.window = &window{max: int(max), out: map[uint16]struct{}{}}
	}
	return nil
}

// OnPacketEncode is the window's gate, for each QoS 1 or 2 message mochi
// is about to write to the client.
func (h *flowHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	w := windowOf(cl)
	if w == nil || pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos == 0 || !fits(pk) {
		return pk
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	switch _, again := w.out[pk.PacketID]; {
	case again:
	case w.releasing && pk.PacketID == w.release:
		w.releasing, w.release = false, 0
		w.out[pk.PacketID] = struct{}{}
	case w.releasing || len(w.held) > 0 || len(w.out) >= w.max:
		w.held = append(w.held, heldMessage{pk.PacketID, pk.FixedHeader.Dup, messageOfPacket(pk)})
		return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}
	default:
		w.out[pk.PacketID] = struct{}{}
	}
	return pk
}

// fits tells whether mochi will write pk: it does not write one larger
// than the client's maximum packet size (or than 1 byte, for one that the
// takeover hook keeps from being sent twice).
func fits(pk packets.Packet) bool {
	if pk.Mods.MaxSize == 0 {
		return true
	}
	var buf bytes.Buffer
	return pk.PublishEncode(&buf) == nil && uint32(buf.Len()) <= pk.Mods.MaxSize
}

// OnPacketProcessed frees the place of an acknowledged message, and sends
// what was held.
func (h *flowHook) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, err error) {
	w := windowOf(cl)
	if w == nil || err != nil {
		return
	}
	switch pk.FixedHeader.Type {
	case packets.Puback, packets.Pubcomp:
	case packets.Pubrec:
		if pk.ReasonCode < packets.ErrUnspecifiedError.Code {
			return
		}
	default:
		return
	}
	w.mu.Lock()
	_, sent := w.out[pk.PacketID]
	delete(w.out, pk.PacketID)
	w.mu.Unlock()
	if sent {
		h.sendHeld(cl, w)
	}
}

// sendHeld sends held messages while the window has room.
func (h *flowHook) sendHeld(cl *mqtt.Client, w *window) {
	for {
		w.mu.Lock()
		w.releasing, w.release = false, 0
		if len(w.held) == 0 || len(w.out) >= w.max {
			w.mu.Unlock()
			return
		}
		next := w.held[0]
		w.held = w.held[1:]
		w.releasing, w.release = true, next.id
		w.mu.Unlock()
		// mochi deletes a message that expired, and a client's
		// acknowledgement of one it was never sent.
		if pk, ok := cl.State.Inflight.Get(next.id); ok && pk.FixedHeader.Type == packets.Publish && next.m.is(pk) {
			pk.FixedHeader.Dup = next.dup
			_ = cl.WritePacket(pk) // a failure ends the connection; the session keeps the message
		}
	}
}
