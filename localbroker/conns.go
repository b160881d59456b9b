package localbroker

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// connectTimeout is how long a new connection may take to send its
// CONNECT (after the TLS handshake, on a TLS listener). mochi sets no
// deadline before CONNECT, so a connection that never sends one would
// hold a descriptor and two goroutines for ever (max_clients counts only
// clients that connected) and keep Close waiting.
const connectTimeout = 10 * time.Second

// writeStall is how long a client may take nothing from the broker while
// more than pendingMax waits for it, before its connection is closed.
const writeStall = 10 * time.Second

// trackedListener gives each accepted connection a deadline for its
// CONNECT (mochi replaces it with the keepalive's once CONNECT is read)
// and keeps count of the connections still open, so that Close can cut
// them short and wait for them.
type trackedListener struct {
	net.Listener
	timeout time.Duration
	stall   time.Duration                      // see trackedConn
	stalled func(remote net.Addr, pending int) // reports a connection closed for it

	mu    sync.Mutex
	conns map[*trackedConn]struct{}
	wg    sync.WaitGroup
}

func newTrackedListener(l net.Listener, timeout, stall time.Duration, stalled func(net.Addr, int)) *trackedListener {
	return &trackedListener{Listener: l, timeout: timeout, stall: stall, stalled: stalled, conns: map[*trackedConn]struct{}{}}
}

func (l *trackedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	c.SetReadDeadline(time.Now().Add(l.timeout))
	tc := &trackedConn{Conn: c, l: l}
	tc.drained = sync.NewCond(&tc.mu)
	l.mu.Lock()
	l.conns[tc] = struct{}{}
	l.wg.Add(1) // here, not in the goroutine that serves it: Close waits for it
	l.mu.Unlock()
	return tc, nil
}

// expire makes every open connection's reads and writes fail after d, so
// that the goroutines serving them end.
func (l *trackedListener) expire(d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for c := range l.conns {
		c.Conn.SetDeadline(time.Now().Add(d))
	}
}

// wait waits, at most max, for every accepted connection to be closed.
func (l *trackedListener) wait(max time.Duration) bool {
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(max):
		return false
	}
}

// trackedConn is an accepted connection. Its writes do not wait for a
// client that reads slowly, or has stopped reading: mochi writes to a
// client holding the client's lock, which every QoS 1 or 2 delivery to
// the client takes too, so one subscriber that stopped reading stopped
// every publisher to its topics (and the gateway's sensors, and what comes
// in from the central broker). What the socket cannot take at once is
// kept, and written by a goroutine of its own, in order. Only when more
// than pendingMax is kept does Write wait; when the client then takes
// nothing for the stall timeout, the connection is closed.
type trackedConn struct {
	net.Conn
	l    *trackedListener
	once sync.Once

	mu       sync.Mutex
	drained  *sync.Cond // signalled when the writer takes what is kept, and at its end
	pending  []byte     // accepted, not yet sent
	writing  bool       // the writer goroutine runs
	werr     error      // the writer's failure; every later Write fails with it
	raw      syscall.RawConn
	progress atomic.Int64 // when the client last took bytes (Unix ns), while the writer runs
}

// pendingMax is how much a connection keeps for a slow client before
// Write waits.
const pendingMax = 4 << 20

// errStalled ends the connection of a client that has read nothing for
// the stall timeout with more than pendingMax waiting for it.
var errStalled = errors.New("the client has stopped reading")

func (c *trackedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	total := len(p)
	for {
		if c.werr != nil {
			return 0, c.werr
		}
		if !c.writing {
			// Nothing kept: what the socket takes now goes now.
			n, err := c.tryWrite(p)
			if err != nil || n == len(p) {
				return n, err
			}
			c.pending = append(c.pending, p[n:]...)
			c.writing = true
			c.progress.Store(time.Now().UnixNano())
			go c.writer()
			return total, nil
		}
		if len(c.pending) <= pendingMax {
			c.pending = append(c.pending, p...)
			return total, nil
		}
		// Too much kept: wait for the writer to take it (or to end),
		// as long as the client takes something.
		stall := c.l.stall
		if time.Since(time.Unix(0, c.progress.Load())) > stall {
			c.werr = errStalled
			c.l.stalled(c.RemoteAddr(), len(c.pending))
			c.Conn.Close() // ends the writer's write
			return 0, c.werr
		}
		t := time.AfterFunc(stall/10, c.drained.Broadcast)
		c.drained.Wait()
		t.Stop()
	}
}

// rawConn is the socket's, or nil for a connection that has none.
func (c *trackedConn) rawConn() syscall.RawConn {
	if c.raw == nil {
		if sc, ok := c.Conn.(syscall.Conn); ok {
			c.raw, _ = sc.SyscallConn()
		}
	}
	return c.raw
}

// tryWrite writes what the socket takes without waiting.
func (c *trackedConn) tryWrite(p []byte) (int, error) { return c.rawWrite(p, false) }

// send writes p, waiting for the socket (and its write deadline).
func (c *trackedConn) send(p []byte) error {
	_, err := c.rawWrite(p, true)
	return err
}

// rawWrite writes p to the socket, noting each time the client takes some
// of it; with wait, until all is taken, otherwise what it takes now.
func (c *trackedConn) rawWrite(p []byte, wait bool) (int, error) {
	raw := c.rawConn()
	if raw == nil {
		n, err := c.Conn.Write(p) // no socket under it: it waits
		c.progress.Store(time.Now().UnixNano())
		return n, err
	}
	n := 0
	var werr error
	err := raw.Write(func(fd uintptr) bool {
		for n < len(p) {
			m, err := unix.Write(int(fd), p[n:])
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				return !wait // false: the poller waits until the socket takes more
			case err != nil:
				werr = err
				return true
			}
			n += m
			c.progress.Store(time.Now().UnixNano())
		}
		return true
	})
	if err == nil {
		err = werr
	}
	if err != nil {
		err = &net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	}
	return n, err
}

// writer sends what Write kept, until nothing is left.
func (c *trackedConn) writer() {
	var buf []byte
	for {
		c.mu.Lock()
		buf, c.pending = c.pending, buf[:0]
		if len(buf) == 0 || c.werr != nil {
			c.pending = nil // what a slow spell needed is not kept
			c.writing = false
			c.drained.Broadcast()
			c.mu.Unlock()
			return
		}
		c.drained.Broadcast()
		c.mu.Unlock()
		err := c.send(buf)
		if err != nil {
			c.mu.Lock()
			if c.werr == nil {
				c.werr = err
			}
			c.mu.Unlock()
			c.Conn.Close() // the stream is cut: the reader ends, and mochi with it
		}
	}
}

// flush waits, at most d, until what was kept is sent.
func (c *trackedConn) flush(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.writing {
		return
	}
	t := time.AfterFunc(d, c.drained.Broadcast)
	defer t.Stop()
	deadline := time.Now().Add(d)
	for c.writing && time.Now().Before(deadline) {
		c.drained.Wait()
	}
}

// Deadlines. Writes return at once, what the socket cannot take is kept,
// and a client that takes nothing is found by the stall timeout, so a
// deadline for writing means only "close": one already past (crypto/tls
// sets one as it closes, after its close_notify) lets what is kept go
// first, for a second at most, and then applies. A later one applies to
// reads only (mochi's keepalive): gorilla/websocket sets one on each
// control frame it sends (a pong: now + 1 s), which cut a slow reader off
// in the middle of a packet.
func (c *trackedConn) SetDeadline(t time.Time) error {
	if past(t) {
		c.flush(time.Second)
		return c.Conn.SetDeadline(t)
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *trackedConn) SetWriteDeadline(t time.Time) error {
	if past(t) {
		c.flush(time.Second)
		return c.Conn.SetWriteDeadline(t)
	}
	return nil
}

func past(t time.Time) bool { return !t.IsZero() && !t.After(time.Now()) }

func (c *trackedConn) Close() error {
	c.flush(time.Second) // mochi's last words: a DISCONNECT
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
		c.l.wg.Done()
	})
	return err
}
