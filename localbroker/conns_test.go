package localbroker

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func selfSigned(t *testing.T) tls.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "x"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// What is kept for a client that is slow when the broker closes (mochi's
// DISCONNECT, the TLS close_notify) reaches it, on TCP and on TLS, if it
// reads within a second. (tls.Conn.Close sets the write deadline to now
// after its close_notify; trackedConn lets what is kept go first.)
func TestLastWordsKeptOnClose(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		raw, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		tl := newTrackedListener(raw, time.Minute, time.Minute, func(net.Addr, int) {})
		var l net.Listener = tl
		cert := selfSigned(t)
		if useTLS {
			l = tls.NewListener(tl, &tls.Config{Certificates: []tls.Certificate{cert}})
		}
		d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
			return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		}}
		var cc net.Conn
		cc, err = d.Dial("tcp", raw.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		if useTLS {
			cc = tls.Client(cc, &tls.Config{InsecureSkipVerify: true})
		}
		accepted := make(chan net.Conn, 1)
		go func() {
			c, _ := l.Accept()
			if tc, ok := c.(*tls.Conn); ok {
				tc.Handshake()
			}
			accepted <- c
		}()
		if useTLS {
			if err := cc.(*tls.Conn).Handshake(); err != nil {
				t.Fatal(err)
			}
		}
		sc := <-accepted
		// The client reads nothing for now: 1 MiB fills the sockets and
		// leaves the rest with the writer.
		tc := func() *trackedConn {
			tl.mu.Lock()
			defer tl.mu.Unlock()
			for c := range tl.conns {
				return c
			}
			return nil
		}()
		tc.Conn.(*net.TCPConn).SetWriteBuffer(4096)
		body := bytes.Repeat([]byte("x"), 1<<20)
		if _, err := sc.Write(body); err != nil {
			t.Fatal(err)
		}
		tc.mu.Lock()
		writing := tc.writing
		tc.mu.Unlock()
		got := make(chan []byte, 1)
		go func() { b, _ := io.ReadAll(cc); got <- b }() // the client reads from now on
		sc.Write([]byte("LAST WORDS"))
		sc.Close()
		b := <-got
		t.Logf("TLS %v: writer running before close: %v; client got %d of %d bytes, last words: %v", useTLS, writing, len(b), len(body)+10, bytes.HasSuffix(b, []byte("LAST WORDS")))
		if !bytes.HasSuffix(b, []byte("LAST WORDS")) {
			t.Errorf("TLS %v: the last words are lost", useTLS)
		}
		cc.Close()
		raw.Close()
	}
}

// A client that reads steadily, but slowly (about 100 KB/s, less than the
// writer sent at once), is not closed as one that has stopped reading: the
// stall timeout counts from the last bytes it took.
func TestSlowReaderNotStalled(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	stalled := make(chan int, 1)
	tl := newTrackedListener(raw, time.Minute, 300*time.Millisecond, func(_ net.Addr, n int) { stalled <- n })
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	cc, err := d.Dial("tcp", raw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	sc, err := tl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	sc.(*trackedConn).Conn.(*net.TCPConn).SetWriteBuffer(4096)
	var read int
	readerDone := make(chan struct{})
	go func() { // 1 KiB every 10 ms: about 100 KB/s, never a pause
		defer close(readerDone)
		buf := make([]byte, 1024)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for range tick.C {
			n, err := io.ReadFull(cc, buf)
			read += n
			if err != nil {
				return
			}
		}
	}()
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	start := time.Now()
	var werr error
	for i := 0; i < 80 && werr == nil; i++ { // 5 MiB
		_, werr = sc.Write(chunk)
	}
	sc.Close()
	<-readerDone
	select {
	case n := <-stalled:
		t.Errorf("closed as stalled after %v (%d bytes kept) while the client read %d bytes at a steady pace: %v", time.Since(start).Round(time.Millisecond), n, read, werr)
	default:
	}
}

// inCondWait tells whether a goroutine waits in trackedConn.Write for the
// writer (more than pendingMax is kept).
func inCondWait() bool {
	buf := make([]byte, 1<<20)
	s := string(buf[:runtime.Stack(buf, true)])
	for _, g := range strings.Split(s, "\n\n") {
		if strings.Contains(g, "sync.(*Cond).Wait") && strings.Contains(g, "(*trackedConn).Write") {
			return true
		}
	}
	return false
}

// gatedConn is a socket that takes 4 KiB (a pipe) and then nothing until
// the test opens its gate: after that it takes all, as a client that
// reads as fast as it can. Both trackedConn's ways of writing, the one
// that does not wait (RawConn) and the writer's, go through it, and what
// it takes is recorded in order.
type gatedConn struct {
	net.Conn // addresses only
	gate     chan struct{}
	waiting  chan struct{} // closed the first time a write waits at the gate
	once     sync.Once
	rfd, wfd int
	mu       sync.Mutex
	wire     []byte
}

func newGatedConn(t *testing.T) *gatedConn {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, 4096); err != nil {
		t.Fatal(err)
	}
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close(); unix.Close(fds[0]); unix.Close(fds[1]) })
	return &gatedConn{Conn: a, gate: make(chan struct{}), waiting: make(chan struct{}), rfd: fds[0], wfd: fds[1]}
}

// wait waits at the gate, then takes what the pipe holds.
func (c *gatedConn) wait() {
	c.once.Do(func() { close(c.waiting) })
	<-c.gate
	c.drain()
}

func (c *gatedConn) drain() {
	c.mu.Lock()
	defer c.mu.Unlock()
	buf := make([]byte, 64<<10)
	for {
		n, _ := unix.Read(c.rfd, buf)
		if n <= 0 {
			return
		}
		c.wire = append(c.wire, buf[:n]...)
	}
}

func (c *gatedConn) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		n, err := unix.Write(c.wfd, p)
		if err == unix.EAGAIN {
			c.wait()
			continue
		}
		if err != nil {
			return total - len(p), err
		}
		p = p[n:]
	}
	return total, nil
}

func (c *gatedConn) SyscallConn() (syscall.RawConn, error) { return gatedRaw{c}, nil }

type gatedRaw struct{ c *gatedConn }

func (r gatedRaw) Control(func(uintptr)) error   { return nil }
func (r gatedRaw) Read(func(uintptr) bool) error { return nil }

// Write is the runtime poller's: f again each time the socket is
// writable, until it says done.
func (r gatedRaw) Write(f func(fd uintptr) bool) error {
	for !f(uintptr(r.c.wfd)) {
		r.c.wait()
	}
	return nil
}

// What a connection keeps for a slow client reaches it whole and in
// order, also when a Write that waited for the writer goes on after the
// writer has sent all and ended (a review found those bytes kept with no
// writer, and the next Write sent ahead of them).
func TestTrackedConnKeepsOrder(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1)) // the interleaving is likelier on one core, as on many gateways
	for round := range 20 {
		gc := newGatedConn(t)
		tc := &trackedConn{Conn: gc, l: &trackedListener{stall: time.Minute, stalled: func(net.Addr, int) {}}}
		tc.drained = sync.NewCond(&tc.mu)
		var want bytes.Buffer
		write := func(p []byte) {
			want.Write(p)
			if _, err := tc.Write(p); err != nil {
				t.Fatal(err)
			}
		}
		seg := func(i, n int) []byte { return bytes.Repeat([]byte{byte(i)}, n) }
		write(seg(1, 8<<10)) // 4 KiB to the pipe, the rest for the writer, which waits at the gate
		<-gc.waiting
		for i := 2; i <= 66; i++ { // more than pendingMax
			write(seg(i, 64<<10))
		}
		last := seg(67, 64<<10)
		want.Write(last)
		done := make(chan error, 1)
		go func() { _, err := tc.Write(last); done <- err }()
		pollUntil(t, "the Write to wait for the writer", inCondWait)
		close(gc.gate) // the client reads all from now on
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		gc.drain() // room in the socket: a Write now may go straight there
		write(seg(68, 100))
		tc.flush(time.Second)
		gc.drain()
		gc.mu.Lock()
		ok := bytes.Equal(gc.wire, want.Bytes())
		n := len(gc.wire)
		gc.mu.Unlock()
		if !ok {
			t.Fatalf("round %d: the client got %d bytes, not the %d written in order", round, n, want.Len())
		}
	}
}
