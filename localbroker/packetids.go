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

// setAside takes the broker's unacknowledged message with the id of the
// client's QoS 1 publish pk out of the client's map, if there is one.
func setAside(cl *mqtt.Client, pk packets.Packet) (packets.Packet, bool) {
	if pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos != 1 || cl.Net.Inline {
		return packets.Packet{}, false
	}
	out, ok := cl.State.Inflight.Get(pk.PacketID)
	if !ok || out.FixedHeader.Type != packets.Publish {
		return packets.Packet{}, false
	}
	cl.State.Inflight.Delete(pk.PacketID)
	return out, true
}

// putBack returns a message setAside took, unless the slot was taken
// meanwhile.
func putBack(cl *mqtt.Client, out packets.Packet) {
	if _, taken := cl.State.Inflight.Get(out.PacketID); !taken {
		cl.State.Inflight.Set(out)
	}
}

// OnPacketRead sets aside the broker's message that a QoS 1 publish from
// the client would make mochi delete; OnPacketProcessed puts it back.
// Packets from one client are read and processed one at a time.
func (h *gateHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	// mochi skips OnPacketProcessed for a publish that fails validation:
	// nothing is set aside for one.
	if pk.FixedHeader.Type == packets.Publish && pk.PublishValidate(h.srv.Options.Capabilities.TopicAliasMaximum) != packets.CodeSuccess {
		return pk, nil
	}
	if out, ok := setAside(cl, pk); ok {
		h.asideMu.Lock()
		h.aside[cl] = out
		h.asideMu.Unlock()
	}
	return pk, nil
}

func (h *gateHook) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, err error) {
	h.asideMu.Lock()
	out, ok := h.aside[cl]
	if ok && out.PacketID == pk.PacketID {
		delete(h.aside, cl)
	} else {
		ok = false // another packet (an injected one): not this one's
	}
	h.asideMu.Unlock()
	if ok {
		putBack(cl, out)
	}
}
