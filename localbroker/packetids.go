package localbroker

import (
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// mochi keeps a client's QoS packets of both directions in one map keyed
// by packet id. A QoS 1 PUBLISH from the client with id N makes it delete
// whatever it holds under N — also the broker's own unacknowledged
// message N to that client — although MQTT (3.1.1 §2.3.1) lets the two
// directions use the same ids at once. A device that takes commands and
// sends telemetry at QoS 1 would lose commands. So, while such a publish
// is processed, the broker's message N is set aside and put back after.
// (QoS 2 from the client needs the slot for its own state and is left to
// mochi.)

type asideKey struct {
	cl *mqtt.Client
	id uint16
}

// setAside takes the broker's unacknowledged message with the id of the
// client's QoS 1 publish pk out of the client's map, if there is one, and
// notes it until putBack.
func (h *gateHook) setAside(cl *mqtt.Client, pk packets.Packet) {
	if pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos != 1 || cl.Net.Inline {
		return
	}
	out, ok := cl.State.Inflight.Get(pk.PacketID)
	if !ok || out.FixedHeader.Type != packets.Publish {
		return
	}
	cl.State.Inflight.Delete(pk.PacketID)
	h.asideMu.Lock()
	h.aside[asideKey{cl, pk.PacketID}] = out
	h.asideMu.Unlock()
}

// putBack returns the message set aside for cl's packet id, unless the
// slot was taken meanwhile.
func (h *gateHook) putBack(cl *mqtt.Client, id uint16) {
	h.asideMu.Lock()
	out, ok := h.aside[asideKey{cl, id}]
	delete(h.aside, asideKey{cl, id})
	h.asideMu.Unlock()
	if !ok {
		return
	}
	if _, taken := cl.State.Inflight.Get(id); !taken {
		cl.State.Inflight.Set(out)
	}
}

// isAside tells whether the broker's message with id is set aside for cl:
// the session store then leaves its record alone, as the acknowledgement
// mochi makes and completes under that id is the client's publish's.
func (h *gateHook) isAside(cl *mqtt.Client, id uint16) bool {
	h.asideMu.Lock()
	defer h.asideMu.Unlock()
	_, ok := h.aside[asideKey{cl, id}]
	return ok
}

// OnPacketRead sets aside the broker's message that a QoS 1 publish from
// the client would make mochi delete; OnPacketProcessed puts it back.
// Packets from one client are read and processed one at a time.
func (h *gateHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	// mochi skips OnPacketProcessed for a publish that fails validation:
	// nothing is set aside for one.
	if pk.FixedHeader.Type == packets.Publish && pk.PublishValidate(h.srv.Options.Capabilities.TopicAliasMaximum) == packets.CodeSuccess {
		h.setAside(cl, pk)
	}
	return pk, nil
}

func (h *gateHook) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, err error) {
	if pk.FixedHeader.Type == packets.Publish {
		h.putBack(cl, pk.PacketID)
	}
}
