package localbroker

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	pahopk "github.com/eclipse/paho.mqtt.golang/packets"
	mqtt "github.com/mochi-mqtt/server/v2"
	mochipk "github.com/mochi-mqtt/server/v2/packets"
)

// The PUBACKs of publishes stored together go out in one write, in order,
// and the publishes are counted once in $SYS.
func TestStoredAcksCoalesced(t *testing.T) {
	const n = maxAcked
	stored := make(chan error) // closed: every publish is on disk at once
	var forwarded atomic.Int32
	all := make(chan struct{})
	b, err := New(&Options{
		Listeners: []Listener{{Address: "127.0.0.1:0"}},
		Security:  Security{AllowAnonymous: true},
		Forward: func(Message) (<-chan error, error) {
			if forwarded.Add(1) == n {
				close(all)
			}
			return stored, nil
		},
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	received0 := atomic.LoadInt64(&b.srv.Info.MessagesReceived)

	conn, err := net.Dial("tcp", b.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	cp := pahopk.NewControlPacket(pahopk.Connect).(*pahopk.ConnectPacket)
	cp.ProtocolName, cp.ProtocolVersion, cp.ClientIdentifier, cp.CleanSession, cp.Keepalive = "MQTT", 4, "dev", true, 30
	if err := cp.Write(conn); err != nil {
		t.Fatal(err)
	}
	if ack, err := pahopk.ReadPacket(conn); err != nil || ack.(*pahopk.ConnackPacket).ReturnCode != 0 {
		t.Fatalf("CONNACK: %v %v", ack, err)
	}
	var out bytes.Buffer
	for i := 1; i <= n; i++ {
		p := pahopk.NewControlPacket(pahopk.Publish).(*pahopk.PublishPacket)
		p.TopicName, p.Qos, p.MessageID, p.Payload = "sensors/t", 1, uint16(i), []byte("x")
		p.Write(&out)
	}
	if _, err := conn.Write(out.Bytes()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-all:
	case <-time.After(20 * time.Second):
		t.Fatalf("%d of %d publishes forwarded", forwarded.Load(), n)
	}
	// Forwarded, then queued on the client's waiter: all of them.
	cl, _ := b.srv.Clients.Get("dev")
	pollUntil(t, "the publishes to be queued", func() bool {
		b.gate.mu.Lock()
		w := b.gate.waiters[cl]
		b.gate.mu.Unlock()
		return w != nil && w.pending.Load() == n
	})
	close(stored)

	buf := make([]byte, 64<<10)
	got, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got != 4*n {
		t.Errorf("the first read after the commit has %d bytes, want the %d of %d PUBACKs", got, 4*n, n)
	}
	r := bytes.NewReader(buf[:got])
	for i := 1; r.Len() > 0; i++ {
		p, err := pahopk.ReadPacket(r)
		if err != nil {
			t.Fatal(err)
		}
		if a, ok := p.(*pahopk.PubackPacket); !ok || a.MessageID != uint16(i) {
			t.Fatalf("packet %d is %v, want the PUBACK of %d", i, p, i)
		}
	}
	if d := atomic.LoadInt64(&b.srv.Info.MessagesReceived) - received0; d != n {
		t.Errorf("$SYS messages received went up by %d, want %d", d, n)
	}
}

// recordingConn records its writes; a write fails once failAfter writes
// were made, if failAfter > 0.
type recordingConn struct {
	net.Conn
	mu        sync.Mutex
	writes    [][]byte
	failAfter int
	closed    bool
	wrote     chan struct{} // if set, told of each write
}

var errWrite = errors.New("connection reset by peer")

func (c *recordingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	if c.failAfter > 0 && len(c.writes) >= c.failAfter {
		return 0, errWrite
	}
	c.writes = append(c.writes, append([]byte(nil), p...))
	if c.wrote != nil {
		select {
		case c.wrote <- struct{}{}:
		default:
		}
	}
	return len(p), nil
}

func (c *recordingConn) SetWriteDeadline(time.Time) error { return nil }

func (c *recordingConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}

func (c *recordingConn) got() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var s []string
	for _, w := range c.writes {
		s = append(s, string(w))
	}
	return s
}

func TestCorkConn(t *testing.T) {
	t.Run("held until uncork, in order", func(t *testing.T) {
		rc := &recordingConn{}
		c := &corkConn{Conn: rc}
		c.Write([]byte("a"))
		c.cork()
		c.Write([]byte("b"))
		c.Write([]byte("c"))
		if got := rc.got(); len(got) != 1 {
			t.Fatalf("writes while corked reached the connection: %q", got)
		}
		c.uncork()
		c.Write([]byte("d"))
		if got, want := rc.got(), []string{"a", "bc", "d"}; !equal(got, want) {
			t.Errorf("writes %q, want %q", got, want)
		}
	})
	t.Run("a full cork is written at once", func(t *testing.T) {
		rc := &recordingConn{}
		c := &corkConn{Conn: rc}
		c.cork()
		big := bytes.Repeat([]byte("x"), corkMax)
		c.Write([]byte("a"))
		c.Write(big)
		if got := rc.got(); len(got) != 1 || len(got[0]) != corkMax+1 {
			t.Fatalf("%d writes reached the connection, want one of %d bytes", len(got), corkMax+1)
		}
		c.Write([]byte("b"))
		c.uncork()
		if got := rc.got(); len(got) != 2 || got[1] != "b" {
			t.Errorf("after uncork: %d writes, want the second to be %q", len(got), "b")
		}
	})
	t.Run("close sends what is held", func(t *testing.T) {
		rc := &recordingConn{}
		c := &corkConn{Conn: rc}
		c.cork()
		c.Write([]byte("disconnect"))
		c.Close()
		if got := rc.got(); !equal(got, []string{"disconnect"}) || !rc.closed {
			t.Errorf("writes %q closed %v, want the held bytes written, then closed", got, rc.closed)
		}
		c.cork()
		if _, err := c.Write([]byte("late")); err == nil {
			t.Error("a write after close was held")
		}
	})
	t.Run("a failed write of what was held fails every later write", func(t *testing.T) {
		rc := &recordingConn{failAfter: 1}
		c := &corkConn{Conn: rc}
		c.Write([]byte("a"))
		c.cork()
		c.Write([]byte("b"))
		c.uncork()
		if !rc.closed {
			t.Error("the connection was not closed after its write failed")
		}
		if _, err := c.Write([]byte("c")); !errors.Is(err, errWrite) {
			t.Errorf("write after the failure: %v, want %v", err, errWrite)
		}
		c.cork()
		if _, err := c.Write([]byte("d")); !errors.Is(err, errWrite) {
			t.Errorf("corked write after the failure: %v, want %v", err, errWrite)
		}
	})
	t.Run("nil: a WebSocket connection", func(t *testing.T) {
		var c *corkConn
		c.cork()
		c.uncork() // no panic
	})
}

// What mochi writes while its write loop has more queued for the client
// goes out with the next write, in order.
func TestCorkGathers(t *testing.T) {
	gathering := func() (*recordingConn, *corkConn, *atomic.Int32) {
		rc := &recordingConn{wrote: make(chan struct{}, 1)}
		var queued atomic.Int32
		return rc, &corkConn{Conn: rc, writesQueued: func() int { return int(queued.Load()) }}, &queued
	}
	t.Run("with the next write", func(t *testing.T) {
		rc, c, queued := gathering()
		queued.Store(2)
		c.Write([]byte("a"))
		queued.Store(1)
		c.Write([]byte("b"))
		if got := rc.got(); len(got) != 0 {
			t.Fatalf("written while more were queued: %q", got)
		}
		queued.Store(0)
		c.Write([]byte("c"))
		c.Write([]byte("d"))
		if got, want := rc.got(), []string{"abc", "d"}; !equal(got, want) {
			t.Errorf("writes %q, want %q", got, want)
		}
	})
	t.Run("a held message's marker takes what was gathered", func(t *testing.T) {
		rc, c, queued := gathering()
		c.Write(pingreqMarker) // nothing gathered: nothing to write
		queued.Store(1)
		c.Write([]byte("a"))
		c.Write(pingreqMarker)
		if got := rc.got(); len(got) != 0 {
			t.Fatalf("written while more were queued: %q", got)
		}
		queued.Store(0)
		if n, err := c.Write(pingreqMarker); n != len(pingreqMarker) || err != nil {
			t.Errorf("marker: %d, %v", n, err)
		}
		if got, want := rc.got(), []string{"a"}; !equal(got, want) {
			t.Errorf("writes %q, want %q: the marker is never written", got, want)
		}
	})
	t.Run("the flusher writes what no write took", func(t *testing.T) {
		rc, c, queued := gathering()
		queued.Store(1) // and then mochi refuses to write it
		c.Write([]byte("a"))
		select {
		case <-rc.wrote:
		case <-time.After(10 * time.Second):
			t.Fatal("what was gathered was never written")
		}
		if got, want := rc.got(), []string{"a"}; !equal(got, want) {
			t.Errorf("writes %q, want %q", got, want)
		}
	})
	t.Run("corked, the flusher leaves what waits to uncork", func(t *testing.T) {
		rc, c, queued := gathering()
		queued.Store(1)
		c.Write([]byte("a"))
		c.cork()
		c.Write([]byte("b"))
		c.flushGathered()
		if got := rc.got(); len(got) != 0 {
			t.Fatalf("written while corked: %q", got)
		}
		c.uncork()
		if got, want := rc.got(), []string{"ab"}; !equal(got, want) {
			t.Errorf("writes %q, want %q", got, want)
		}
	})
	t.Run("at most a TLS record's worth", func(t *testing.T) {
		rc, c, queued := gathering()
		queued.Store(5)
		c.Write([]byte("a"))
		c.Write(bytes.Repeat([]byte("x"), corkMax))
		if got := rc.got(); len(got) != 1 || len(got[0]) != corkMax+1 {
			t.Errorf("%d writes, want one of %d bytes", len(got), corkMax+1)
		}
	})
	t.Run("close sends what was gathered", func(t *testing.T) {
		rc, c, queued := gathering()
		queued.Store(1)
		c.Write([]byte("disconnect"))
		c.Close()
		if got := rc.got(); !equal(got, []string{"disconnect"}) || !rc.closed {
			t.Errorf("writes %q closed %v, want the gathered bytes written, then closed", got, rc.closed)
		}
	})
}

// gatherFor reads the length of mochi's queue for a client's write loop
// (an unexported field: this fails if mochi renames it).
func TestGatherQueued(t *testing.T) {
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := srv.AddHook(new(allowReads), nil); err != nil {
		t.Fatal(err)
	}
	server, client := net.Pipe()
	defer client.Close()
	cc := &corkConn{Conn: server}
	cl := srv.NewClient(cc, "t", "sub", false) // its write loop is not started
	cc.gatherFor(cl)
	if cc.writesQueued == nil {
		t.Fatal("mochi's queue for the write loop (ClientState.outbound) was not found")
	}
	srv.Clients.Add(cl)
	cl.State.Subscriptions.Add("t/#", mochipk.Subscription{Filter: "t/#"})
	srv.Topics.Subscribe(cl.ID, mochipk.Subscription{Filter: "t/#"})
	for i := range 3 {
		if got := cc.writesQueued(); got != i {
			t.Fatalf("queued %d, want %d", got, i)
		}
		if err := srv.Publish("t/x", []byte("x"), false, 0); err != nil {
			t.Fatal(err)
		}
	}
}

// allowReads lets every client read every topic.
type allowReads struct{ mqtt.HookBase }

func (allowReads) ID() string                                 { return "allow-reads" }
func (allowReads) Provides(b byte) bool                       { return b == mqtt.OnACLCheck }
func (allowReads) OnACLCheck(*mqtt.Client, string, bool) bool { return true }

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// unread sees what a client sent that no one has read yet, through the
// listener's wrappers, plain and TLS.
func TestUnread(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tl := newTrackedListener(ln, time.Minute, writeStall, func(net.Addr, int) {})
	defer tl.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := tl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	c := &corkConn{Conn: server}
	if n := unread(c.Conn); n != 0 {
		t.Errorf("unread before the client wrote: %d", n)
	}
	client.Write([]byte{0xe0, 0x00}) // a DISCONNECT
	deadline := time.Now().Add(wait)
	for unread(c.Conn) != 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond) // polling the kernel's count, with a deadline
	}
	if n := unread(c.Conn); n != 2 {
		t.Fatalf("unread after the client wrote 2 bytes: %d", n)
	}
	if n := unread(tls.Server(c.Conn, &tls.Config{})); n != 2 {
		t.Errorf("unread under TLS: %d, want 2", n)
	}
	if c.caughtUp() {
		t.Error("caught up with 2 bytes unread")
	}
	buf := make([]byte, 2)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	if n := unread(c.Conn); n != 0 {
		t.Errorf("unread after they were read: %d", n)
	}
}

// stuckConn is a client that stops reading: a write blocks until Close,
// as on a TCP connection whose window is zero.
type stuckConn struct {
	net.Conn
	writing chan struct{} // a write has begun
	once    sync.Once
	closed  chan struct{}
}

func (c *stuckConn) Write(p []byte) (int, error) {
	select {
	case c.writing <- struct{}{}:
	default:
	}
	<-c.closed
	return 0, net.ErrClosed
}

func (c *stuckConn) SetWriteDeadline(time.Time) error { return nil }
func (c *stuckConn) Close() error                     { c.once.Do(func() { close(c.closed) }); return nil }

// Closing a connection ends a write stuck on it, as closing a socket does:
// that is how mochi's Stop frees the goroutines that write to a client
// that stopped reading.
func TestCorkCloseEndsStuckWrite(t *testing.T) {
	sc := &stuckConn{writing: make(chan struct{}, 1), closed: make(chan struct{})}
	c := &corkConn{Conn: sc}
	c.cork()
	c.Write([]byte{0x40, 2, 0, 1}) // a PUBACK, held
	flushed := make(chan struct{})
	go func() { c.uncork(); close(flushed) }() // stuck in the write
	<-sc.writing
	wrote := make(chan error, 1)
	go func() { _, err := c.Write([]byte("publish")); wrote <- err }() // mochi's writer, behind it
	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	for name, ch := range map[string]<-chan struct{}{"Close": closed, "the stuck write": flushed} {
		select {
		case <-ch:
		case <-time.After(wait):
			t.Fatalf("%s did not return after Close", name)
		}
	}
	select {
	case <-wrote:
	case <-time.After(wait):
		t.Fatal("the write behind the stuck one did not return after Close")
	}
}

// Close sends what is held (the PUBACKs of a commit, and the DISCONNECT
// mochi writes just before it closes) when another writer merely holds wmu
// for a corked append: nothing is stuck.
func TestCorkCloseSendsHeldBehindAppend(t *testing.T) {
	dropped := 0
	const rounds = 200
	for range rounds {
		rc := &recordingConn{}
		c := &corkConn{Conn: rc}
		c.cork()
		c.Write([]byte("PUBACK 1;"))
		c.Write([]byte("DISCONNECT 0x8e;")) // mochi's DisconnectClient, then Stop -> Close

		c.mu.Lock() // the moment another writer (the waiter's next PUBACK, mochi's WriteLoop) is in its append
		appended := make(chan struct{})
		go func() { c.Write([]byte("PUBACK 2;")); close(appended) }()
		for c.wmu.TryLock() { // until that writer holds wmu, waiting for mu
			c.wmu.Unlock()
		}
		c.mu.Unlock()
		c.Close()
		<-appended
		if !strings.Contains(strings.Join(rc.got(), ""), "DISCONNECT") {
			dropped++
		}
	}
	if dropped > 0 {
		t.Errorf("Close dropped the held PUBACK and DISCONNECT in %d of %d rounds", dropped, rounds)
	}
}

// The framer finds the first packet mochi refuses as too large (remaining
// length + 1 over the maximum), however the stream is cut into reads, and
// gives up at a header mochi finds malformed.
func TestFramerFindsTooLarge(t *testing.T) {
	const max = 200
	small := []byte{0x30, 3, 0, 1, 'a'}                             // PUBLISH, 5 bytes
	atMax := append([]byte{0x30, 0xc7, 0x01}, make([]byte, 199)...) // remaining 199: 200 with mochi's +1
	over := []byte{0x30, 0xc8, 0x01}                                // remaining 200
	for _, tc := range []struct {
		name   string
		stream []byte
		want   bool
		before int // packets before the one too large
	}{
		{"small packets", bytes.Repeat(small, 10), false, 10},
		{"at the maximum", append(append([]byte{}, small...), atMax...), false, 2},
		{"over it after others", append(append(bytes.Repeat(small, 3), atMax...), over...), true, 4},
		{"over it, body not sent", over, true, 0},
		{"a huge length", []byte{0x30, 0xff, 0xff, 0xff, 0x7f}, true, 0},
		{"flags mochi refuses first", append([]byte{0x32 | 0x04, 0}, over...), false, 0},
		{"a length of five bytes", []byte{0x30, 0x80, 0x80, 0x80, 0x80, 0x01}, false, 0},
	} {
		for _, step := range []int{1, 2, 7, len(tc.stream)} {
			var f framer
			got := false
			for p := tc.stream; len(p) > 0; {
				n := min(step, len(p))
				got = f.feed(p[:n], max) || got
				p = p[n:]
			}
			if got != tc.want || f.before != tc.before {
				t.Errorf("%s, read %d bytes at a time: too large %v after %d packets, want %v after %d", tc.name, step, got, f.before, tc.want, tc.before)
			}
		}
	}
}

// However a stream is cut in two, the framer finds the same.
func FuzzFramer(f *testing.F) {
	f.Add([]byte{0x30, 3, 0, 1, 'a', 0x30, 0xc8, 0x01}, uint(4))
	f.Add([]byte{0x10, 0x80, 0x80, 0x01, 0, 0}, uint(2))
	f.Fuzz(func(t *testing.T, stream []byte, cut uint) {
		var whole, parts framer
		cut %= uint(len(stream) + 1)
		want := whole.feed(stream, 64)
		got := parts.feed(stream[:cut], 64)
		got = parts.feed(stream[cut:], 64) || got
		if got != want {
			t.Errorf("cut at %d: %v, whole: %v", cut, got, want)
		}
	})
}

// A client's packet over max_packet_size ends its connection with a
// DISCONNECT 0x95 on MQTT 5, as from Mosquitto, alone or after other
// packets in the same write. When the
// connection ends at a packet before it, the reason is that packet's, and
// a 3.1.1 client, which has no DISCONNECT from the broker, is closed.
func TestTooLargeDisconnect(t *testing.T) {
	b := interopBroker(t, Limits{MaxPacketSize: 256})
	big := &packets.Publish{Topic: "t/big", Payload: make([]byte, 300), Properties: &packets.Properties{}}
	small := &packets.Publish{Topic: "t/small", Payload: []byte("x"), Properties: &packets.Properties{}}
	for _, tc := range []struct {
		name string
		send []interface {
			WriteTo(io.Writer) (int64, error)
		}
		want int
	}{
		{"alone", []interface {
			WriteTo(io.Writer) (int64, error)
		}{big}, 0x95},
		{"after others", []interface {
			WriteTo(io.Writer) (int64, error)
		}{small, &packets.Pingreq{}, small, big}, 0x95},
		// mochi ends the connection at the wildcard topic with 0x90
		// (topic name invalid): it never reads the big one's header.
		{"after a refused one", []interface {
			WriteTo(io.Writer) (int64, error)
		}{
			&packets.Publish{Topic: "t/#", Payload: []byte("x"), Properties: &packets.Properties{}}, big}, 0x82},
	} {
		r := dial5(t, b)
		r.connect(connectPacket5("too-large", true, 0, nil))
		var buf bytes.Buffer
		for _, p := range tc.send {
			p.WriteTo(&buf)
		}
		if _, err := r.Write(buf.Bytes()); err != nil {
			t.Fatal(err)
		}
		got := r.disconnectCodes(nil)
		if len(got) != 1 || got[0] != tc.want {
			t.Errorf("%s: DISCONNECT reason codes %#x, want [%#x]", tc.name, got, tc.want)
		}
	}

	c := rawConnect311(t, b, "too-large-311")
	pub := pahopk.NewControlPacket(pahopk.Publish).(*pahopk.PublishPacket)
	pub.TopicName, pub.Payload = "t/big", make([]byte, 300)
	pub.Write(c) // the broker may close before it has all: an error here is no failure
	c.SetReadDeadline(time.Now().Add(wait))
	if n, err := c.Read(make([]byte, 16)); err == nil {
		t.Errorf("MQTT 3.1.1: got %d bytes, want the connection closed", n)
	}
}

// slowConn's writes wait for release, as a TLS record being sealed
// would; entered is told of a write begun, and closing of Close, or of
// the write deadline Close sets before it waits for a write.
type slowConn struct {
	net.Conn
	entered, closing chan struct{}
	release          chan struct{}
	mu               sync.Mutex
	closed           bool
	writes           []string
}

func (c *slowConn) Write(p []byte) (int, error) {
	c.entered <- struct{}{}
	<-c.release
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	c.writes = append(c.writes, string(p))
	return len(p), nil
}

func (c *slowConn) SetWriteDeadline(time.Time) error {
	c.closing <- struct{}{}
	return nil
}

func (c *slowConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	select {
	case c.closing <- struct{}{}:
	default:
	}
	return nil
}

// A DISCONNECT that was gathered, and that another write (the write
// loop's, or the flusher's) is writing, is not cut off by the Close that
// follows it (a review found Close closing under that write).
func TestCorkCloseWaitsForGatheredWrite(t *testing.T) {
	for _, by := range []string{"the next write", "the flusher"} {
		t.Run(by, func(t *testing.T) {
			sc := &slowConn{entered: make(chan struct{}, 1), closing: make(chan struct{}, 1), release: make(chan struct{})}
			var queued atomic.Int32
			c := &corkConn{Conn: sc, writesQueued: func() int { return int(queued.Load()) }}
			queued.Store(1)
			c.Write([]byte("DISCONNECT")) // gathered
			wrote := make(chan struct{})
			go func() {
				defer close(wrote)
				if by == "the next write" {
					queued.Store(0)
					c.Write([]byte("PUBLISH"))
				}
			}()
			<-sc.entered // being written
			closed := make(chan struct{})
			go func() { c.Close(); close(closed) }()
			<-sc.closing // Close closed, or waits for the write
			close(sc.release)
			<-wrote
			<-closed
			sc.mu.Lock()
			got := strings.Join(sc.writes, "")
			sc.mu.Unlock()
			if !strings.HasPrefix(got, "DISCONNECT") || !sc.closed {
				t.Errorf("written %q, closed %v: want the DISCONNECT written, then the connection closed", got, sc.closed)
			}
		})
	}
}

// Bursts of messages of every QoS, queued faster than the subscriber's
// write loop writes them (so its writes are gathered), reach it each
// once, in order, as published, and its own publishes are answered
// meanwhile.
func TestGatheredBurstsInOrder(t *testing.T) {
	t.Parallel()
	const bursts, n = 5, 600 // under the 1,000 a session holds
	b := interopBroker(t, Limits{})
	topic := topics5[0] + "/burst"
	r := flowSubscriber(t, b, "burst", 0, false, topic, 2)
	for burst := range bursts {
		for i := range n {
			m := Message{Topic: topic, QoS: byte(i % 3), Payload: fmt.Appendf(nil, "b%d-%d", burst, i)}
			if err := b.Publish(m); err != nil {
				t.Fatal(err)
			}
		}
		for i, p := range r.exchange(n) {
			if want := fmt.Sprintf("b%d-%d", burst, i); string(p.Payload) != want || p.QoS != byte(i%3) || p.Duplicate {
				t.Fatalf("got %q QoS %d DUP %v, want %q QoS %d", p.Payload, p.QoS, p.Duplicate, want, i%3)
			}
		}
		r.publish(uint16(burst+1), topic+"/own", 1, "x", nil)
		for {
			p := r.expectOneOf(packets.PUBREL, packets.PUBACK) // the burst's last PUBRELs, and the answer
			if p.Type == packets.PUBREL {
				r.send(&packets.Pubcomp{PacketID: p.PacketID(), Properties: &packets.Properties{}})
				continue
			}
			if id := p.PacketID(); id != uint16(burst+1) {
				t.Fatalf("PUBACK %d, want %d", id, burst+1)
			}
			break
		}
	}
}
