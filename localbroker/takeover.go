package localbroker

import (
	"bytes"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// takeoverHook closes two windows in mochi v2.7.9 in which a client id
// that connects again just as its last connection ends loses the new
// connection's deliveries. When a connection with a clean session ends,
// mochi checks that it was not taken over, cleans up, and then deletes the
// client id from its client list: a new connection with that id that
// registered in between is deleted instead, stays connected, and is sent
// nothing.
//
//   - The old connection had ended when the new one came (DISCONNECT, a
//     broken socket): the new one waits, before it takes the session over,
//     until the old one's clean-up has deleted it.
//   - The old connection was open: the new one takes it over, and the old
//     one's clean-up waits until mochi has marked it taken over, which
//     makes it leave the client list alone. (It may end by itself at the
//     same moment: the decision is made under a lock, against the state
//     the old connection had then.)
//
// Both waits are for code that runs without blocking, so they are short;
// they give up after takeoverWait rather than hang a connection.
//
// It closes three more, for sessions that are resumed:
//
//   - mochi writes the CONNACK and then resends the session's messages,
//     while publishers may already queue new ones on the connection's write
//     loop: a new message overtook an older one on the same topic, or even
//     the CONNACK. The write loop of a connection that is resuming a
//     session waits (in OnPacketEncode) until the resend is done; the
//     publishers do not. A message queued before the resend started is
//     resent, and its queued copy is then not sent again.
//   - mochi acknowledges a publish before it queues it for the subscribers
//     it looked up, one of which may be a connection whose session a new
//     connection is copying, or has copied: the message was set on the old
//     one, and lost. Such a message is queued on the new connection (see
//     rehome).
//   - mochi's session expiry, once a second, deletes an expired client id
//     from its client list after it looked it up: a connection that came
//     in between took the ending session over, and was then taken out of
//     the list (it was sent nothing). A connection whose session expires
//     within the second waits until mochi has ended it, and starts clean.
type takeoverHook struct {
	mqtt.HookBase
	srv *mqtt.Server

	mu         sync.Mutex
	takingOver map[*mqtt.Client]bool // open connections a new one is taking over

	// restore puts back a client's inflight entries set aside (see
	// packetids.go), before mochi copies them to the connection that
	// takes the session over.
	restore func(*mqtt.Client)

	// successor is, for a client whose session a connection has taken
	// over, that connection, for a while (successorKept).
	successor map[*mqtt.Client]*successor

	// queued tells the session store of a message rehome queued.
	queued func(*mqtt.Client, packets.Packet)

	log    *slog.Logger
	gaveUp atomic.Int64 // waits that ran out

	// For tests: deliveries that waited for a resend, messages rehomed,
	// connections that waited for mochi to end an expiring session,
	// queued messages not sent as they had been resent.
	heldBack, rehomed, expiryWaits, notResent atomic.Int64
	checking                                  atomic.Int64 // goroutines of OnQosPublish and OnQosDropped under way
}

const takeoverWait = 2 * time.Second

// successor is the connection that took a client's session over.
type successor struct {
	nc *mqtt.Client
	at time.Time
	// cleared is what mochi cleared from the old client once it had
	// copied the session (packet id: Created): each was copied, or
	// moved by OnQosDropped.
	cleared map[uint16]int64
}

// successorKept is how long a successor is remembered: longer than the
// goroutines OnQosPublish starts wait.
const successorKept = 10 * time.Second

// expiryWait bounds the wait for mochi's expiry loop, which runs once a
// second and ends a session in the first second after it expired.
const expiryWait = 3 * time.Second

func (h *takeoverHook) ID() string { return "fieldgate-takeover" }

func (h *takeoverHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnSessionEstablish, mqtt.OnSessionEstablished, mqtt.OnDisconnect,
		mqtt.OnPacketEncode, mqtt.OnQosPublish, mqtt.OnQosDropped}, []byte{b})
}

// OnSessionEstablish runs before mochi looks for the client id's last
// connection.
func (h *takeoverHook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	old, ok := h.srv.Clients.Get(cl.ID)
	if !ok || old == cl {
		return
	}
	if old.Closed() && !old.IsTakenOver() && h.expiresNow(old) {
		// mochi's loop may have looked the client id up already, and
		// would delete it after this connection has taken it.
		h.expiryWaits.Add(1)
		if !waitAtMost(expiryWait, func() bool { cur, ok := h.srv.Clients.Get(cl.ID); return !ok || cur != old }) {
			h.gaveUp.Add(1)
			h.warn("client id taken over: gave up waiting", "for", "its session's expiry", "client_id", cl.ID, "after", expiryWait)
		}
		if old, ok = h.srv.Clients.Get(cl.ID); !ok || old == cl {
			return
		}
	}
	if inherits(old, cl) {
		// The session will be resumed (mochi decides so after this hook,
		// as here): deliveries to the new connection wait until mochi has
		// resent the session's messages.
		if cc, ok := cl.Net.Conn.(*corkConn); ok {
			cc.resuming.Store(true)
		}
		h.mu.Lock()
		now := time.Now()
		for o, sc := range h.successor {
			if now.Sub(sc.at) > successorKept {
				delete(h.successor, o)
			}
		}
		h.successor[old] = &successor{nc: cl, at: now, cleared: map[uint16]int64{}}
		h.mu.Unlock()
	}
	if cc, ok := old.Net.Conn.(*corkConn); ok && !old.Closed() {
		// The client may have sent more on its last connection before it
		// made this one — a DISCONNECT, with or without a new session
		// expiry interval — that mochi has not read yet: the session is
		// taken over (or not) as that leaves it.
		h.wait(cl.ID, "the old connection to read what its client sent", func() bool { return old.Closed() || cc.caughtUp() })
	}
	if h.restore != nil {
		h.restore(old)
	}
	h.mu.Lock()
	if !old.Closed() {
		h.takingOver[old] = true
		h.mu.Unlock()
		return
	}
	h.mu.Unlock()
	if old.IsTakenOver() || !expiring(old) {
		return // a stored session, kept: taken over as mochi does
	}
	h.wait(cl.ID, "the old connection's clean-up", func() bool {
		cur, ok := h.srv.Clients.Get(cl.ID)
		return !ok || cur != old
	})
}

// expiresNow tells whether mochi's expiry loop may end cl's session in the
// next second: it ends one when its expiry second is past.
func (h *takeoverHook) expiresNow(cl *mqtt.Client) bool {
	stopped := cl.StopTime()
	if stopped == 0 {
		return false
	}
	expire := h.srv.Options.Capabilities.MaximumSessionExpiryInterval // as mochi's clearExpiredClients
	if cl.Properties.ProtocolVersion == 5 && cl.Properties.Props.SessionExpiryIntervalFlag {
		expire = cl.Properties.Props.SessionExpiryInterval
	}
	return stopped+int64(expire) <= time.Now().Unix()
}

// OnSessionEstablished runs once mochi has resent the session's messages,
// before it reads the client's packets.
func (h *takeoverHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	if cc, ok := cl.Net.Conn.(*corkConn); ok {
		cc.resuming.Store(false)
		cc.v5.Store(cl.Properties.ProtocolVersion == 5) // connected: a DISCONNECT may end it
	}
}

// resuming tells whether cl is a connection that resumes a session and
// has not yet been sent the session's messages.
func resuming(cl *mqtt.Client) bool {
	cc, ok := cl.Net.Conn.(*corkConn)
	return ok && cc.resuming.Load()
}

// OnPacketEncode holds a new message that the write loop of a connection
// resuming a session is about to send until mochi has resent the
// session's messages, for at most takeoverWait (resent ones have DUP set).
// One mochi queued before the resend began was resent: it is not sent
// again.
func (h *takeoverHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	cc, ok := cl.Net.Conn.(*corkConn)
	if !ok {
		return pk
	}
	if pk.FixedHeader.Type == packets.Disconnect {
		cc.disconnected.Store(true) // see corkConn.Close
	}
	if pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Dup {
		return pk
	}
	if cc.resuming.Load() {
		h.heldBack.Add(1)
		// A long resend to a slow client outlasts the wait: the message
		// then goes out among the resent ones, which is not worth a log
		// line each.
		if !waitUntil(func() bool { return !cc.resuming.Load() || cl.Closed() }) {
			h.gaveUp.Add(1)
		}
	}
	if cc.resentAlready(pk) {
		// mochi does not write a packet over its size limit, and its
		// write loop goes on with the next.
		pk.Mods.MaxSize = 1
		h.notResent.Add(1)
	}
	return pk
}

// OnQosPublish sees each message mochi queues for a client. One queued
// for a client whose session another connection has taken over (as mochi
// queues it on the client it looked up before) is checked once the new
// connection is under way, and moved to it if mochi did not copy it.
func (h *takeoverHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	if pk.FixedHeader.Type != packets.Publish {
		return
	}
	if cc, ok := cl.Net.Conn.(*corkConn); ok && cc.resuming.Load() {
		cc.noteResume(pk)
	}
	if !cl.IsTakenOver() || pk.FixedHeader.Dup {
		return
	}
	h.checking.Add(1)
	go h.moveLate(cl, pk)
}

// moveLate moves pk, queued for cl after another connection took cl's
// session over, to that connection, if mochi did not copy it. (Apart
// from OnQosPublish, so that pk is copied to the heap only then, not for
// every message queued: 1.7 KB each.)
func (h *takeoverHook) moveLate(cl *mqtt.Client, pk packets.Packet) {
	defer h.checking.Add(-1)
	var nc *mqtt.Client
	if !waitUntil(func() bool {
		cur, ok := h.srv.Clients.Get(cl.ID)
		nc = cur
		return ok && cur != cl
	}) || !inherits(cl, nc) {
		return // no connection took the session: it ended
	}
	h.mu.Lock()
	var cleared bool
	if sc := h.successor[cl]; sc != nil {
		created, ok := sc.cleared[pk.PacketID]
		cleared = ok && created == pk.Created
	}
	h.mu.Unlock()
	if cleared {
		// Copied, or moved by OnQosDropped; mochi may have set it on
		// cl once more since (out of send quota, it sets it again).
		return
	}
	h.wait(cl.ID, "the session's messages to be resent", func() bool { return !resuming(nc) || nc.Closed() })
	// By now mochi has copied the session and cleared cl's copy of
	// it: what cl still holds came after.
	cur, ok := cl.State.Inflight.Get(pk.PacketID)
	if !ok || !sameMessage(cur, pk) || !cl.State.Inflight.Delete(pk.PacketID) {
		return // copied with the session, or dropped (OnQosDropped)
	}
	atomic.AddInt64(&h.srv.Info.Inflight, -1)
	h.rehome(nc, pk)
}

// OnQosDropped sees the messages mochi clears from a client whose session
// it has just copied to a new connection: one that was set on the client
// after the copy is moved to the new connection.
func (h *takeoverHook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if !cl.IsTakenOver() || pk.FixedHeader.Type != packets.Publish {
		return
	}
	h.mu.Lock()
	sc := h.successor[cl]
	if sc != nil {
		sc.cleared[pk.PacketID] = pk.Created
	}
	h.mu.Unlock()
	if sc == nil {
		return
	}
	nc := sc.nc
	if cur, ok := nc.State.Inflight.Get(pk.PacketID); ok && sameMessage(cur, pk) {
		// Copied: mochi has counted it out of $SYS's messages in flight
		// as it cleared it, and counts it out again when it is
		// acknowledged.
		atomic.AddInt64(&h.srv.Info.Inflight, 1)
		return
	}
	// The new connection's CONNACK is not sent yet, so the client cannot
	// have acknowledged the copy: it was not copied.
	h.checking.Add(1)
	go func() {
		defer h.checking.Add(-1)
		h.wait(cl.ID, "the session's messages to be resent", func() bool { return !resuming(nc) || nc.Closed() })
		h.rehome(nc, pk)
	}()
}

// inherits tells whether nc, which took cl's client id over, resumed its
// session (mochi's rule in inheritClientSession).
func inherits(cl, nc *mqtt.Client) bool {
	return !nc.Properties.Clean && !(cl.Properties.Clean && cl.Properties.ProtocolVersion < 5)
}

// sameMessage tells whether a and b are one message (see message).
func sameMessage(a, b packets.Packet) bool {
	return a.FixedHeader.Type == b.FixedHeader.Type && messageOfPacket(a).is(b)
}

// rehome queues pk, which mochi queued on a client whose session nc has
// taken over, on nc, under a packet id of nc's, and sends it if nc is
// connected. It goes after what was queued on nc meanwhile.
func (h *takeoverHook) rehome(nc *mqtt.Client, pk packets.Packet) {
	id, err := nc.NextPacketID()
	if err != nil {
		h.warn("message for a session taken over dropped: no packet id free", "client_id", nc.ID, "topic", pk.TopicName)
		return
	}
	pk.PacketID = uint16(id)
	if !nc.State.Inflight.Set(pk) {
		return
	}
	h.rehomed.Add(1)
	atomic.AddInt64(&h.srv.Info.Inflight, 1)
	nc.State.Inflight.DecreaseSendQuota()
	if h.queued != nil {
		h.queued(nc, pk)
	}
	// Taken over in turn since: that connection copied it, or it is
	// moved again.
	h.OnQosPublish(nc, pk, pk.Created, 0)
	if !nc.Closed() {
		_ = nc.WritePacket(pk) // a failure ends the connection; the session keeps it
	}
}

// OnDisconnect runs just before mochi's clean-up of the connection: after
// it has been closed, so after any OnSessionEstablish that saw it open
// has said so.
func (h *takeoverHook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	h.mu.Lock()
	taken := h.takingOver[cl]
	delete(h.takingOver, cl)
	h.mu.Unlock()
	if taken && expire {
		h.wait(cl.ID, "the takeover", cl.IsTakenOver)
	}
}

// wait waits for cond, and logs when it gives up.
func (h *takeoverHook) wait(id, what string, cond func() bool) {
	if waitUntil(cond) {
		return
	}
	h.gaveUp.Add(1)
	h.warn("client id taken over: gave up waiting", "for", what, "client_id", id, "after", takeoverWait)
}

func (h *takeoverHook) warn(msg string, args ...any) {
	if h.log != nil {
		h.log.Warn(msg, args...)
	}
}

// expiring is mochi's test for a session that ends with its connection.
// cl must be closed: its properties are no longer written then.
func expiring(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval == 0
	}
	return cl.Properties.Clean
}

// waitUntil polls cond, first every 50 µs and backing off to 5 ms, for at
// most takeoverWait, and tells whether it held.
func waitUntil(cond func() bool) bool { return waitAtMost(takeoverWait, cond) }

// waitAtMost is waitUntil for at most d.
func waitAtMost(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for d := 50 * time.Microsecond; !cond(); d = min(2*d, 5*time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(d)
	}
	return true
}
