// Package localbroker is Fieldgate's embedded MQTT 3.1.1/5 broker for the
// site's own devices: mochi-mqtt/server v2 with our hooks around it.
//
// Every publish the broker accepts, from a network client or from the
// gateway's own sensors, is handed to Options.Forward before it is
// acknowledged; that is where the bridge takes what it sends upstream.
// When Forward says the message is being stored, the PUBACK waits until it
// is on disk, without holding up the client's other packets.
package localbroker

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// ErrRejected is returned by a Forward func that refuses a message (for
// example because the outbox is full). A QoS 1 publisher on MQTT 5 gets
// reason code 0x97 (quota exceeded) and the message is not delivered.
var ErrRejected = errors.New("localbroker: message rejected")

// Message is a publish accepted by the broker.
type Message struct {
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
}

// Listener is one network listener.
type Listener struct {
	// Address is host:port. The caller has checked that a plain-TCP
	// listener is on loopback, or that it was allowed elsewhere.
	Address string
	// TLS makes it a TLS listener.
	TLS *TLS
	// WebSocket serves MQTT over WebSocket (ws, or wss with TLS) instead of
	// plain MQTT. Client certificates on wss only verify: they do not name
	// the client.
	WebSocket bool
}

// Options configure a Broker.
type Options struct {
	Listeners []Listener
	Security  Security
	Limits    Limits
	// RetainedFile, if set, keeps retained messages across restarts in
	// this bbolt file.
	RetainedFile string
	// SessionFile, if set, keeps persistent sessions across restarts in
	// this bbolt file: the clients, their subscriptions, and the QoS 1 and
	// 2 messages in flight to them or queued while they were away.
	SessionFile string
	// PersistentClientExpiration, as Mosquitto's, ends the sessions that
	// set no expiry of their own (3.1.1 clean session false, MQTT 5
	// session expiry 0xFFFFFFFF) once their client has been away this
	// long. 0: they never expire.
	PersistentClientExpiration time.Duration
	// now is the clock sessions are expired by; nil: time.Now.
	now func() time.Time
	// Forward, if set, is called for every accepted publish, before the
	// publisher is acknowledged, except those sent with PublishLocal.
	// An error wrapping ErrRejected refuses the message (MQTT 5: reason
	// code 0x97). A non-nil channel means the message is being stored:
	// the publisher is acknowledged, and local subscribers get the
	// message, once the channel yields nil.
	Forward func(Message) (stored <-chan error, err error)
	// Authorizer, if set, has the last word on connections, publishes and
	// subscriptions (see Authorizer).
	Authorizer Authorizer
	// ConnectTimeout bounds how long a new connection may take to send
	// its CONNECT; 0 means 10 s.
	ConnectTimeout time.Duration
	// WriteStall is how long a client may read nothing while more than
	// 4 MiB waits for it before its connection is closed; 0 means 10 s.
	WriteStall time.Duration
}

func (o *Options) writeStall() time.Duration {
	if o.WriteStall > 0 {
		return o.WriteStall
	}
	return writeStall
}

func (o *Options) connectTimeout() time.Duration {
	if o.ConnectTimeout > 0 {
		return o.ConnectTimeout
	}
	return connectTimeout
}

// Broker is a running local broker.
type Broker struct {
	srv      *mqtt.Server
	log      *slog.Logger
	uplink   *mqtt.Client // inline identity for messages from the uplink
	gate     *gateHook
	takeover *takeoverHook
	flow     *flowHook
	retained *retainStore  // nil without Options.RetainedFile
	sessions *sessionStore // nil without Options.SessionFile
	addrs    []string
	tracked  map[string]*trackedListener // the TCP listeners by id, for Close
}

// noMessageExpiry is mochi's maximum message expiry set out of reach:
// about 68 years.
const noMessageExpiry = math.MaxInt32

// clientReadBuffer is the size of each client's read buffer.
const clientReadBuffer = 512

// uplinkClientID is the inline client that PublishLocal publishes as. Its
// messages are never forwarded, so a route in both directions cannot loop.
const uplinkClientID = "fieldgate-uplink"

// New starts a broker with o's listeners bound. Close stops it.
func New(o *Options, log *slog.Logger) (*Broker, error) {
	if o == nil {
		o = &Options{}
	}
	lim := o.Limits.withDefaults()
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClients = int64(lim.MaxClients)
	caps.MaximumPacketSize = lim.MaxPacketSize
	caps.ReceiveMaximum = lim.MaxInflight
	caps.MaximumClientWritesPending = lim.MaxQueued
	// Topic aliases an MQTT 5 client may use: Mosquitto's default
	// max_topic_alias (mochi's is 65535, each holding a topic).
	caps.TopicAliasMaximum = 10
	// QoS 1 and 2 messages held for a client, in flight or waiting,
	// connected or away: what its stored session holds at most.
	caps.MaximumInflight = uint16(min(lim.MaxQueued, math.MaxUint16))
	// mochi deletes every retained message, and every message queued for
	// a client, a day after it was published (its default maximum message
	// expiry), whatever the message asked for. Mosquitto keeps them until
	// they are replaced or their own MQTT 5 expiry passes, and so does
	// Fieldgate: a retained sensor status or site setting must not vanish
	// daily. (0 would mean "none" for publishes but would also give
	// QoS 2 acknowledgements an expiry of now.)
	caps.MaximumMessageExpiryInterval = noMessageExpiry
	// mochi copies a publish's properties, user properties included, into
	// the PUBACK or PUBREC it answers with; Mosquitto sends none. A stored
	// publish carries the broker's marker (see tagStored) there.
	caps.Compatibilities.NoInheritedPropertiesOnAck = true
	srv := mqtt.New(&mqtt.Options{
		Capabilities: caps,
		InlineClient: true,
		// Each client's read buffer, held while it is connected (mochi's
		// default is 2 KiB). A packet larger than it is read straight
		// into the packet; on TLS the connection holds the decrypted
		// record already, so the buffer only saves small copies; on plain
		// TCP it batches small packets per read call.
		ClientNetReadBufferSize: clientReadBuffer,
		// mochi gathers a client's packets in a buffer while more wait in
		// its queue, and sends the buffer with a later packet: one it
		// does not write (too large for the client, or a copy not sent
		// twice, see takeoverHook) left a CONNACK in it. Writes are
		// gathered below instead (trackedConn, corkConn).
		ClientNetWriteBufferSize: 1,
		// mochi logs every hook and listener it adds (Info), every client
		// that goes away (Warn, with no message) and every publish our
		// hook refuses (Error, with the whole packet): the gateway logs
		// what matters itself, rate-limited.
		Logger: slog.New(mochiFilter{log.Handler()}),
	})
	b := &Broker{srv: srv, log: log, tracked: map[string]*trackedListener{}}
	gate := &gateHook{log: log, forward: o.Forward, authz: o.Authorizer, srv: srv, marker: newMarker(), waiters: map[*mqtt.Client]*waiter{}, draining: map[string]*waiter{}, aside: map[asideKey]packets.Packet{},
		refusals: &refusalLog{now: time.Now}, tls: map[string]*tlsListener{},
		failures:     &authFailures{max: lim.MaxAuthFailures, now: time.Now},
		maxKeepalive: uint16(min(lim.MaxKeepalive/time.Second, 65535)),
		rates:        &publishRates{limit: rate.Limit(lim.MaxPublishRate), by: map[string]*rate.Limiter{}}}
	gate.sec.Store(&o.Security)
	b.gate = gate
	// The inline client for what the gateway delivers itself, made before
	// any client can connect.
	b.uplink = srv.NewClient(nil, mqtt.LocalListener, uplinkClientID, true)
	// mochi lets a message expire in a subscriber's queue only when its
	// publisher spoke MQTT 5; a stored publish is delivered through this
	// client.
	b.uplink.Properties.ProtocolVersion = 5
	gate.uplink = b.uplink
	b.takeover = &takeoverHook{srv: srv, takingOver: map[*mqtt.Client]bool{}, successor: map[*mqtt.Client]*successor{}, restore: gate.restoreAside, log: log}
	if err := srv.AddHook(b.takeover, nil); err != nil {
		return nil, err
	}
	if err := srv.AddHook(gate, nil); err != nil {
		return nil, fmt.Errorf("localbroker: %w", err)
	}
	if o.RetainedFile != "" {
		rs, err := openRetainStore(o.RetainedFile, log)
		if err != nil {
			return nil, err
		}
		b.retained = rs
		if err := srv.AddHook(rs, nil); err != nil {
			rs.close()
			return nil, fmt.Errorf("localbroker: %w", err)
		}
	}
	if o.SessionFile != "" {
		ss, err := openSessionStore(o.SessionFile, srv, sessionOptions{Expiry: o.PersistentClientExpiration, MaxQueued: int(caps.MaximumInflight), Now: o.now}, log)
		if err != nil {
			b.Close()
			return nil, err
		}
		ss.aside = gate.isAside
		b.takeover.queued = func(cl *mqtt.Client, pk packets.Packet) { ss.OnQosPublish(cl, pk, pk.Created, 0) }
		b.sessions = ss
		if err := srv.AddHook(ss, nil); err != nil {
			b.Close()
			return nil, fmt.Errorf("localbroker: %w", err)
		}
	}
	// Last: it sees each packet as the other hooks leave it.
	flow := &flowHook{srv: srv, maxInflight: lim.MaxInflightOut, maxQueued: caps.MaximumInflight, maxAliases: caps.TopicAliasMaximum, message: gate.brokersMessage, markUnsent: gate.markUnsent, drop: gate.dropBrokers}
	if b.sessions != nil {
		flow.dropped = b.sessions.OnQosDropped
	}
	b.flow = flow
	if err := srv.AddHook(flow, nil); err != nil {
		b.Close()
		return nil, fmt.Errorf("localbroker: %w", err)
	}
	for i, l := range o.Listeners {
		id := fmt.Sprintf("tcp%d", i)
		raw, err := net.Listen("tcp", l.Address)
		if err != nil {
			b.Close()
			return nil, fmt.Errorf("localbroker: listen on %s: %w", l.Address, err)
		}
		tracked := newTrackedListener(raw, o.connectTimeout(), o.writeStall(), func(remote net.Addr, pending int) {
			if gate.refusals.allow(remote.String(), "stalled") {
				log.Warn("client disconnected: it has stopped reading", "remote", remote.String(), "unsent_bytes", pending, "for", o.writeStall())
			}
		})
		b.tracked[id] = tracked
		var nl net.Listener = tracked
		if l.TLS != nil {
			tl := newTLSListener(nl, l.TLS, log, gate.refusals)
			gate.tls[id] = tl
			nl = tl
		}
		var ml listeners.Listener
		if l.WebSocket {
			byCert := func() bool { return false }
			if tl := gate.tls[id]; tl != nil {
				byCert = func() bool { o := tl.opts.Load(); return o.IdentityAsUsername || o.SubjectAsUsername }
			}
			ml = newWSListener(id, nl, l.TLS != nil, byCert, caps.MaximumPacketSize, o.connectTimeout(), log)
		} else {
			ml = listeners.NewNet(id, corkListener{nl, caps.MaximumPacketSize})
		}
		if err := srv.AddListener(ml); err != nil {
			nl.Close()
			b.Close()
			return nil, fmt.Errorf("localbroker: listen on %s: %w", l.Address, err)
		}
		b.addrs = append(b.addrs, nl.Addr().String())
	}
	if err := srv.Serve(); err != nil {
		b.Close()
		return nil, fmt.Errorf("localbroker: %w", err)
	}
	return b, nil
}

// Addrs returns the addresses the listeners are bound to (with the real
// port when the configuration asked for port 0).
func (b *Broker) Addrs() []string { return b.addrs }

// Clients returns how many clients are connected.
func (b *Broker) Clients() int64 { return atomic.LoadInt64(&b.srv.Info.ClientsConnected) }

// Publish publishes a message from the gateway itself (its sensors). It is
// handed to Forward like any client's publish.
func (b *Broker) Publish(m Message) error {
	return b.srv.Publish(m.Topic, m.Payload, m.Retain, m.QoS)
}

// PublishLocal delivers a message that came from the central broker to the
// local subscribers only: it is never handed to Forward.
func (b *Broker) PublishLocal(m Message) error {
	return b.srv.InjectPacket(b.uplink, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: m.QoS, Retain: m.Retain},
		TopicName:   m.Topic,
		Payload:     m.Payload,
		PacketID:    uint16(m.QoS),
	})
}

// Subscribe calls fn for every message published on topics matching
// filter. id must be unique per filter among the gateway's subscriptions.
func (b *Broker) Subscribe(filter string, id int, fn func(Message)) error {
	return b.srv.Subscribe(filter, id, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		fn(messageOf(pk))
	})
}

// Close disconnects every client, closes the listeners and saves the
// retained messages and the persistent sessions.
func (b *Broker) Close() error {
	// mochi's own Close lists each listener's clients with a read lock
	// that it takes twice (Clients.GetByListener calls Len): a client
	// leaving at that moment queues its write lock in between, and both
	// wait for ever. So the listeners are closed first with a closer that
	// takes the lock once; CloseAll then waits for every client's
	// goroutine to end, and mochi's Close finds nobody left to race with.
	for _, l := range b.tracked {
		l.Close() // no new connections from here on
	}
	b.srv.Listeners.CloseAll(b.disconnectClients)
	for _, l := range b.tracked {
		if !l.wait(5 * time.Second) {
			b.log.Warn("shutdown: connections still open after 5 s", "listener", l.Addr().String())
		}
	}
	err := b.srv.Close()
	if b.retained != nil {
		err = errors.Join(err, b.retained.close())
	}
	if b.sessions != nil {
		err = errors.Join(err, b.sessions.close())
	}
	return err
}

// disconnectClients disconnects the clients of one listener, for Close,
// then gives every connection still open on it (one that never sent
// CONNECT, or is in its TLS handshake: not a client mochi can disconnect)
// half a second: mochi's CloseAll waits for them all.
func (b *Broker) disconnectClients(listener string) {
	// One deadline for all: closing waits (a second at most) for what a
	// slow client has yet to take, and would wait that for each.
	if l, ok := b.tracked[listener]; ok {
		l.expire(2 * time.Second)
	}
	for _, cl := range b.srv.Clients.GetAll() {
		if cl.Net.Listener == listener && !cl.Closed() {
			b.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
	if l, ok := b.tracked[listener]; ok {
		l.expire(500 * time.Millisecond)
	}
}

// SetSecurity replaces the security files in use (on SIGHUP); clients
// already connected keep their session and are judged by the new ACL from
// their next packet.
func (b *Broker) SetSecurity(s Security) { b.gate.sec.Store(&s) }

// SetListenerTLS replaces the TLS material of listener i (on SIGHUP): new
// handshakes use it; connected clients stay, except those whose
// certificate the new CRL revokes, which are disconnected.
func (b *Broker) SetListenerTLS(i int, t *TLS) error {
	id := fmt.Sprintf("tcp%d", i)
	tl, ok := b.gate.tls[id]
	if !ok {
		return fmt.Errorf("localbroker: listener %d is not a TLS listener", i)
	}
	tl.opts.Store(t)
	if t.CRL == nil {
		return nil
	}
	for _, cl := range b.srv.Clients.GetAll() {
		tc, isTLS := tlsConn(cl.Net.Conn)
		if cl.Net.Listener != id || !isTLS {
			continue
		}
		if certs := tc.ConnectionState().PeerCertificates; len(certs) > 0 && revoked(t.CRL, certs[0]) {
			b.log.Warn("client disconnected: its certificate is revoked by the new CRL", "client_id", cl.ID, "serial", certs[0].SerialNumber, "remote", remoteAddr(cl))
			b.srv.DisconnectClient(cl, packets.ErrNotAuthorized)
		}
	}
	return nil
}

// gateHook decides who may connect and what they may do, and hands
// accepted publishes to the forwarder.
type gateHook struct {
	mqtt.HookBase
	log      *slog.Logger
	sec      atomic.Pointer[Security]
	refusals *refusalLog
	tls      map[string]*tlsListener // by listener id; set before Serve
	failures *authFailures
	rates    *publishRates
	// maxKeepalive bounds clients' keepalive, in seconds; 0: unbounded.
	maxKeepalive uint16
	forward      func(Message) (<-chan error, error)
	authz        Authorizer // nil: the files decide
	srv          *mqtt.Server

	// marker tags a publish injected again once stored, so that OnPublish
	// lets it through; it is random, so a client cannot forge it.
	marker packets.UserProperty

	mu      sync.Mutex
	waiters map[*mqtt.Client]*waiter // per client
	// draining holds, by client id, the waiter of a connection that has
	// ended with publishes still to acknowledge and deliver: the client's
	// next connection takes its publishes in their turn after them.
	draining map[string]*waiter

	asideMu sync.Mutex
	aside   map[asideKey]packets.Packet // see packetids.go
	slots   sync.Map                    // *mqtt.Client → *slot; see packetids.go
	uplink  *mqtt.Client                // the inline client PublishLocal uses

	willWaits func() // for tests: a will waits for its client's publishes
}

// waiter acknowledges a client's publishes whose acknowledgement waits
// for storage, and those that come after them, in order.
type waiter struct {
	q       *deferredQueue
	pending atomic.Int64  // queued, and not yet acknowledged and delivered
	unacked atomic.Int64  // of them, QoS 1 and 2 publishes not yet answered
	after   *waiter       // the client's last connection's, to finish first (h.mu)
	done    chan struct{} // closed when the waiter has done all
}

// finished tells whether w has done all it was given.
func (w *waiter) finished() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

// deferred is a publish whose acknowledgement waits its turn.
type deferred struct {
	pk      packets.Packet
	stored  <-chan error // nil: nothing to wait for
	refusal packets.Code // when not 0: acknowledged with it, not delivered
}

func newMarker() packets.UserProperty {
	b := make([]byte, 16)
	rand.Read(b)
	return packets.UserProperty{Key: "fieldgate-stored", Val: hex.EncodeToString(b)}
}

func (h *gateHook) ID() string { return "fieldgate-gate" }

func (h *gateHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnect, mqtt.OnSessionEstablish, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnPublish, mqtt.OnSubscribe, mqtt.OnWill, mqtt.OnWillSent, mqtt.OnDisconnect, mqtt.OnPacketEncode, mqtt.OnPacketRead, mqtt.OnPacketProcessed}, []byte{b})
}

// OnPacketEncode completes the CONNACK mochi sends, and makes sure the
// marker of stored publishes never leaves the broker.
//
// MQTT 5: mochi enforces a maximum packet size and takes topic aliases
// without saying so, and a client told neither may send packets that end
// its connection and may not use aliases [MQTT-3.2.2-17]; they are added.
//
// MQTT 3.1.1: the return code is kept to those 3.1.1 has (0 to 5). mochi
// sends some refusals with their MQTT 5 reason code, which a 3.1.1 client
// does not read as a refusal (paho.mqtt.golang takes 0x80 for success):
// an empty client id with cleansession 0 gets 0x80 where the spec asks
// for 0x02, identifier rejected [MQTT-3.1.3-8]; a malformed CONNECT gets
// 0x81 to 0x9f, here 0x01 (unacceptable protocol).
func (h *gateHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if len(pk.Properties.User) > 0 {
		pk.Properties.User = h.withoutMarker(pk.Properties.User)
	}
	if pk.FixedHeader.Type != packets.Connack {
		return pk
	}
	switch v := cl.Properties.ProtocolVersion; {
	case v == 5 && pk.ReasonCode < packets.ErrUnspecifiedError.Code:
		caps := h.srv.Options.Capabilities
		pk.Properties.MaximumPacketSize = caps.MaximumPacketSize
		pk.Properties.TopicAliasMaximum = caps.TopicAliasMaximum
	case v < 5 && pk.ReasonCode > packets.Err3NotAuthorized.Code:
		if pk.ReasonCode == packets.ErrUnspecifiedError.Code {
			pk.ReasonCode = packets.Err3ClientIdentifierNotValid.Code
		} else {
			pk.ReasonCode = packets.Err3UnsupportedProtocolVersion.Code
		}
	}
	return pk
}

// OnSessionEstablish, before the client's CONNACK: a connection that takes
// over one whose publishes still wait for the disk takes its own in their
// turn after them (see pending). The old connection's OnDisconnect can
// come much later (its reader may be waiting for the disk, or its will
// for its publishes).
func (h *gateHook) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	old, ok := h.srv.Clients.Get(cl.ID)
	if !ok || old == cl {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if w := h.waiters[old]; w != nil && !w.finished() {
		h.drain(cl.ID, w)
	}
}

// drain makes w the waiter that the client's next connection takes its
// turn after, unless one after w is that already. h.mu is held.
func (h *gateHook) drain(id string, w *waiter) {
	for x := h.draining[id]; x != nil; x = x.after {
		if x == w {
			return
		}
	}
	h.draining[id] = w
}

// OnConnect bounds the keepalive and logs a client id taken over by a new
// connection.
func (h *gateHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if cl.ID == mqtt.InlineClientId || cl.ID == uplinkClientID {
		// The gateway's own clients, inside the broker: a device taking
		// one of these ids over would stop the sensors' publishes or
		// what comes in from the central broker.
		if remote := remoteAddr(cl); h.refusals.allow(remote, "reserved client id") {
			h.log.Warn("client refused: the client id is the gateway's own", "client_id", cl.ID, "remote", remote)
		}
		h.srv.SendConnack(cl, packets.ErrClientIdentifierNotValid, false, nil)
		return packets.ErrClientIdentifierNotValid
	}
	if old, ok := h.srv.Clients.Get(cl.ID); ok && !old.Closed() {
		if remote := remoteAddr(cl); h.refusals.allow(remote, "takeover "+cl.ID) {
			h.log.Info("client id taken over: the older connection is closed", "client_id", cl.ID, "old_remote", remoteAddr(old), "new_remote", remote)
		}
	}
	if max := h.maxKeepalive; max > 0 && (cl.State.Keepalive == 0 || cl.State.Keepalive > max) && cl.Properties.ProtocolVersion == 5 {
		cl.State.Keepalive = max
		cl.State.ServerKeepalive = true // sent to the client in the CONNACK
	}
	return nil
}

func (h *gateHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	if max := h.maxKeepalive; max > 0 && (pk.Connect.Keepalive == 0 || pk.Connect.Keepalive > max) && cl.Properties.ProtocolVersion < 5 {
		if remote := remoteAddr(cl); h.refusals.allow(remote, "keepalive") {
			h.log.Info("client refused: keepalive above max_keepalive", "client_id", cl.ID, "keepalive", pk.Connect.Keepalive, "max", max, "remote", remote)
		}
		return false
	}
	host := hostOf(remoteAddr(cl))
	if h.failures.blocked(host) {
		if h.refusals.allow(host, "too many failed logins") {
			h.log.Warn("client refused: too many failed logins from this address in the last minute", "remote", remoteAddr(cl), "client_id", cl.ID)
		}
		return false
	}
	ok := h.authenticate(cl, pk)
	if h.authz != nil {
		if ok = h.authz.Authenticate(clientInfo(cl), pk.Connect.Password, ok); !ok {
			if remote := remoteAddr(cl); h.refusals.allow(remote, "authorizer") {
				h.log.Info("client refused by the authorizer", "client_id", cl.ID, "username", string(cl.Properties.Username), "remote", remote)
			}
		}
	}
	if !ok {
		h.failures.fail(host)
	}
	return ok
}

func (h *gateHook) authenticate(cl *mqtt.Client, pk packets.Packet) bool {
	sec := h.sec.Load()
	user := string(pk.Connect.Username)
	var reason string
	if !sec.allowedClientID(cl.ID) {
		if remote := remoteAddr(cl); h.refusals.allow(remote, "client id prefix") {
			h.log.Info("client refused", "reason", "client id does not start with one of clientid_prefixes", "client_id", cl.ID, "remote", remote)
		}
		return false
	}
	if tl, ok := h.tls[cl.Net.Listener]; ok {
		if ok, decided := h.certIdentity(cl, tl.opts.Load()); decided {
			return ok
		}
	}
	switch {
	case user == "" && sec.AllowAnonymous:
		return true
	case user == "":
		reason = "no username, and anonymous access is disabled"
	case sec.Passwords == nil:
		reason = "no password_file is configured"
	case sec.Passwords.Verify(user, pk.Connect.Password):
		return true
	default:
		reason = "wrong password or unknown user"
	}
	if remote := remoteAddr(cl); h.refusals.allow(remote, reason) {
		h.log.Info("client refused", "reason", reason, "username", user, "client_id", cl.ID, "remote", remote)
	}
	return false
}

// OnACLCheck is asked by mochi for a publish (write), for a subscription
// (not write, topic is the filter) and for each delivery (not write, topic
// is the message's). A subscription to a wildcard filter is allowed when a
// rule could let it read something (Mosquitto allows them all); each
// delivery is then checked as Mosquitto checks it.
func (h *gateHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	switch {
	case isDenied(topic):
		return false // refused by the Authorizer in OnSubscribe
	case write:
		// OnPublish decides: on the topic an alias stands for, with the
		// payload for the Authorizer, and acknowledged in turn with the
		// client's other publishes.
		return true
	}
	return h.aclAllows(cl, topic, write)
}

// aclAllows is the files' verdict: the ACL file, or without one whether
// the client logged in. A shared subscription is judged by its filter.
func (h *gateHook) aclAllows(cl *mqtt.Client, topic string, write bool) bool {
	if !write {
		topic = unshared(topic)
	}
	sec := h.sec.Load()
	user := string(cl.Properties.Username)
	if sec.ACL == nil {
		// Every topic for whoever got in, as Mosquitto without an acl_file.
		return user != "" || sec.AllowAnonymous
	}
	var ok bool
	switch {
	case write:
		ok, _ = sec.ACL.Check(user, cl.ID, topic, AccessWrite)
	case strings.ContainsAny(topic, "+#"):
		ok, _ = sec.ACL.CheckSubscribe(user, cl.ID, topic)
	default:
		ok, _ = sec.ACL.Check(user, cl.ID, topic, AccessRead)
	}
	return ok
}

// isTagged tells whether pk is a stored publish handed back to mochi
// (tagStored).
func (h *gateHook) isTagged(pk packets.Packet) bool {
	n := len(pk.Properties.User)
	return n > 1 && pk.Properties.User[n-1] == h.marker
}

func (h *gateHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if n := len(pk.Properties.User); h.isTagged(pk) {
		// Stored already (see tagStored): deliver, as from its publisher.
		pk.Origin = pk.Properties.User[n-2].Val
		pk.Properties.User = pk.Properties.User[:n-2]
		return pk, nil
	}
	if cl.Net.Inline {
		return h.forwardInline(cl, pk)
	}
	if !h.rates.allow(cl.ID) {
		if remote := remoteAddr(cl); h.refusals.allow(remote, "publish rate") {
			h.log.Warn("publish dropped: the client publishes faster than max_publish_rate", "client_id", cl.ID, "remote", remote)
		}
		return h.refuse(cl, pk, packets.ErrMessageRateTooHigh)
	}
	if h.overReceiveMaximum(cl, pk) {
		// As mochi does with a publish it handles itself, and Mosquitto:
		// the client did not keep to the receive maximum it was given.
		if remote := remoteAddr(cl); h.refusals.allow(remote, "receive maximum") {
			h.log.Warn("client disconnected: it sent more unacknowledged QoS 1 and 2 publishes than max_inflight", "client_id", cl.ID, "remote", remote)
		}
		h.srv.DisconnectClient(cl, packets.ErrReceiveMaximum)
		return pk, packets.ErrRejectPacket
	}
	if !deniedOnRead(cl, pk) && !h.mayPublish(cl, pk) {
		// As mochi answers a publish the ACL denies (MQTT 5: 0x87 for
		// QoS 1 and 2; QoS 0 is dropped).
		return h.refuse(cl, pk, packets.ErrNotAuthorized)
	}
	if h.forward == nil || cl.ID == uplinkClientID {
		return h.inTurn(cl, pk)
	}
	stored, err := h.forward(messageOf(pk))
	switch {
	case err == nil && (stored == nil || pk.FixedHeader.Qos == 0):
		// Nothing to wait for: QoS 0 has no acknowledgement (it is on
		// its way to the disk all the same).
		return h.inTurn(cl, pk)
	case err == nil:
		// mochi drops this copy now and the waiter acknowledges and
		// delivers it once it is on disk. The client's next packets are
		// read meanwhile. mochi does nothing more with this one's id: the
		// slot is free for the waiter.
		h.release(cl)
		h.deferAck(cl, deferred{pk: pk, stored: stored})
		return held(pk)
	}
	if remote := remoteAddr(cl); h.refusals.allow(remote, "publish: "+err.Error()) {
		h.log.Warn("publish refused", "client_id", cl.ID, "remote", remote, "topic", pk.TopicName, "err", err)
	}
	if errors.Is(err, ErrRejected) {
		return h.refuse(cl, pk, packets.ErrQuotaExceeded)
	}
	return pk, packets.ErrRejectPacket
}

// messageOf is the Message a publish carries.
func messageOf(pk packets.Packet) Message {
	return Message{Topic: pk.TopicName, Payload: pk.Payload, QoS: pk.FixedHeader.Qos, Retain: pk.FixedHeader.Retain}
}

// forwardInline forwards a publish of the gateway's own (its sensors),
// whose goroutine can wait for the disk.
func (h *gateHook) forwardInline(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if h.forward == nil || cl.ID == uplinkClientID {
		return pk, nil
	}
	stored, err := h.forward(messageOf(pk))
	if err == nil && stored != nil {
		err = <-stored
	}
	if err != nil {
		if h.refusals.allow("inline", "publish: "+err.Error()) {
			h.log.Warn("publish refused", "client_id", cl.ID, "topic", pk.TopicName, "err", err)
		}
		return pk, packets.ErrRejectPacket
	}
	return pk, nil
}

// mayPublish is the ACL's verdict, or the Authorizer's.
func (h *gateHook) mayPublish(cl *mqtt.Client, pk packets.Packet) bool {
	if h.authz != nil {
		return h.authorizePublish(cl, pk)
	}
	return h.aclAllows(cl, pk.TopicName, true)
}

// deniedOnRead tells whether pk is a publish whose refusal ends the
// connection (MQTT 3.1.1, QoS 1 or 2, which has no negative
// acknowledgement), which OnPacketRead decides: mochi sends the client's
// will when a connection ends there, as it must [MQTT-3.1.2-8], and not
// when it ends after OnPublish.
func deniedOnRead(cl *mqtt.Client, pk packets.Packet) bool {
	return cl.Properties.ProtocolVersion < 5 && pk.FixedHeader.Qos > 0
}

// inTurn lets mochi acknowledge and deliver a publish that is not stored
// (or is QoS 0), unless the client has stored publishes still to be
// acknowledged and delivered: MQTT wants the acknowledgements in the order
// of the publishes [MQTT-4.6.0-2] [MQTT-4.6.0-3], so the waiter takes this
// one in its turn.
func (h *gateHook) inTurn(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	// A QoS 0 publish waits its turn too: delivered before the client's
	// earlier publishes, a retained one would be replaced by an older one.
	if !h.pending(cl) {
		return pk, nil
	}
	h.release(cl)
	h.deferAck(cl, deferred{pk: pk})
	return held(pk)
}

// overReceiveMaximum tells whether pk is a QoS 1 or 2 publish of an MQTT 5
// client that has its receive maximum (max_inflight) of them waiting for
// their acknowledgement already. mochi counts only those it acknowledges
// itself, at once; those the waiter holds are counted here. MQTT 3.1.1
// has no receive maximum: such a client's reader waits instead when its
// queue is full (deferAck).
func (h *gateHook) overReceiveMaximum(cl *mqtt.Client, pk packets.Packet) bool {
	if cl.Properties.ProtocolVersion != 5 || pk.FixedHeader.Qos == 0 {
		return false
	}
	h.mu.Lock()
	w := h.waiters[cl]
	h.mu.Unlock()
	return w != nil && w.unacked.Load() >= int64(h.srv.Options.Capabilities.ReceiveMaximum)
}

// held is what OnPublish returns for a publish the waiter has taken: mochi
// neither acknowledges, retains nor delivers an ignored QoS 0 publish (no
// hook of ours provides OnPublished). ErrRejectPacket does the same, but
// mochi copies the packet (832 bytes) into the arguments of a debug log
// line for it: a quarter of what the gateway allocated while forwarding.
func held(pk packets.Packet) (packets.Packet, error) {
	pk.FixedHeader.Qos, pk.FixedHeader.Retain, pk.Ignore = 0, false, true
	return pk, nil
}

// refuse drops a publish, answering an MQTT 5 client's QoS 1 or 2 publish
// with code, in its turn. MQTT 3.1.1 has no negative acknowledgement.
func (h *gateHook) refuse(cl *mqtt.Client, pk packets.Packet, code packets.Code) (packets.Packet, error) {
	switch {
	case pk.FixedHeader.Qos == 0 || cl.Properties.ProtocolVersion < 5:
	case h.pending(cl):
		h.release(cl)
		h.deferAck(cl, deferred{pk: pk, refusal: code})
	default:
		cl.WritePacket(negativeAck(pk, code))
	}
	return pk, packets.ErrRejectPacket
}

// negativeAck is the PUBACK or PUBREC that refuses pk with code.
func negativeAck(pk packets.Packet, code packets.Code) packets.Packet {
	t := byte(packets.Puback)
	if pk.FixedHeader.Qos == 2 {
		t = packets.Pubrec
	}
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: t}, PacketID: pk.PacketID, ReasonCode: code.Code,
		Properties: packets.Properties{ReasonString: code.Reason}}
}

// certIdentity applies use_identity_as_username, use_subject_as_username
// and bind_client_id: the certificate names the client, and no password
// is asked. decided is false when the listener takes passwords instead.
func (h *gateHook) certIdentity(cl *mqtt.Client, o *TLS) (ok, decided bool) {
	if !o.IdentityAsUsername && !o.SubjectAsUsername {
		return false, false
	}
	var cert *x509.Certificate
	if tc, isTLS := tlsConn(cl.Net.Conn); isTLS {
		if cs := tc.ConnectionState(); len(cs.PeerCertificates) > 0 {
			cert = cs.PeerCertificates[0]
		}
	}
	reason := ""
	switch {
	case cert == nil:
		reason = "no client certificate, and the listener takes the username from it"
	case o.BindClientID && cl.ID != cert.Subject.CommonName:
		reason = fmt.Sprintf("client id %q is not the certificate's CN %q (bind_client_id)", cl.ID, cert.Subject.CommonName)
	}
	if reason != "" {
		if remote := remoteAddr(cl); h.refusals.allow(remote, reason) {
			h.log.Info("client refused", "reason", reason, "client_id", cl.ID, "remote", remote)
		}
		return false, true
	}
	name := cert.Subject.CommonName
	if o.SubjectAsUsername {
		name = cert.Subject.String()
	}
	cl.Properties.Username = []byte(name)
	return true, true
}

// deferAck queues d on its client's waiter, starting one if needed. It
// blocks when the client has many publishes waiting: that is the back
// pressure that keeps a flooding client from outrunning the disk.
func (h *gateHook) deferAck(cl *mqtt.Client, d deferred) {
	h.mu.Lock()
	w, ok := h.waiters[cl]
	if !ok {
		w = &waiter{q: newDeferredQueue(), done: make(chan struct{}), after: h.draining[cl.ID]}
		h.waiters[cl] = w
		go h.wait(cl, w)
	}
	w.pending.Add(1)
	if d.pk.FixedHeader.Qos > 0 {
		w.unacked.Add(1)
	}
	h.mu.Unlock()
	if !w.q.put(d) {
		// The disk is behind: the reader waits here, having processed
		// all it read before this publish (see corkConn.caughtUp).
		cc, _ := cl.Net.Conn.(*corkConn)
		cc.stall(true)
		for !w.q.put(d) {
			<-w.q.room
		}
		cc.stall(false)
	}
}

// pending tells whether cl has publishes queued on its waiter. Only the
// client's reader, which queues them, asks: once it has seen none, what
// it writes comes after their acknowledgements.
func (h *gateHook) pending(cl *mqtt.Client) bool {
	h.mu.Lock()
	w, last := h.waiters[cl], h.draining[cl.ID]
	h.mu.Unlock()
	if w != nil && w.pending.Load() > 0 {
		return true
	}
	// A connection that ended (taken over, say) with publishes waiting for
	// the disk: this one's come after them, or a retained value from
	// before the reconnection could replace a newer one.
	return last != nil && !last.finished()
}

// maxAcked is how many acknowledged publishes a waiter holds before it
// delivers them: the PUBACKs of that many go out in one write.
const maxAcked = 64

// wait acknowledges a client's queued publishes in the order they came,
// and then delivers them. The acknowledgements of publishes stored
// together go out in one write (see corkConn); the deliveries follow, so
// that a slow local subscriber holds none of them back.
func (h *gateHook) wait(cl *mqtt.Client, w *waiter) {
	cc, _ := cl.Net.Conn.(*corkConn) // nil on a WebSocket listener
	var acked []packets.Packet       // acknowledged, to deliver
	flush := func() {
		cc.uncork()
		for _, pk := range acked {
			h.deliverStored(cl.ID, pk)
			w.pending.Add(-1)
		}
		clear(acked)
		acked = acked[:0]
	}
	// acked grows on the heap as publishes come, and is let go while the
	// client sends nothing. (Made whole here it was 53 KB on the
	// waiter's stack: 64 KB of stack for each device that had published.)
	defer func() {
		close(w.done)
		h.mu.Lock()
		if h.draining[cl.ID] == w {
			delete(h.draining, cl.ID)
		}
		h.mu.Unlock()
	}()
	if a := w.after; a != nil {
		<-a.done
		h.mu.Lock()
		w.after = nil // finished: not kept for as long as w is
		h.mu.Unlock()
	}
	for {
		d, ok := w.q.take(false)
		if !ok {
			flush() // nothing more to acknowledge for now
			if cap(acked) > 4 {
				acked = nil
			}
			if d, ok = w.q.take(true); !ok {
				break // closed, and all taken
			}
		}
		var err error
		if d.stored != nil {
			select {
			case err = <-d.stored:
			default:
				flush()
				err = <-d.stored
			}
		}
		if len(acked) == maxAcked {
			flush() // what a waiter holds stays small
		}
		if d.pk.FixedHeader.Qos > 0 {
			// Answered below: counted off before the answer goes out,
			// or the client could send its next publish first.
			w.unacked.Add(-1)
		}
		h.answer(cl, cc, w, &d, err, &acked, flush)
	}
	flush()
	h.dropSlot(cl)
}

// answer acknowledges d, or refuses it, once its turn has come and it is
// stored (or failed to be: err). It is not part of wait: each packet it
// passes by value takes room in its caller's frame, and wait's frame
// stays on the stack while the waiter waits, too deep then for the
// collector to shrink the stack.
func (h *gateHook) answer(cl *mqtt.Client, cc *corkConn, w *waiter, d *deferred, err error, acked *[]packets.Packet, flush func()) {
	switch {
	case err != nil:
		h.log.Warn("publish not stored: not acknowledged", "client_id", cl.ID, "topic", d.pk.TopicName, "err", err)
		cc.cork()
		if cl.Properties.ProtocolVersion == 5 {
			cl.WritePacket(negativeAck(d.pk, packets.ErrUnspecifiedError))
		} else {
			// MQTT 3.1.1 has no negative acknowledgement: disconnect,
			// so the client sends the message again.
			h.srv.DisconnectClient(cl, packets.ErrUnspecifiedError)
		}
		w.pending.Add(-1)
	case d.refusal.Code != 0:
		cc.cork()
		cl.WritePacket(negativeAck(d.pk, d.refusal))
		w.pending.Add(-1)
	case d.pk.FixedHeader.Qos == 0:
		*acked = append(*acked, d.pk)
	case d.pk.FixedHeader.Qos == 1:
		cc.cork()
		// A stored publish is delivered whether or not its PUBACK
		// reached the client: it is forwarded. One that is not
		// stored is not, as mochi does: the client sends it again.
		if err := h.ackStored(cl, d.pk); err == nil || d.stored != nil {
			*acked = append(*acked, d.pk)
		} else {
			w.pending.Add(-1)
		}
	default:
		// QoS 2: mochi keeps the flow's state (PUBREC, then PUBREL
		// and PUBCOMP) in the client's inflight map, which the reader
		// uses too; see packetids.go.
		flush()
		h.injectStored(cl, d.pk, d.stored != nil)
		w.pending.Add(-1)
	}
}

// injectStored hands a QoS 2 publish whose turn has come to mochi again,
// as the client's, to acknowledge and deliver.
func (h *gateHook) injectStored(cl *mqtt.Client, pk packets.Packet, stored bool) {
	tagged := h.tagStored(cl.ID, pk)
	s := h.slotOf(cl)
	s.mu.Lock()
	h.makeRoom(cl, tagged)
	err := h.srv.InjectPacket(cl, tagged)
	h.settle(cl, tagged.PacketID)
	s.mu.Unlock()
	if err == nil {
		uncountInjected(h.srv)
		return
	}
	if !stored {
		return // as mochi: the client sends it again, and it is delivered then
	}
	// mochi delivers a QoS 2 publish only once its PUBREC is written: the
	// client has gone, but its message is stored and acknowledged for all
	// we know, and the site's subscribers get it as the central broker
	// does.
	if !cl.Closed() {
		h.log.Warn("stored publish: acknowledgement failed", "client_id", cl.ID, "err", err)
	}
	h.deliverStored(cl.ID, pk)
}

// ackStored acknowledges a QoS 1 publish whose turn has come. mochi has no
// state for it: the first pass returned before mochi's inflight map and
// receive quota saw it.
func (h *gateHook) ackStored(cl *mqtt.Client, pk packets.Packet) error {
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID}
	err := cl.WritePacket(ack)
	if err != nil && !cl.Closed() {
		h.log.Warn("stored publish: acknowledgement failed", "client_id", cl.ID, "err", err)
	}
	return err
}

// deliverStored hands a stored publish to the site's subscribers and the
// retained store through the gateway's own inline client, which is never
// forwarded, with its publisher's id as origin (a noLocal subscription of
// the publisher is not sent it).
func (h *gateHook) deliverStored(origin string, pk packets.Packet) {
	if !pk.FixedHeader.Retain && !h.subscribed(pk.TopicName) {
		// Forwarded, and nobody here to deliver it to: the usual case of
		// a sensor's reading, which mochi's whole publish path would take
		// to find that out.
		return
	}
	pk = h.tagStored(origin, pk)
	pk.FixedHeader.Dup = false
	if err := h.srv.InjectPacket(h.uplink, pk); err != nil {
		h.log.Warn("stored publish: not delivered locally", "client_id", origin, "topic", pk.TopicName, "err", err)
		return
	}
	uncountInjected(h.srv)
}

// subscribed tells whether any subscription here matches topic.
func (h *gateHook) subscribed(topic string) bool {
	s := h.srv.Topics.Subscribers(topic)
	return len(s.Subscriptions) > 0 || len(s.Shared) > 0 || len(s.InlineSubscriptions) > 0
}

// tagStored marks pk for OnPublish, which lets it through as stored
// already and takes its origin from it. The topic alias is dropped: it was
// resolved, and mochi would set it again on the client's table, undoing
// what the client may have mapped to it since.
func (h *gateHook) tagStored(origin string, pk packets.Packet) packets.Packet {
	pk.Properties.TopicAliasFlag, pk.Properties.TopicAlias = false, 0
	u := make([]packets.UserProperty, 0, len(pk.Properties.User)+2)
	pk.Properties.User = append(append(u, pk.Properties.User...), packets.UserProperty{Key: "fieldgate-origin", Val: origin}, h.marker)
	return pk
}

// withoutMarker returns u without the marker of stored publishes and the
// origin that goes with it.
func (h *gateHook) withoutMarker(u []packets.UserProperty) []packets.UserProperty {
	for i, p := range u {
		if p == h.marker {
			return append(append([]packets.UserProperty(nil), u[:max(i-1, 0)]...), u[i+1:]...)
		}
	}
	return u
}

// uncountInjected takes back what InjectPacket added to $SYS's received
// counts for a publish counted when it was read.
func uncountInjected(srv *mqtt.Server) {
	atomic.AddInt64(&srv.Info.PacketsReceived, -1)
	atomic.AddInt64(&srv.Info.MessagesReceived, -1)
}

// OnDisconnect ends the client's waiter once what it holds is done.
func (h *gateHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	h.rates.forget(cl.ID)
	h.release(cl) // the read loop is over
	h.restoreAside(cl)
	h.mu.Lock()
	defer h.mu.Unlock()
	if w, ok := h.waiters[cl]; ok {
		w.q.close() // the waiter drops the slot when it is done
		delete(h.waiters, cl)
		if !w.finished() {
			h.drain(cl.ID, w)
		}
	} else {
		h.dropSlot(cl)
	}
}

// unshared returns the filter of a shared subscription ("$share/GROUP/
// FILTER", the prefix in any case, as mochi takes it) without its prefix:
// the ACL judges that filter, as Mosquitto does.
func unshared(filter string) string {
	if len(filter) > len("$share/") && strings.EqualFold(filter[:len("$share/")], "$share/") {
		if _, f, ok := strings.Cut(filter[len("$share/"):], "/"); ok {
			return f
		}
	}
	return filter
}

func remoteAddr(cl *mqtt.Client) string {
	if cl.Net.Conn == nil {
		return "inline"
	}
	if a, ok := cl.Net.Conn.RemoteAddr().(*net.TCPAddr); ok {
		return a.String()
	}
	return cl.Net.Remote
}

// mochiFilter passes on mochi's errors but not its chatter.
type mochiFilter struct{ slog.Handler }

func (h mochiFilter) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelError && h.Handler.Enabled(ctx, l)
}

func (h mochiFilter) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "publish packet error" { // our own refusal, logged by us
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h mochiFilter) WithAttrs(as []slog.Attr) slog.Handler {
	return mochiFilter{h.Handler.WithAttrs(as)}
}

func (h mochiFilter) WithGroup(name string) slog.Handler {
	return mochiFilter{h.Handler.WithGroup(name)}
}
