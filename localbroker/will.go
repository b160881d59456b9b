package localbroker

import (
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// OnWill applies the ACL (and the Authorizer) to a last will when it is
// about to be sent, as Mosquitto does: a will on a topic its client may
// not write is not delivered. (mochi sends wills without an ACL check.)
// The will's topic is marked denied, so that no subscriber's ACL check
// lets it through, and it is not retained.
func (h *gateHook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	// The client's publishes still waiting for the disk go first: sent
	// before them, the will would be overtaken by an older publish (a
	// retained "online" replacing the will's "offline"). The waiter needs
	// nothing of this goroutine; waitUntil gives up after takeoverWait.
	if h.pending(cl) {
		if h.willWaits != nil {
			h.willWaits()
		}
		if !waitUntil(func() bool { return !h.pending(cl) }) {
			h.log.Warn("last will sent before the client's earlier publishes were delivered", "client_id", cl.ID)
		}
	}
	allowed := h.aclAllows(cl, will.TopicName, true)
	if h.authz != nil {
		allowed = h.authz.AuthorizePublish(clientInfo(cl), will.TopicName, will.Payload, allowed)
	}
	if !allowed {
		if remote := remoteAddr(cl); h.refusals.allow(remote, "will "+will.TopicName) {
			h.log.Info("last will dropped: the client may not publish on its topic", "client_id", cl.ID, "topic", will.TopicName, "remote", remote)
		}
		will.TopicName = deniedPrefix + will.TopicName
		will.Retain = false
	}
	return will, nil
}

// OnWillSent hands a will that was sent to the forwarder, as any other
// publish, so that a route takes it upstream: a site device's "offline"
// reaches the central broker. Nobody waits for a will's acknowledgement.
func (h *gateHook) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	if h.forward == nil || isDenied(pk.TopicName) {
		return
	}
	if _, err := h.forward(Message{Topic: pk.TopicName, Payload: pk.Payload, QoS: pk.FixedHeader.Qos, Retain: pk.FixedHeader.Retain}); err != nil {
		if remote := remoteAddr(cl); h.refusals.allow(remote, "will: "+err.Error()) {
			h.log.Warn("last will not forwarded", "client_id", cl.ID, "topic", pk.TopicName, "err", err)
		}
	}
}
