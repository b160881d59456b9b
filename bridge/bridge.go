// Package bridge carries selected topics between the local broker and a
// central broker over mutually authenticated TLS.
//
// Messages on "out" routes are appended to the durable outbox (bridge/outbox)
// by Forward; the local broker acknowledges the publish once the append is
// on disk. The uplink drains the outbox in order per route, a window of
// MaxInflight messages at a time, and deletes a message only when the
// central broker has acknowledged it; after a reconnect it resends from the
// head, so delivery is at least once and in order. Messages on "in" routes
// are handed to Options.Deliver.
package bridge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
	"golang.org/x/time/rate"

	"github.com/fieldgate/fieldgate/bridge/outbox"
)

// ErrQueueFull is returned by Forward when a route's policy is Reject and
// the outbox is full.
var ErrQueueFull = errors.New("bridge: outbox full")

// Options configure a Bridge.
type Options struct {
	// Addresses of the central broker, tried in order: ssl://host:port.
	Addresses []string
	// TLS holds the device certificate and key and the CA that signed the
	// central broker. It must not be nil.
	TLS      *tls.Config
	ClientID string
	Routes   []Route
	// Outbox stores what the out routes forward. Required.
	Outbox *outbox.Outbox
	// Deliver publishes a message from the central broker on the local
	// broker. Required when a route carries messages in.
	Deliver func(topic string, payload []byte, qos byte, retain bool) error

	// StatusTopic, if set, carries a retained "online" once connected and
	// "offline" as the last will and on a clean shutdown.
	StatusTopic string
	// SequenceField, if set, is added to the first record of every SenML
	// pack sent upstream, carrying the message's outbox sequence number,
	// so that a consumer can drop the duplicates at-least-once delivery
	// makes. The uplink is MQTT 3.1.1, which has no user properties.
	SequenceField string

	// CheckpointTopic, if set, is where the bridge keeps, retained on the
	// central broker, how far each route has been sent: every MaxInflight
	// messages it publishes there the outbox's ID and, per route, the
	// sequence number of the last message sent before it. A broker that
	// holds the checkpoint has handled every message sent before it on
	// that connection (MQTT §4.6: a connection's packets are handled in
	// order). After a restart the bridge reads it back before it sends,
	// and skips what the central broker already has, so a crash resends
	// at most MaxInflight messages rather than all whose deletion was not
	// yet on disk. The bridge needs to publish to it and to
	// CheckpointTopic+"/fence", and to subscribe to CheckpointTopic+"/#".
	CheckpointTopic string
	// CheckpointWait bounds how long reading the checkpoint back waits
	// for the fence: a central broker whose ACL drops it silently
	// (Mosquitto's way) costs this much, once per start. Default 5s.
	CheckpointWait time.Duration

	// FailbackInterval is how often, while connected to another address
	// than the first, the bridge tries the addresses before it, and moves
	// back when one answers. Default 5m; negative: never.
	FailbackInterval time.Duration

	MaxInflight  int           // messages sent and not yet acknowledged; default 32
	MaxRate      float64       // messages per second to the central broker; 0: unlimited
	KeepAlive    time.Duration // default 30s
	ReconnectMin time.Duration // default 1s
	ReconnectMax time.Duration // default 2m
	// DrainTimeout bounds how long Run waits, once its context is done,
	// for the acknowledgements of messages in flight. Default 2s.
	DrainTimeout time.Duration
}

// Status is a snapshot of the uplink.
type Status struct {
	Connected   bool
	Address     string    // the central broker address connected to
	Attempts    uint64    // connection attempts so far
	Connections uint64    // attempts that succeeded
	LastError   string    // why the last attempt or connection failed
	Queued      int       // messages in the outbox
	Sent        uint64    // messages acknowledged by the central broker
	LastSent    time.Time // when the last of them was acknowledged
	Resent      uint64    // messages sent again after a connection was lost
	Received    uint64    // messages from the central broker delivered locally
	DroppedQoS0 uint64    // QoS 0 messages dropped while offline (qos0_offline = "drop")
	Reloads     uint64    // connections made with new TLS material (SetTLS)
	ReloadError string    // why the last new TLS material was refused; "" once one works
	Failbacks   uint64    // moves back to an earlier address
	// Resubscribes counts connections made for new routes (SetRoutes).
	Resubscribes uint64
}

// Bridge is the uplink to the central broker.
type Bridge struct {
	o   Options
	log *slog.Logger
	ob  *outbox.Outbox

	mu      sync.Mutex
	st      Status
	changed chan struct{} // closed and replaced on every change of st
	tls     *tls.Config   // current TLS material; SetTLS replaces it
	reload  chan struct{} // SetTLS was called
	resub   chan struct{} // SetRoutes changed what comes in
	routes  atomic.Pointer[[]Route]
	beat    atomic.Int64 // Unix nanoseconds of the Run loop's last turn

	// delivered is, per route, the last sequence number the central
	// broker is known to hold, every earlier one of the route with it:
	// from its acknowledgements and the checkpoint read at start. A new
	// connection sends from there, not from what the outbox has on disk,
	// whose deletions lag a commit behind. Used by Run's goroutine only.
	delivered map[string]uint64
	cpRead    bool         // the checkpoint was read back (or need not be)
	cpSuspect int          // connections in a row lost with checkpoints sent and none acknowledged
	cpOff     bool         // checkpoints turned off for this run (see checkpointVerdict)
	forged    atomic.Int64 // Unix nanoseconds of the last log of a local publish onto the checkpoint
}

// Heartbeat is when the bridge's loop last turned: it does at least every
// second, and a connection attempt may hold it for up to its timeout. A
// watchdog that sees it grow old knows the loop is stuck.
func (b *Bridge) Heartbeat() time.Time { return time.Unix(0, b.beat.Load()) }

func (b *Bridge) tick() { b.beat.Store(time.Now().UnixNano()) }

// New returns a Bridge; Run connects it.
func New(o Options, log *slog.Logger) (*Bridge, error) {
	if len(o.Addresses) == 0 {
		return nil, errors.New("bridge: no address")
	}
	if o.TLS == nil {
		return nil, errors.New("bridge: no TLS configuration")
	}
	if o.Outbox == nil {
		return nil, errors.New("bridge: no outbox")
	}
	if o.MaxInflight <= 0 {
		o.MaxInflight = 32
	}
	o.MaxInflight = min(o.MaxInflight, MaxWindow-1) // a checkpoint may come on top
	if o.KeepAlive <= 0 {
		o.KeepAlive = 30 * time.Second
	}
	if o.ReconnectMin <= 0 {
		o.ReconnectMin = time.Second
	}
	if o.ReconnectMax < o.ReconnectMin {
		o.ReconnectMax = max(2*time.Minute, o.ReconnectMin)
	}
	if o.CheckpointWait <= 0 {
		o.CheckpointWait = 5 * time.Second
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 2 * time.Second
	}
	routes, err := checkRoutes(o.Routes, o.Deliver != nil)
	if err != nil {
		return nil, err
	}
	if o.FailbackInterval == 0 {
		o.FailbackInterval = 5 * time.Minute
	}
	b := &Bridge{o: o, log: log, ob: o.Outbox, changed: make(chan struct{}), tls: o.TLS, reload: make(chan struct{}, 1), resub: make(chan struct{}, 1),
		delivered: map[string]uint64{}}
	b.routes.Store(&routes)
	return b, nil
}

// checkRoutes returns a copy of rs with their IDs set.
func checkRoutes(rs []Route, deliver bool) ([]Route, error) {
	rs = slices.Clone(rs)
	for i := range rs {
		r := &rs[i]
		if r.Direction&In != 0 && !deliver {
			return nil, errors.New("bridge: a route carries messages in but Deliver is nil")
		}
		if r.ID == "" {
			r.ID = r.defaultID()
		}
	}
	return rs, nil
}

// Routes returns the routes in use.
func (b *Bridge) Routes() []Route { return slices.Clone(*b.routes.Load()) }

// SetRoutes replaces the routes (on SIGHUP). Messages published from then
// on follow the new routes; messages already in the outbox keep the remote
// topic they were stored with, and are delivered as before. When what
// comes in from the central broker changes, the bridge makes a new
// connection with the new subscriptions before it leaves the current one.
func (b *Bridge) SetRoutes(rs []Route) error {
	routes, err := checkRoutes(rs, b.o.Deliver != nil)
	if err != nil {
		return err
	}
	old := b.routes.Swap(&routes)
	if !slices.Equal(inFilters(*old), inFilters(routes)) {
		b.signal(b.resub)
	}
	return nil
}

// inFilters lists what routes subscribe to on the central broker.
func inFilters(rs []Route) []string {
	var f []string
	for i := range rs {
		if rs[i].Direction&In != 0 {
			f = append(f, fmt.Sprintf("%s %d %s", rs[i].RemoteFilter(), rs[i].QoS, rs[i].LocalPrefix))
		}
	}
	return f
}

// Forward stores a local message for the central broker if an "out" route
// matches its topic; the first matching route decides. It returns nil, nil
// when no route takes the message or when it need not be waited for;
// otherwise a channel that yields nil once the message is on disk. Under
// the Reject policy a full outbox returns ErrQueueFull at once.
func (b *Bridge) Forward(topic string, payload []byte, qos byte, retain bool) (<-chan error, error) {
	routes := *b.routes.Load()
	for i := range routes {
		r := &routes[i]
		if r.Direction&Out == 0 || !r.MatchLocal(topic) {
			continue
		}
		if qos == 0 && r.DropQoS0Offline && !b.Status().Connected {
			b.update(func(st *Status) { st.DroppedQoS0++ })
			return nil, nil
		}
		remote := r.RemoteTopic(topic)
		if b.isCheckpoint(remote) {
			// A site device must not overwrite (or forge) the bridge's
			// checkpoint through a wide route.
			if now := time.Now(); now.UnixNano()-b.forged.Load() > int64(time.Minute) {
				b.forged.Store(now.UnixNano())
				b.log.Warn("a local publish maps onto the bridge's checkpoint topic: not forwarded", "topic", topic, "remote", remote)
			}
			return nil, nil
		}
		// The route's QoS is the uplink's: a reading published at QoS 0
		// on the local broker still travels upstream at least once.
		done, err := b.ob.Append(outbox.Message{Route: r.ID, Topic: remote, Payload: payload, QoS: r.QoS, Retain: retain}, r.Policy)
		if errors.Is(err, outbox.ErrFull) {
			return nil, fmt.Errorf("%w: %w", ErrQueueFull, err)
		}
		return done, err
	}
	return nil, nil
}

// Status returns a snapshot of the uplink.
func (b *Bridge) Status() Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.statusLocked()
}

func (b *Bridge) statusLocked() Status {
	st := b.st
	st.Queued = b.ob.Stats().Messages
	return st
}

// Wait blocks until cond holds for the status or ctx ends. The status is
// looked at again on every change of the uplink and every outbox commit.
func (b *Bridge) Wait(ctx context.Context, cond func(Status) bool) (Status, error) {
	for {
		b.mu.Lock()
		ch := b.changed
		st := b.statusLocked()
		b.mu.Unlock()
		obCh := b.ob.Changed()
		if cond(st) {
			return st, nil
		}
		select {
		case <-ch:
		case <-obCh:
		case <-ctx.Done():
			return st, ctx.Err()
		}
	}
}

func (b *Bridge) update(f func(*Status)) {
	b.mu.Lock()
	f(&b.st)
	close(b.changed)
	b.changed = make(chan struct{})
	b.mu.Unlock()
}

// Run connects to the central broker, reconnecting with backoff, and drains
// the outbox until ctx ends.
func (b *Bridge) Run(ctx context.Context) error {
	var lastLogged string
	var ceil, delay time.Duration
	var next *conn // a connection already made to replace the last one
	beat := time.NewTicker(time.Second)
	defer beat.Stop()
	for {
		b.tick()
		if ctx.Err() != nil {
			if next != nil {
				next.client.Disconnect(0)
			}
			return nil
		}
		// A new paho client for every connection: a Publish still blocked
		// on a dead connection's client can then never go out, late and
		// out of order, on the next one.
		c := next
		next = nil
		var err error
		if c == nil {
			select { // a new connection subscribes with the routes as they are
			case <-b.resub:
			default:
			}
			c = b.newConn(b.o.Addresses)
			err = b.connect(ctx, c)
		}
		if err != nil {
			c.client.Disconnect(0)
			b.update(func(st *Status) { st.Attempts++; st.LastError = err.Error() })
			if err.Error() != lastLogged { // the same failure every backoff is not news
				b.log.Warn("uplink connect failed", "addresses", b.o.Addresses, "err", err)
				lastLogged = err.Error()
			}
			ceil, delay = backoff(ceil, b.o.ReconnectMin, b.o.ReconnectMax)
			b.pause(ctx, beat, delay)
			continue
		}
		lastLogged = ""
		connectedAt := time.Now()
		addr := c.address()
		b.update(func(st *Status) {
			st.Attempts++
			st.Connections++
			st.Connected, st.Address, st.LastError = true, addr, ""
		})
		b.log.Info("uplink connected", "address", addr, "client_id", b.o.ClientID, "queued", b.ob.Stats().Messages)
		if !b.cpRead {
			err = b.readCheckpoint(ctx, c)
		}
		if err == nil {
			next, err = b.drain(ctx, c)
		}
		if next != nil { // moving to a better address, or to new TLS material
			c.client.Disconnect(250)
			continue
		}
		b.update(func(st *Status) {
			st.Connected = false
			if err != nil {
				st.LastError = err.Error()
			}
		})
		if err != nil {
			b.log.Warn("uplink lost", "err", err)
			go c.client.Disconnect(0) // may wait on paho's clean-up; nothing waits for it
			// A connection that held a minute starts the backoff again; one
			// lost sooner (a broker that takes connections and drops them)
			// does not. Either way the pause is jittered, so a site's
			// gateways do not come back in step after the broker restarts.
			if time.Since(connectedAt) >= time.Minute {
				ceil = 0
			}
			ceil, delay = backoff(max(ceil, b.o.ReconnectMin), b.o.ReconnectMin, b.o.ReconnectMax)
			b.pause(ctx, beat, delay)
			continue
		}
		if b.o.StatusTopic != "" { // a clean shutdown sends no will
			c.client.Publish(b.o.StatusTopic, 1, true, "offline").WaitTimeout(time.Second)
		}
		c.client.Disconnect(250)
		return nil
	}
}

// pause waits for delay, or until new TLS material comes (to be tried at
// once) or ctx ends, keeping the heartbeat.
func (b *Bridge) pause(ctx context.Context, beat *time.Ticker, delay time.Duration) {
	wake := time.After(delay)
	for {
		select {
		case <-beat.C:
			b.tick()
		case <-wake:
			return
		case <-b.reload:
			return
		case <-ctx.Done():
			return
		}
	}
}

// conn is one connection to the central broker.
type conn struct {
	client paho.Client
	lost   chan error // paho's report that the connection was lost
	socket atomic.Pointer[watchedConn]
	addr   atomic.Pointer[string] // the address dialled last
}

func (c *conn) address() string {
	if a := c.addr.Load(); a != nil {
		return *a
	}
	return ""
}

// newConn prepares a connection to the first of addrs that answers, with
// the current TLS material.
func (b *Bridge) newConn(addrs []string) *conn {
	c := &conn{lost: make(chan error, 1)}
	opts := paho.NewClientOptions()
	for _, a := range addrs {
		opts.AddBroker(a)
	}
	b.mu.Lock()
	tlsCfg := b.tls
	b.mu.Unlock()
	opts.SetClientID(b.o.ClientID).
		SetTLSConfig(tlsCfg).
		SetProtocolVersion(4).
		SetCleanSession(true). // our outbox, not paho's store, owns redelivery
		SetStore(noStore{}).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetKeepAlive(b.o.KeepAlive).
		SetPingTimeout(min(10*time.Second, b.o.KeepAlive)). // a stalled link is found within two keepalives
		SetConnectTimeout(15 * time.Second).
		// How long paho's own Publish (the birth message, the
		// checkpoint's fence) may block as the connection dies; the
		// socket bounds each send itself (watchedConn).
		SetWriteTimeout(30 * time.Second).
		// In order: what comes in on a route is published locally in the
		// order it came, and the checkpoint read at start can tell when
		// the retained one has been seen (see readCheckpoint).
		SetOrderMatters(true).
		SetCustomOpenConnectionFn(c.dial).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case c.lost <- err:
			default:
			}
		})
	if b.o.StatusTopic != "" {
		opts.SetWill(b.o.StatusTopic, "offline", 1, true)
	}
	c.client = paho.NewClient(opts)
	return c
}

// noStore is paho's store for a client whose every connection starts
// clean: what a connection leaves unacknowledged is sent again from the
// outbox, so paho keeps nothing (its default kept each publish in a map
// until its PUBACK, under a key it formats).
type noStore struct{}

func (noStore) Open()                             {}
func (noStore) Put(string, packets.ControlPacket) {}
func (noStore) Get(string) packets.ControlPacket  { return nil }
func (noStore) All() []string                     { return nil }
func (noStore) Del(string)                        {}
func (noStore) Close()                            {}
func (noStore) Reset()                            {}

// dial opens the TLS connection for paho, watched so that the drain knows
// the moment it fails, before paho does.
func (c *conn) dial(uri *url.URL, o paho.ClientOptions) (net.Conn, error) {
	cfg := o.TLSConfig.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName = uri.Hostname()
	}
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: o.ConnectTimeout}, Config: cfg}
	nc, err := d.Dial("tcp", uri.Host)
	if err != nil {
		return nil, err
	}
	w := newWatchedConn(nc)
	c.socket.Store(w)
	a := uri.String()
	c.addr.Store(&a)
	return w, nil
}

// dead reports whether a read or write on the socket has failed.
func (c *conn) dead() bool {
	w := c.socket.Load()
	return w == nil || w.dead.Load()
}

// watchedConn is the uplink's socket. It marks itself dead on the first
// failed read or write, and it coalesces writes: paho writes every packet
// on its own, one TLS record and one system call each, which at thousands
// of messages a second is most of the gateway's work. Writes are gathered
// and sent by one goroutine, as many as came while the last send was under
// way. Each Write is a whole packet, paho's or the drain's (see publish),
// and goes out whole. Reads take the PUBACKs of the drain's publishes out
// of what paho gets.
type watchedConn struct {
	net.Conn
	dead atomic.Bool

	acks   acks
	filter ackFilter // paho's reader's alone
	rbuf   []byte
	rerr   error

	mu      sync.Mutex
	cond    *sync.Cond // signalled when buf is taken, or on failure
	buf     []byte
	werr    error
	kick    chan struct{}
	stopped chan struct{} // closed when the writer has returned
	closing bool
}

// maxPending is how much the writer may hold unsent before Write blocks.
const maxPending = 256 << 10

// writeTimeout bounds one send, as paho's write deadline did.
const writeTimeout = 30 * time.Second

func newWatchedConn(nc net.Conn) *watchedConn {
	c := &watchedConn{Conn: nc, kick: make(chan struct{}, 1), stopped: make(chan struct{})}
	c.cond = sync.NewCond(&c.mu)
	go c.writer()
	return c
}

func (c *watchedConn) Read(p []byte) (int, error) {
	f := &c.filter
	for f.off == len(f.out) {
		if c.rerr != nil {
			return 0, c.rerr
		}
		if c.rbuf == nil {
			c.rbuf = make([]byte, 4096)
		}
		n, err := c.Conn.Read(c.rbuf)
		f.feed(c.rbuf[:n], c.acks.complete)
		if err != nil {
			c.dead.Store(true)
			c.rerr = err
		}
	}
	n := copy(p, f.out[f.off:])
	f.off += n
	return n, nil
}

func (c *watchedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	for len(c.buf) > maxPending && c.werr == nil {
		c.cond.Wait()
	}
	if c.werr != nil {
		err := c.werr
		c.mu.Unlock()
		return 0, err
	}
	c.buf = append(c.buf, p...)
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
	return len(p), nil
}

// SetWriteDeadline is ignored: the writer sets its own per send.
func (c *watchedConn) SetWriteDeadline(time.Time) error { return nil }

func (c *watchedConn) writer() {
	defer close(c.stopped)
	var spare []byte
	for {
		<-c.kick
		c.mu.Lock()
		out, closing := c.buf, c.closing
		c.buf = spare[:0]
		c.cond.Broadcast()
		c.mu.Unlock()
		if len(out) > 0 {
			c.Conn.SetWriteDeadline(time.Now().Add(writeTimeout))
			if _, err := c.Conn.Write(out); err != nil {
				c.dead.Store(true)
				c.mu.Lock()
				c.werr = err
				c.cond.Broadcast()
				c.mu.Unlock()
				c.Conn.Close() // paho's reader fails too, and reports the loss
				return
			}
		}
		spare = out
		if closing {
			return
		}
	}
}

// Close sends what is pending (paho's DISCONNECT, say), then closes.
func (c *watchedConn) Close() error {
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
	select {
	case <-c.stopped:
	case <-time.After(time.Second):
	}
	return c.Conn.Close()
}

func (b *Bridge) connect(ctx context.Context, c *conn) error {
	if err := wait(ctx, c.client.Connect()); err != nil {
		return err
	}
	routes := *b.routes.Load()
	for i := range routes {
		r := &routes[i]
		if r.Direction&In == 0 {
			continue
		}
		tok := c.client.Subscribe(r.RemoteFilter(), r.QoS, b.inbound(r))
		if err := wait(ctx, tok); err != nil {
			return fmt.Errorf("subscribe %s: %w", r.RemoteFilter(), err)
		}
		// A refusal is a SUBACK code, not an error, for paho: said here,
		// once a connection, and the uplink stays up for what goes out.
		// (Mosquitto 2.0 grants such a subscription and applies its ACL to
		// each delivery instead; EMQX, HiveMQ and AWS IoT Core refuse it.)
		if st, ok := tok.(*paho.SubscribeToken); ok && st.Result()[r.RemoteFilter()] == 0x80 {
			b.log.Error("the central broker refused the subscription of an in route (check its ACL): nothing comes in on it", "filter", r.RemoteFilter())
		}
	}
	if b.o.StatusTopic != "" {
		if err := wait(ctx, c.client.Publish(b.o.StatusTopic, 1, true, "online")); err != nil {
			return fmt.Errorf("publish %s: %w", b.o.StatusTopic, err)
		}
	}
	return nil
}

func wait(ctx context.Context, tok paho.Token) error {
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *Bridge) inbound(r *Route) paho.MessageHandler {
	return func(_ paho.Client, m paho.Message) {
		local, ok := r.LocalTopic(m.Topic())
		if !ok || b.isCheckpoint(m.Topic()) {
			return
		}
		if err := b.o.Deliver(local, m.Payload(), min(m.Qos(), r.QoS), m.Retained()); err != nil {
			b.log.Warn("inbound message not delivered", "topic", local, "err", err)
			return
		}
		b.update(func(st *Status) { st.Received++ })
	}
}

// inflight is a message handed to the publisher and not yet acknowledged.
type inflight struct {
	route string
	seq   uint64
	tok   token // nil until the publisher has written it
}

// publisher writes messages to the central broker, in order, and returns
// their tokens. A write can block (up to the write timeout) on a
// connection that is slow or dying, so it runs apart from the drain, which
// must notice the loss.
func (c *conn) publisher(in <-chan outbox.Message, out chan<- token) {
	defer close(out)
	w := c.socket.Load()
	for m := range in {
		if c.dead() { // w is nil too when there is none
			return
		}
		tok := w.publish(m)
		out <- tok
		if isDone(tok) && tok.Error() != nil {
			// It did not go out: nothing after it may, or a checkpoint
			// could name it.
			return
		}
	}
}

// drain sends the outbox, oldest first per route and taking the routes in
// turn, keeping up to MaxInflight messages unacknowledged. It returns an
// error when the connection is lost, nil when ctx ends, and a connection to
// move to when one to a better address, or with new TLS material, was made
// meanwhile.
func (b *Bridge) drain(ctx context.Context, c *conn) (*conn, error) {
	var limiter *rate.Limiter
	if b.o.MaxRate > 0 {
		limiter = rate.NewLimiter(rate.Limit(b.o.MaxRate), max(1, int(b.o.MaxRate/10)))
	}
	// One more than the window: a checkpoint may come on top of it.
	toSend := make(chan outbox.Message, b.o.MaxInflight+1)
	tokens := make(chan token, b.o.MaxInflight+1)
	go c.publisher(toSend, tokens)
	defer close(toSend)

	cursor := maps.Clone(b.delivered) // last seq read on this connection, per route
	sent := map[string]uint64{}       // last seq handed to the publisher on this connection, per route
	// Messages handed since the last checkpoint: a new connection starts
	// with one, which names what was acknowledged before it.
	sinceCP := b.o.MaxInflight
	cpSent, cpAcked := 0, 0                // checkpoints on this connection
	var cpLast time.Time                   // when the last one was handed to the publisher
	ahead := map[string][]outbox.Message{} // read and not yet sent, per route
	var window []inflight                  // in the order handed to the publisher
	handed := 0                            // how many of window have their token
	next := 0                              // route to look at first, so one route's backlog does not starve another
	// Look for a better connection meanwhile: the addresses before this
	// one, every FailbackInterval; or any, with new TLS material.
	better := make(chan *conn, 1)
	probeCtx, stopProbe := context.WithCancel(ctx)
	defer stopProbe()
	probing, reloadPending, resubPending := false, false, false

	lost := func(err error) (*conn, error) {
		b.checkpointVerdict(cpSent, cpAcked, time.Since(cpLast) < checkpointBlame)
		n := 0
		for _, w := range window[:handed] {
			if w.route != "" { // not a checkpoint
				n++
			}
		}
		if n > 0 {
			b.update(func(st *Status) { st.Resent += uint64(n) })
		}
		// A new connection with the same client id makes the broker drop
		// this one: take the new one if that is why.
		if probing {
			if nc := <-better; nc != nil {
				return nc, nil
			}
		}
		return nil, err
	}
	probe := func(addrs []string, why string) {
		probing = true
		go func() {
			nc := b.newConn(addrs)
			if err := b.connect(probeCtx, nc); err != nil {
				nc.client.Disconnect(0)
				switch why {
				case "reload":
					b.log.Error("new TLS material refused by the central broker; the uplink goes on with the current material", "err", err)
					b.update(func(st *Status) { st.ReloadError = err.Error() })
				case "routes":
					b.log.Error("a connection with the new routes' subscriptions failed; the uplink goes on with the current ones", "err", err)
				}
				better <- nil
				return
			}
			b.update(func(st *Status) {
				switch why {
				case "reload":
					st.Reloads++
					st.ReloadError = ""
				case "routes":
					st.Resubscribes++
				default:
					st.Failbacks++
				}
			})
			better <- nc
		}()
	}
	idx := -1
	for i, a := range b.o.Addresses {
		if sameAddress(a, c.address()) {
			idx = i
		}
	}
	var failback <-chan time.Time
	if idx > 0 && b.o.FailbackInterval > 0 {
		failback = time.After(b.o.FailbackInterval)
	}
	beat := time.NewTicker(time.Second)
	defer beat.Stop()

	for {
		changed := b.ob.Changed()
		// Fill the window, one message per route in turn, so that a route
		// with a backlog does not starve the others.
		var routes []string
		if len(window) < b.o.MaxInflight {
			routes = b.ob.Routes()
		}
		for len(window) < b.o.MaxInflight && !c.dead() && len(routes) > 0 {
			progress := false
			for i := 0; i < len(routes) && len(window) < b.o.MaxInflight; i++ {
				r := routes[(next+i)%len(routes)]
				if len(ahead[r]) == 0 {
					ms, err := b.ob.Read(r, cursor[r], b.o.MaxInflight)
					if err != nil {
						return lost(fmt.Errorf("outbox: %w", err))
					}
					if len(ms) == 0 {
						continue
					}
					ahead[r] = ms
					cursor[r] = ms[len(ms)-1].Seq
				}
				if b.o.CheckpointTopic != "" && !b.cpOff && sinceCP >= b.o.MaxInflight {
					if limiter != nil && limiter.Wait(ctx) != nil {
						break
					}
					toSend <- b.checkpoint(sent)
					window = append(window, inflight{}) // route "": a checkpoint
					sinceCP = 0
					cpSent++
					cpLast = time.Now()
				}
				m := ahead[r][0]
				ahead[r] = ahead[r][1:]
				if limiter != nil && limiter.Wait(ctx) != nil {
					break
				}
				if b.o.SequenceField != "" {
					m.Payload = WithSequence(m.Payload, b.o.SequenceField, m.Seq)
				}
				toSend <- m
				window = append(window, inflight{route: r, seq: m.Seq})
				sent[r] = m.Seq
				sinceCP++
				progress = true
			}
			next = (next + 1) % len(routes)
			if !progress {
				break
			}
		}

		var headDone <-chan struct{}
		if handed > 0 {
			headDone = window[0].tok.Done()
		}
		b.tick()
		select {
		case <-beat.C:
		case <-failback:
			if !probing {
				probe(b.o.Addresses[:idx], "failback")
			}
			failback = time.After(b.o.FailbackInterval)
		case <-b.reload:
			if probing {
				reloadPending = true // once the probe under way is done
			} else {
				probe(b.o.Addresses, "reload")
			}
		case <-b.resub:
			if probing {
				resubPending = true
			} else {
				probe(b.o.Addresses, "routes")
			}
		case nc := <-better:
			probing = false
			if nc != nil {
				b.log.Info("uplink moving to a new connection", "from", c.address(), "to", nc.address())
				b.settle(window[:handed])
				// New material or routes that came during the probe are
				// taken on the next turn, not dropped.
				if reloadPending {
					b.signal(b.reload)
				}
				if resubPending {
					b.signal(b.resub)
				}
				return nc, nil
			}
			if reloadPending {
				reloadPending = false
				probe(b.o.Addresses, "reload")
			} else if resubPending {
				resubPending = false
				probe(b.o.Addresses, "routes")
			}
		case tok, ok := <-tokens:
			// With every other token there already: a turn of the loop
			// for each costs more than its publish.
			for more := true; more; {
				if !ok {
					return lost(errors.New("connection lost"))
				}
				window[handed].tok = tok
				handed++
				select {
				case tok, ok = <-tokens:
				default:
					more = false
				}
			}
		case <-headDone:
			// Acknowledge every finished message at the head, by route.
			acks := map[string][]uint64{}
			n := 0
			for handed > 0 && isDone(window[0].tok) {
				w := window[0]
				if err := w.tok.Error(); err != nil {
					return lost(err)
				}
				window = window[1:]
				handed--
				if w.route == "" { // a checkpoint
					cpAcked++
					continue
				}
				acks[w.route] = append(acks[w.route], w.seq)
				b.delivered[w.route] = w.seq
				n++
			}
			for r, seqs := range acks {
				b.ob.Ack(r, seqs...)
			}
			b.update(func(st *Status) { st.Sent += uint64(n); st.LastSent = time.Now() })
		case <-changed:
		case err := <-c.lost:
			return lost(err)
		case <-ctx.Done():
			b.settle(window[:handed])
			return nil, nil
		}
	}
}

// SetTLS replaces the uplink's TLS material (on SIGHUP). The bridge makes a
// connection with it before it leaves the current one: material the central
// broker refuses is logged, and the uplink stays up.
func (b *Bridge) SetTLS(cfg *tls.Config) {
	b.mu.Lock()
	b.tls = cfg
	b.mu.Unlock()
	b.signal(b.reload)
}

// signal wakes whoever waits on ch, once.
func (b *Bridge) signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// sameAddress reports whether a configured address and a dialled URL name
// the same host and port.
func sameAddress(configured, dialled string) bool {
	a, err1 := url.Parse(configured)
	d, err2 := url.Parse(dialled)
	return err1 == nil && err2 == nil && a.Host == d.Host
}

// settle waits a little for the acknowledgements of messages in flight at
// shutdown, so they are not sent twice after the restart.
func (b *Bridge) settle(window []inflight) {
	deadline := time.After(b.o.DrainTimeout)
	n := 0
	for _, w := range window {
		select {
		case <-w.tok.Done():
		case <-deadline:
		}
		if !isDone(w.tok) || w.tok.Error() != nil {
			break
		}
		if w.route == "" { // a checkpoint
			continue
		}
		b.ob.Ack(w.route, w.seq)
		b.delivered[w.route] = w.seq
		n++
	}
	b.update(func(st *Status) { st.Sent += uint64(n) })
}

func isDone(t token) bool {
	select {
	case <-t.Done():
		return true
	default:
		return false
	}
}

// backoff doubles the ceiling between lo and hi and picks the next
// reconnect delay under it with full jitter, so a site's gateways do not
// reconnect in step after an outage.
func backoff(ceil, lo, hi time.Duration) (next, delay time.Duration) {
	next = min(max(2*ceil, lo), hi)
	return next, lo + rand.N(next-lo+1)
}
