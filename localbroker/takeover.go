package localbroker

import (
	"bytes"
	"sync"
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
type takeoverHook struct {
	mqtt.HookBase
	srv *mqtt.Server

	mu         sync.Mutex
	takingOver map[*mqtt.Client]bool // open connections a new one is taking over

	// restore puts back a client's inflight entries set aside (see
	// packetids.go), before mochi copies them to the connection that
	// takes the session over.
	restore func(*mqtt.Client)
}

const takeoverWait = 2 * time.Second

func (h *takeoverHook) ID() string { return "fieldgate-takeover" }

func (h *takeoverHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnSessionEstablish, mqtt.OnDisconnect}, []byte{b})
}

// OnSessionEstablish runs before mochi looks for the client id's last
// connection.
func (h *takeoverHook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	old, ok := h.srv.Clients.Get(cl.ID)
	if !ok || old == cl {
		return
	}
	if cc, ok := old.Net.Conn.(*corkConn); ok && !old.Closed() {
		// The client may have sent more on its last connection before it
		// made this one — a DISCONNECT, with or without a new session
		// expiry interval — that mochi has not read yet: the session is
		// taken over (or not) as that leaves it.
		waitUntil(func() bool { return old.Closed() || cc.caughtUp() })
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
	waitUntil(func() bool {
		cur, ok := h.srv.Clients.Get(cl.ID)
		return !ok || cur != old
	})
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
		waitUntil(cl.IsTakenOver)
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
// most takeoverWait.
func waitUntil(cond func() bool) {
	deadline := time.Now().Add(takeoverWait)
	for d := 50 * time.Microsecond; !cond() && time.Now().Before(deadline); d = min(2*d, 5*time.Millisecond) {
		time.Sleep(d)
	}
}
