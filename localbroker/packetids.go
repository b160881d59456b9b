package localbroker

import (
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// mochi keeps a client's QoS state of both directions in one map keyed by
// packet id, although MQTT (3.1.1 §2.3.1, 5.0 §2.2.1) numbers the two
// directions apart: the client's own publishes and the broker's to it may
// use the same id at once. mochi, seeing a client's packet, takes whatever
// it holds under that id for the packet's own flow:
//
//   - a QoS 1 or 2 PUBLISH from the client deletes the broker's
//     unacknowledged message with that id (a device that sends telemetry
//     and takes commands would lose commands), and a QoS 2 one puts its
//     PUBREC state in its place;
//   - a PUBACK, PUBREC or PUBCOMP from the client for the broker's message
//     would end the client's QoS 2 flow with that id instead;
//   - a SUBSCRIBE or UNSUBSCRIBE with an id the broker's message uses is
//     refused (0x91, packet identifier in use).
//
// Two goroutines process a client's packets: its reader, and the waiter
// that acknowledges its publishes once they are stored (broker.go). Each
// holds the client's slot lock from making room to settling.
//
// So each client packet finds under its id the entry of its own flow:
// the other flow's entry is set aside while it is processed, or, while
// both flows are under way, kept aside and swapped in for the packets of
// its flow. When one flow ends, the other's entry goes back. A client that
// leaves with both under way keeps the broker's message (it is sent again
// when it comes back) and loses the state of its own QoS 2 publish (which
// it sends again, and which may then be delivered twice).

type asideKey struct {
	cl *mqtt.Client
	id uint16
}

// brokers tells whether an inflight entry is of the broker's flow: its
// message to the client, or the PUBREL that follows the client's PUBREC.
// The client's flow holds the PUBACK, PUBREC and PUBCOMP the broker sends.
func brokers(p packets.Packet) bool {
	return p.FixedHeader.Type == packets.Publish || p.FixedHeader.Type == packets.Pubrel
}

// makeRoom is called before mochi processes pk from cl.
func (h *gateHook) makeRoom(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	const (
		clientFlow = iota // the client's publish, PUBREL
		brokerFlow        // its acknowledgements of the broker's messages
		noFlow            // SUBSCRIBE, UNSUBSCRIBE: the id must be free
	)
	var want int
	switch pk.FixedHeader.Type {
	case packets.Publish:
		if pk.FixedHeader.Qos == 0 {
			return
		}
		want = clientFlow
	case packets.Pubrel:
		want = clientFlow
	case packets.Puback, packets.Pubrec, packets.Pubcomp:
		want = brokerFlow
	case packets.Subscribe, packets.Unsubscribe:
		want = noFlow
	default:
		return
	}
	key := asideKey{cl, pk.PacketID}
	h.asideMu.Lock()
	defer h.asideMu.Unlock()
	res, hasRes := cl.State.Inflight.Get(pk.PacketID)
	if !hasRes || want == clientFlow && !brokers(res) || want == brokerFlow && brokers(res) {
		return // free, or held by the packet's own flow
	}
	as, hasAs := h.aside[key]
	switch {
	case !hasAs && want != brokerFlow: // the other flow's entry steps aside
		cl.State.Inflight.Delete(pk.PacketID)
		h.aside[key] = res
	case hasAs && want != noFlow && brokers(as) == (want == brokerFlow): // both under way: swap
		cl.State.Inflight.Set(as)
		h.aside[key] = res
	}
}

// settle is called once mochi has processed a packet of cl's with id: if
// the slot is free, what was set aside goes back.
func (h *gateHook) settle(cl *mqtt.Client, id uint16) {
	key := asideKey{cl, id}
	h.asideMu.Lock()
	defer h.asideMu.Unlock()
	dropLeftover(cl, id)
	as, ok := h.aside[key]
	if !ok {
		return
	}
	if _, taken := cl.State.Inflight.Get(id); taken && !cl.IsTakenOver() {
		return // both flows go on
	}
	delete(h.aside, key)
	h.giveBack(cl, as)
}

// dropLeftover deletes the acknowledgement mochi left under id when it
// could not write it (the client had gone): mochi deletes a PUBACK or
// PUBCOMP it sent once it is written, and one left behind would be sent
// again to the next connection of the session, and taken for the end of
// whatever flow then holds the id.
func dropLeftover(cl *mqtt.Client, id uint16) {
	if res, ok := cl.State.Inflight.Get(id); ok && transientAck(res) {
		cl.State.Inflight.Delete(id) // the session store never keeps one
	}
}

// restoreAside puts back what is set aside for cl, which is leaving or
// being taken over, once no packet of it is being processed.
func (h *gateHook) restoreAside(cl *mqtt.Client) {
	// A client without a slot (gone, or a session restored from disk)
	// has no packet being processed; one is not made for it.
	if s, ok := h.slots.Load(cl); ok {
		s.(*slot).mu.Lock()
		defer s.(*slot).mu.Unlock()
	}
	h.asideMu.Lock()
	defer h.asideMu.Unlock()
	for key, as := range h.aside {
		if key.cl != cl {
			continue
		}
		delete(h.aside, key)
		dropLeftover(cl, key.id)
		h.giveBack(cl, as)
	}
}

// giveBack puts an entry set aside back into cl's map, the broker's
// message before the client's QoS 2 state; and, if another connection has
// taken cl's session over, into that one's too, as mochi may have copied
// cl's map already.
func (h *gateHook) giveBack(cl *mqtt.Client, as packets.Packet) {
	put := func(c *mqtt.Client) {
		if res, ok := c.State.Inflight.Get(as.PacketID); !ok || brokers(as) && !brokers(res) {
			c.State.Inflight.Set(as)
		}
	}
	put(cl)
	if cl.IsTakenOver() {
		// Only a session that was inherited, as mochi decides it.
		if nc, ok := h.srv.Clients.Get(cl.ID); ok && nc != cl && inherits(cl, nc) {
			put(nc)
		}
	}
}

// slot serializes the processing of a client's packets that concern its
// packet ids. reader is set while the reader goroutine holds mu, for the
// packet id id; only that goroutine (which also runs OnDisconnect) reads
// or writes id.
type slot struct {
	mu     sync.Mutex
	reader atomic.Bool
	id     uint16
}

func (h *gateHook) slotOf(cl *mqtt.Client) *slot {
	if s, ok := h.slots.Load(cl); ok {
		return s.(*slot)
	}
	s, _ := h.slots.LoadOrStore(cl, &slot{})
	return s.(*slot)
}

func (h *gateHook) dropSlot(cl *mqtt.Client) { h.slots.Delete(cl) }

// release settles and unlocks the slot if the reader holds it. Only the
// reader goroutine calls it.
func (h *gateHook) release(cl *mqtt.Client) {
	v, ok := h.slots.Load(cl) // no slot, nothing held: none is made for every packet
	if !ok {
		return
	}
	s := v.(*slot)
	if !s.reader.Load() {
		return
	}
	s.reader.Store(false)
	h.settle(cl, s.id)
	s.mu.Unlock()
}

// isAside tells whether the broker's message with id is set aside for cl:
// the session store then leaves its record alone, as what mochi reports
// under that id meanwhile is of the client's flow.
func (h *gateHook) isAside(cl *mqtt.Client, id uint16) bool {
	h.asideMu.Lock()
	defer h.asideMu.Unlock()
	as, ok := h.aside[asideKey{cl, id}]
	return ok && brokers(as)
}

// brokersEntry returns the broker's entry for cl under id, whether it is
// set aside (aside) or in mochi's map. h.asideMu is held.
func (h *gateHook) brokersEntry(cl *mqtt.Client, id uint16) (pk packets.Packet, aside, ok bool) {
	if as, ok := h.aside[asideKey{cl, id}]; ok && brokers(as) {
		return as, true, true
	}
	pk, ok = cl.State.Inflight.Get(id)
	return pk, false, ok && brokers(pk)
}

// brokersMessage returns the broker's message to cl under id, whether it
// is in mochi's map or set aside.
func (h *gateHook) brokersMessage(cl *mqtt.Client, id uint16) (packets.Packet, bool) {
	h.asideMu.Lock()
	defer h.asideMu.Unlock()
	pk, _, ok := h.brokersEntry(cl, id)
	return pk, ok
}

// dropBrokers deletes the broker's message m to cl under id (in mochi's
// map or set aside), and tells whether it was there.
func (h *gateHook) dropBrokers(cl *mqtt.Client, id uint16, m message) bool {
	h.asideMu.Lock()
	defer h.asideMu.Unlock()
	switch pk, aside, ok := h.brokersEntry(cl, id); {
	case !ok || pk.FixedHeader.Type != packets.Publish || !m.is(pk):
		return false
	case aside:
		delete(h.aside, asideKey{cl, id})
		return true
	default:
		return cl.State.Inflight.Delete(id)
	}
}

// markUnsent sets or clears, on the broker's message m to cl under id
// (in mochi's map or set aside), the mark of a message never written to
// the client (see flowHook).
func (h *gateHook) markUnsent(cl *mqtt.Client, id uint16, m message, unsent bool) {
	h.asideMu.Lock()
	defer h.asideMu.Unlock()
	pk, aside, ok := h.brokersEntry(cl, id)
	if !ok || pk.FixedHeader.Type != packets.Publish || !m.is(pk) || pk.Ignore == unsent {
		return
	}
	pk.Ignore = unsent
	switch {
	case aside:
		h.aside[asideKey{cl, id}] = pk
	case cl.State.Inflight.Set(pk):
		// mochi deleted it meanwhile (expired, or cleared): it stays
		// deleted.
		cl.State.Inflight.Delete(id)
	}
}

// OnPacketRead takes the client's slot and makes room for the packet's
// flow; OnPacketProcessed settles and lets go. A packet that mochi will
// not process (it fails validation) is left alone.
func (h *gateHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	switch pk.FixedHeader.Type {
	case packets.Publish:
		if pk.TopicName == "" && pk.Properties.TopicAliasFlag && pk.Properties.TopicAlias > 0 &&
			pk.Properties.TopicAlias <= h.srv.Options.Capabilities.TopicAliasMaximum &&
			cl.State.TopicAliases.Inbound.Set(pk.Properties.TopicAlias, "") == "" {
			// An alias the client never set on this connection: MQTT 5
			// wants the connection ended with a protocol error
			// [MQTT-3.3.4-7]; mochi would take it for the empty topic,
			// acknowledge and deliver to no one.
			h.srv.DisconnectClient(cl, packets.ErrProtocolViolation)
			return pk, packets.ErrRejectPacket // mochi goes on with any other error
		}
		if pk.FixedHeader.Qos == 0 || pk.PublishValidate(h.srv.Options.Capabilities.TopicAliasMaximum) != packets.CodeSuccess {
			return pk, nil
		}
		if deniedOnRead(cl, pk) && !h.mayPublish(cl, pk) {
			// Ends the connection; mochi sends the will (see OnPublish).
			if remote := remoteAddr(cl); h.refusals.allow(remote, "publish denied") {
				h.log.Info("client disconnected: MQTT 3.1.1 publish the ACL denies", "client_id", cl.ID, "topic", pk.TopicName, "remote", remote)
			}
			h.release(cl)
			return pk, packets.ErrRejectPacket
		}
	case packets.Subscribe:
		if pk.SubscribeValidate() != packets.CodeSuccess {
			return pk, nil
		}
	case packets.Unsubscribe:
		if pk.UnsubscribeValidate() != packets.CodeSuccess {
			return pk, nil
		}
	case packets.Pubrel, packets.Puback, packets.Pubrec, packets.Pubcomp:
	default:
		return pk, nil
	}
	h.release(cl) // a packet before that never reached OnPacketProcessed
	s := h.slotOf(cl)
	s.mu.Lock()
	s.reader.Store(true)
	s.id = pk.PacketID
	h.makeRoom(cl, pk)
	return pk, nil
}

func (h *gateHook) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, err error) {
	if cl.Net.Inline {
		return // a packet the waiter injects: it settles itself
	}
	h.release(cl)
	// A stored QoS 2 publish handed back to mochi (injectStored) was
	// counted when the reader processed it.
	if cc, ok := cl.Net.Conn.(*corkConn); ok && err == nil && !h.isTagged(pk) {
		cc.processed.Add(1)
	}
}
