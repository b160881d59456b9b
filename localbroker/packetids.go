package localbroker

import (
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

// restoreAside puts back what is set aside for cl, which is leaving or
// being taken over, but for what a packet being processed (whose
// acknowledgement holds the slot for a moment) set aside: settle does that.
func (h *gateHook) restoreAside(cl *mqtt.Client) {
	h.asideMu.Lock()
	defer h.asideMu.Unlock()
	for key, as := range h.aside {
		if key.cl != cl {
			continue
		}
		if res, ok := cl.State.Inflight.Get(key.id); ok && (res.FixedHeader.Type == packets.Puback || res.FixedHeader.Type == packets.Pubcomp) {
			continue
		}
		delete(h.aside, key)
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
		if nc, ok := h.srv.Clients.Get(cl.ID); ok && nc != cl && !nc.Properties.Clean && !(cl.Properties.Clean && cl.Properties.ProtocolVersion < 5) {
			put(nc)
		}
	}
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

// OnPacketRead makes room for the packet's flow; OnPacketProcessed
// settles. Packets from one client are read and processed one at a time.
func (h *gateHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	// mochi skips OnPacketProcessed for a publish that fails validation:
	// nothing is set aside for one.
	if pk.FixedHeader.Type != packets.Publish || pk.PublishValidate(h.srv.Options.Capabilities.TopicAliasMaximum) == packets.CodeSuccess {
		h.makeRoom(cl, pk)
	}
	return pk, nil
}

func (h *gateHook) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, err error) {
	switch pk.FixedHeader.Type {
	case packets.Publish, packets.Pubrel, packets.Puback, packets.Pubrec, packets.Pubcomp, packets.Subscribe, packets.Unsubscribe:
		h.settle(cl, pk.PacketID)
	}
}
