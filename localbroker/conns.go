package localbroker

import (
	"net"
	"sync"
	"time"
)

// connectTimeout is how long a new connection may take to send its
// CONNECT (after the TLS handshake, on a TLS listener). mochi sets no
// deadline before CONNECT, so a connection that never sends one would
// hold a descriptor and two goroutines for ever (max_clients counts only
// clients that connected) and keep Close waiting.
const connectTimeout = 10 * time.Second

// trackedListener gives each accepted connection a deadline for its
// CONNECT (mochi replaces it with the keepalive's once CONNECT is read)
// and keeps count of the connections still open, so that Close can cut
// them short and wait for them.
type trackedListener struct {
	net.Listener
	timeout time.Duration

	mu    sync.Mutex
	conns map[*trackedConn]struct{}
	wg    sync.WaitGroup
}

func newTrackedListener(l net.Listener, timeout time.Duration) *trackedListener {
	return &trackedListener{Listener: l, timeout: timeout, conns: map[*trackedConn]struct{}{}}
}

func (l *trackedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(l.timeout))
	tc := &trackedConn{Conn: c, l: l}
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

type trackedConn struct {
	net.Conn
	l    *trackedListener
	once sync.Once
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
		c.l.wg.Done()
	})
	return err
}
