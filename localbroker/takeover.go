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
type takeoverHook struct {
	mqtt.HookBase
	srv *mqtt.Server

	mu         sync.Mutex
	takingOver map[*mqtt.Client]bool // open connections a new one is taking over

	// restore puts back a client's inflight entries set aside (see
	// packetids.go), before mochi copies them to the connection that
	// takes the session over.
	restore func(*mqtt.Client)

	log    *slog.Logger
	gaveUp atomic.Int64 // waits that ran out
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
	if h.log != nil {
		h.log.Warn("client id taken over: gave up waiting", "for", what, "client_id", id, "after", takeoverWait)
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
func waitUntil(cond func() bool) bool {
	deadline := time.Now().Add(takeoverWait)
	for d := 50 * time.Microsecond; !cond(); d = min(2*d, 5*time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(d)
	}
	return true
}
