package localbroker

import (
	"bytes"
	"crypto/tls"
	"net"
	"reflect"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/sys/unix"
)

// corkConn lets the waiter that acknowledges a client's stored publishes
// hold its writes back while it works through what one commit stored, and
// send them in one write: for a busy device, hundreds of PUBACKs in one
// syscall (and one TLS record) instead of one each. Whatever else mochi
// writes to the client meanwhile is held too, in order. Nothing is held
// once the waiter has nothing ready.
//
// It also gathers what mochi writes while more packets wait in the
// client's queue (see gatherFor): a subscriber that gets a message stream
// gets the messages queued in a burst in one write, not one syscall each.
type corkConn struct {
	net.Conn

	// wmu orders the writes: every writer takes it first, so that what is
	// held goes out before anything written after it. Close does not take
	// it, so that closing ends a write stuck on a client that does not
	// read.
	wmu sync.Mutex

	mu      sync.Mutex // guards the fields below; never held while writing
	corked  bool
	held    []byte
	sending bool  // what was held is being written, by Write, uncork or the flusher
	err     error // of a write of what was held; every later write fails with it
	closed  bool

	reads   atomic.Uint64 // Reads begun
	inRead  atomic.Bool   // a Read is under way
	stalled atomic.Bool   // the reader waits for the disk, all it read processed

	// resuming is set while the connection resumes a session, until mochi
	// has resent its messages (see takeoverHook). Meanwhile resent holds
	// the messages resent, and queued those queued for the write loop, by
	// packet id.
	resuming       atomic.Bool
	resumeMu       sync.Mutex
	resent, queued map[uint16]message

	// A packet over the broker's maximum size ends the connection (mochi
	// reads its fixed header, and stops): MQTT 5 wants a DISCONNECT 0x95
	// first, which mochi does not send. Read follows the packets' fixed
	// headers in what it returns, and notes how many packets come before
	// the first one mochi will refuse. mochi reads a header only once it
	// has processed every packet before it: if it has (processed, counted
	// by gateHook, and the CONNECT), Close sends the DISCONNECT, to a
	// client that speaks MQTT 5 (v5, set once it is connected).
	maxPacket    uint32 // mochi's maximum packet size; 0: none
	frame        framer // the reader's alone
	tooLarge     atomic.Bool
	tooLargePast atomic.Int64 // packets before the one too large
	processed    atomic.Int64 // packets mochi processed without an error, after the CONNECT
	v5           atomic.Bool
	disconnected atomic.Bool // mochi has sent a DISCONNECT: the connection ends for its reason

	// window is max_inflight_messages, or the MQTT 5 client's receive
	// maximum, at work, and aliases the topic aliases given to it (see
	// flowHook); both set before the CONNACK; nil: none.
	window  *window
	aliases *aliases

	// writesQueued tells how many packets wait in mochi's queue for the
	// client's write loop, set before the CONNACK; nil: not known, and
	// nothing is gathered. flusher writes what was gathered if no write
	// came to take it (a packet mochi refused to write).
	writesQueued func() int
	flusher      *time.Timer
}

// message tells a message apart from another under the same packet id.
type message struct {
	created int64
	topic   string
	payload []byte
}

func messageOfPacket(pk packets.Packet) message {
	return message{pk.Created, pk.TopicName, pk.Payload}
}

func (m message) is(pk packets.Packet) bool {
	return m.created == pk.Created && m.topic == pk.TopicName && bytes.Equal(m.payload, pk.Payload)
}

// noteResume notes a message queued or resent while the connection
// resumes its session.
func (c *corkConn) noteResume(pk packets.Packet) {
	c.resumeMu.Lock()
	defer c.resumeMu.Unlock()
	m := &c.queued
	if pk.FixedHeader.Dup {
		m = &c.resent
	}
	if *m == nil {
		*m = map[uint16]message{}
	}
	(*m)[pk.PacketID] = messageOfPacket(pk)
}

// resentAlready tells whether pk, which the write loop is about to send,
// was queued while the session was resumed and has been resent since.
func (c *corkConn) resentAlready(pk packets.Packet) bool {
	c.resumeMu.Lock()
	defer c.resumeMu.Unlock()
	q, ok := c.queued[pk.PacketID]
	if !ok || !q.is(pk) {
		return false
	}
	delete(c.queued, pk.PacketID)
	r, ok := c.resent[pk.PacketID]
	if len(c.queued) == 0 {
		c.resent = nil
	}
	return ok && r.is(pk)
}

// corkMax is the most that is held: a TLS record's payload.
const corkMax = 16 << 10

// corkListener hands out its connections as corkConns, for a broker
// whose maximum packet size is maxPacket.
type corkListener struct {
	net.Listener
	maxPacket uint32
}

func (l corkListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &corkConn{Conn: c, maxPacket: l.maxPacket}, nil
}

func (c *corkConn) Write(p []byte) (int, error) {
	n := len(p)
	if isHeldMarker(p) {
		// A message held back or discarded (flowHook): nothing to write,
		// but what was gathered may have to go now.
		if c.writesQueued == nil {
			return n, nil
		}
		p = nil
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	switch {
	case c.err != nil:
		err := c.err
		c.mu.Unlock()
		return 0, err
	case c.closed: // not after what Close sends
		c.mu.Unlock()
		return 0, net.ErrClosed
	case c.corked:
		c.held = append(c.held, p...)
		var out []byte
		if len(c.held) >= corkMax {
			out = c.take()
		}
		c.mu.Unlock()
		return n, c.write(out)
	case c.writesQueued != nil && len(c.held)+len(p) < corkMax && c.writesQueued() > 0:
		// The write loop has more to write: this goes with the next.
		if len(p) > 0 {
			if len(c.held) == 0 {
				c.armFlusher()
			}
			c.held = append(c.held, p...)
		}
		c.mu.Unlock()
		return n, nil
	}
	out := c.take()
	c.mu.Unlock()
	if len(out) == 0 {
		if len(p) == 0 {
			return n, nil
		}
		return c.Conn.Write(p)
	}
	if c.flusher != nil {
		c.flusher.Stop()
	}
	return n, c.write(append(out, p...))
}

// gatherWait is how long what was gathered waits for a write that takes
// it, at most. Every packet taken from the queue comes to Write, but for
// one mochi refuses to write (too large for the client, which flowHook
// already discards): then the flusher writes what waits.
const gatherWait = 2 * time.Millisecond

// gatherFor lets c gather what mochi writes to cl while cl's write loop
// has more packets queued. mochi gathers writes itself the same way, but
// into a buffer that a packet it then refuses to write leaves unsent
// (until the client's next packet), and it would gather flowHook's
// markers among the packets. The queue's length is not exported: it is
// read with reflect, which may read an unexported channel's length. If
// mochi no longer has the field, nothing is gathered (TestGatherQueued
// fails).
func (c *corkConn) gatherFor(cl *mqtt.Client) {
	if c == nil {
		return
	}
	v := reflect.ValueOf(&cl.State).Elem().FieldByName("outbound")
	if v.Kind() != reflect.Chan {
		return
	}
	c.writesQueued = v.Len
}

// armFlusher starts the flusher, with wmu and mu held.
func (c *corkConn) armFlusher() {
	if c.flusher == nil {
		c.flusher = time.AfterFunc(gatherWait, c.flushGathered)
		return
	}
	c.flusher.Reset(gatherWait)
}

// flushGathered writes what was gathered, unless the waiter has corked
// the connection meanwhile: uncork writes it then.
func (c *corkConn) flushGathered() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	if c.corked || c.err != nil || c.closed {
		c.mu.Unlock()
		return
	}
	out := c.take()
	c.mu.Unlock()
	c.write(out)
}

// take takes what is held, to write it, with mu held: Close waits for
// the write to end before it closes the connection.
func (c *corkConn) take() []byte {
	out := c.held
	c.held = nil
	c.sending = len(out) > 0
	return out
}

// write writes what was held, with wmu held. A failure closes the
// connection (the reader ends, and mochi with it) and fails every later
// write.
func (c *corkConn) write(out []byte) error {
	if len(out) == 0 {
		return nil
	}
	_, err := c.Conn.Write(out)
	c.mu.Lock()
	c.sending = false
	if err != nil {
		c.err = err
	}
	c.mu.Unlock()
	if err != nil {
		c.Conn.Close()
	}
	return err
}

// cork holds writes back until uncork. A nil c (a connection mochi made,
// on a WebSocket listener) does nothing.
func (c *corkConn) cork() {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

// uncork writes what is held, and writes go out as they come again.
func (c *corkConn) uncork() {
	if c == nil {
		return
	}
	c.mu.Lock()
	corked := c.corked
	c.mu.Unlock()
	if !corked {
		return
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	c.corked = false
	if c.err != nil {
		c.held = nil
		c.mu.Unlock()
		return
	}
	out := c.take()
	c.mu.Unlock()
	c.write(out)
}

// Close sends what is held (mochi writes a DISCONNECT, then closes), taking
// at most a second if another write is stuck, and closes, which ends a
// write stuck on a client that does not read.
func (c *corkConn) Close() error {
	c.mu.Lock()
	out := c.held
	c.held, c.closed = nil, true
	failed, sending := c.err != nil, c.sending
	if c.flusher != nil {
		c.flusher.Stop()
	}
	c.mu.Unlock()
	if c.tooLarge.Load() && c.v5.Load() && !c.disconnected.Load() && c.processed.Load()+1 == c.tooLargePast.Load() {
		out = append(out, disconnectTooLarge...)
	}
	if (len(out) > 0 || sending) && !failed {
		// A write under way may only be appending, or be writing what
		// was held (a DISCONNECT gathered, say); one that is stuck
		// fails at the deadline.
		deadline := time.Now().Add(time.Second)
		c.Conn.SetWriteDeadline(deadline)
		for d := 10 * time.Microsecond; ; d = min(2*d, 10*time.Millisecond) {
			if c.wmu.TryLock() {
				if len(out) > 0 {
					c.Conn.Write(out)
				}
				c.wmu.Unlock()
				break
			}
			if time.Now().After(deadline) {
				break
			}
			time.Sleep(d)
		}
	}
	return c.Conn.Close()
}

func (c *corkConn) Read(p []byte) (int, error) {
	c.reads.Add(1)
	c.inRead.Store(true)
	n, err := c.Conn.Read(p)
	c.inRead.Store(false)
	if c.maxPacket > 0 && c.frame.feed(p[:n], c.maxPacket) {
		c.tooLargePast.Store(int64(c.frame.before))
		c.tooLarge.Store(true)
	}
	return n, err
}

// framer follows the packets in a client's byte stream by their fixed
// headers (a type byte and the remaining length, MQTT 5 §2.1), to find the
// first one mochi refuses as too large. It stops at that one, or at a
// header mochi would find malformed.
type framer struct {
	body    int    // bytes of the current packet still to come
	inLen   bool   // in the remaining length's bytes
	length  uint32 // the remaining length so far
	shift   uint
	before  int // the packets whose headers were complete
	stopped bool
}

// feed takes the next bytes of the stream, and tells whether a packet
// over max begins in them.
func (f *framer) feed(p []byte, max uint32) bool {
	for len(p) > 0 && !f.stopped {
		if f.body > 0 {
			n := min(f.body, len(p))
			f.body -= n
			p = p[n:]
			continue
		}
		b := p[0]
		p = p[1:]
		if !f.inLen {
			var fh packets.FixedHeader
			if fh.Decode(b) != nil {
				f.stopped = true // mochi ends the connection here, for another reason
				return false
			}
			f.inLen, f.length, f.shift = true, 0, 0
			continue
		}
		// As mochi's packets.DecodeLength: more than four bytes are
		// taken while the value stays in range.
		f.length |= uint32(b&0x7f) << f.shift
		if f.length > 268435455 {
			f.stopped = true // malformed: mochi ends the connection
			return false
		}
		if b&0x80 != 0 {
			f.shift += 7
			continue
		}
		f.inLen = false
		if f.length+1 > max { // mochi's test (Client.ReadFixedHeader)
			f.stopped = true
			return true
		}
		f.body = int(f.length)
		f.before++
	}
	return false
}

// disconnectTooLarge is an MQTT 5 DISCONNECT with reason code 0x95,
// packet too large.
var disconnectTooLarge = func() []byte {
	var buf bytes.Buffer
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: 5, ReasonCode: packets.ErrPacketTooLarge.Code}
	if err := pk.DisconnectEncode(&buf); err != nil {
		panic(err)
	}
	return buf.Bytes()
}()

// caughtUp tells whether mochi's reader has taken in all the client sent
// on c, or waits for the disk: it waits in Read, twice in a row on the
// same call, and the socket holds nothing unread. (mochi reads through a buffer, and calls Read only
// once that is empty; a TLS connection may hold plaintext of its own, which
// a Read returns at once.) It is true when it cannot tell.
func (c *corkConn) caughtUp() bool {
	seq := c.reads.Load()
	if c.stalled.Load() {
		// Behind a slow disk, which may take long: what the client sent
		// after is not waited for (unacknowledged, it sends it again).
		return true
	}
	if !c.inRead.Load() || unread(c.Conn) > 0 {
		return false
	}
	time.Sleep(100 * time.Microsecond)
	return c.inRead.Load() && c.reads.Load() == seq && unread(c.Conn) == 0
}

// stall says that the reader waits for the disk (true) or no longer does.
func (c *corkConn) stall(on bool) {
	if c != nil {
		c.stalled.Store(on)
	}
}

// unread is how many bytes the socket under c has received and no one has
// read yet; 0 when it cannot tell.
func unread(c net.Conn) int {
	for {
		switch v := c.(type) {
		case *tls.Conn:
			c = v.NetConn()
		case *trackedConn:
			c = v.Conn
		case *wsConn:
			c = v.Conn // what is unread there is a WebSocket frame or more
		case syscallConn:
			rc, err := v.SyscallConn()
			if err != nil {
				return 0
			}
			n := 0
			rc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
			return n
		default:
			return 0
		}
	}
}

type syscallConn interface {
	SyscallConn() (syscall.RawConn, error)
}

// tlsConn returns the TLS connection under a client's connection.
func tlsConn(c net.Conn) (*tls.Conn, bool) {
	if cc, ok := c.(*corkConn); ok {
		c = cc.Conn
	}
	if wc, ok := c.(*wsConn); ok {
		c = wc.Conn
	}
	tc, ok := c.(*tls.Conn)
	return tc, ok
}
