package localbroker

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	paho5 "github.com/eclipse/paho.golang/paho"
	"github.com/fieldgate/fieldgate/internal/testlog"
	"github.com/gorilla/websocket"
)

// A subscriber that stops reading its socket (a hung device, keepalive 0
// so that nothing times it out) does not stop the others: a publisher to
// its topics gets its acknowledgements, and another subscriber its
// messages. mochi writes to a client holding the client's lock, which a
// QoS 1 delivery to it takes for the next packet id: every publisher to
// the hung device's topics waited for ever. Now the broker keeps up to
// 4 MiB for it, then waits at most the stall timeout, and closes its
// connection, saying so in the log.
func TestStuckSubscriberDoesNotStallPublishers(t *testing.T) {
	for _, ws := range []bool{false, true} {
		t.Run(map[bool]string{false: "tcp", true: "websocket"}[ws], func(t *testing.T) {
			logs := &testlog.Buffer{}
			b := interopBrokerLog(t, logs, Limits{}, nil, interopACL, func(o *Options) {
				o.WriteStall = 300 * time.Millisecond
				o.Listeners = append(o.Listeners, Listener{Address: "127.0.0.1:0", WebSocket: true})
			})
			var stuck *raw5
			if ws {
				d := websocket.Dialer{Subprotocols: []string{"mqtt"}, NetDial: func(network, addr string) (net.Conn, error) {
					return smallDialer.Dial(network, addr)
				}}
				conn, _, err := d.Dial("ws://"+b.Addrs()[1], nil)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { conn.Close() })
				stuck = &raw5{&wsConn{Conn: conn.NetConn(), ws: conn}, t}
			} else {
				stuck = dialSmall(t, b)
			}
			stuck.connect(connectPacket5("stuck", true, 0, nil))
			stuck.subscribe(1, "t/#", 1)
			// From here on it reads nothing.

			watch := connect5(t, b, &paho5.Connect{ClientID: "watch", CleanStart: true})
			watch.sub(t, nil, paho5.SubscribeOptions{Topic: "t/x", QoS: 1})
			pub := connect5(t, b, &paho5.Connect{ClientID: "pub", CleanStart: true})
			payload := []byte(strings.Repeat("x", 64<<10))
			const n = 200 // 12.8 MB: more than the sockets and the 4 MiB kept hold
			for i := range n {
				pub.pub(t, &paho5.Publish{Topic: "t/x", QoS: 1, Payload: append([]byte(fmt.Sprint(i, " ")), payload...)})
				watch.in.next(t)
			}
			pollUntil(t, "the hung device to be disconnected", func() bool { cl, ok := b.srv.Clients.Get("stuck"); return !ok || cl.Closed() })
			if !strings.Contains(logs.String(), "client disconnected: it has stopped reading") {
				t.Errorf("nothing logged:\n%s", logs.String())
			}
		})
	}
}

// A subscriber that reads slowly, but reads, is not disconnected, though
// it takes longer than the stall timeout: it gets all that was published
// to it.
func TestSlowSubscriberKept(t *testing.T) {
	b := interopBrokerACL(t, Limits{}, nil, interopACL, func(o *Options) { o.WriteStall = 300 * time.Millisecond })
	slow := dialSmall(t, b)
	slow.connect(connectPacket5("slow", true, 0, nil))
	slow.subscribe(1, "t/#", 0)

	const n = 200 // 12.8 MB
	payload := []byte(strings.Repeat("x", 64<<10))
	go func() {
		pub := connect5(t, b, &paho5.Connect{ClientID: "pub", CleanStart: true})
		for i := range n {
			if _, err := pub.Publish(ctx5(t), &paho5.Publish{Topic: "t/x", QoS: 1, Payload: append([]byte(fmt.Sprint(i, " ")), payload...)}); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	tick := time.NewTicker(5 * time.Millisecond) // reads a message every 5 ms at most: 1 s in all
	defer tick.Stop()
	for i := range n {
		<-tick.C
		p := slow.expect(packets.PUBLISH).Content.(*packets.Publish)
		if want := fmt.Sprint(i, " "); !strings.HasPrefix(string(p.Payload), want) {
			t.Fatalf("message %d: got %.10q", i, p.Payload)
		}
	}
}

// smallDialer dials with a 4 KiB receive buffer, so that what the
// client does not read soon fills what the sockets hold.
var smallDialer = net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
	return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
}}

// dialSmall dials b's first listener with smallDialer.
func dialSmall(t *testing.T, b *Broker) *raw5 {
	c, err := smallDialer.Dial("tcp", b.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &raw5{c, t}
}

// An HTTP request to a WebSocket listener that is not an upgrade, on a
// connection kept alive, or a request that never ends its headers, holds
// the connection for the connect timeout at most.
func TestWebSocketIdleHTTPClosed(t *testing.T) {
	b := interopBrokerACL(t, Limits{}, nil, interopACL, func(o *Options) {
		o.ConnectTimeout = 200 * time.Millisecond
		o.Listeners = append(o.Listeners, Listener{Address: "127.0.0.1:0", WebSocket: true})
	})
	for _, req := range []string{
		"GET / HTTP/1.1\r\nHost: gw\r\n\r\n", // answered, then idle
		"GET / HTTP/1.1\r\nHost: gw\r\n",     // headers never end
	} {
		c, err := net.Dial("tcp", b.Addrs()[1])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte(req)); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(wait))
		if _, err := io.ReadAll(c); err != nil {
			t.Errorf("%q: the connection stayed open: %v", req, err)
		}
	}
}

// A WebSocket client that reads slowly and pings keeps its stream: gorilla
// sends the pong with a write deadline of a second, which used to cut the
// writer off in the middle of what was kept for the client.
func TestWebSocketPingKeepsSlowReader(t *testing.T) {
	b := interopBrokerACL(t, Limits{}, nil, interopACL, func(o *Options) {
		o.Listeners = append(o.Listeners, Listener{Address: "127.0.0.1:0", WebSocket: true})
	})
	d := websocket.Dialer{Subprotocols: []string{"mqtt"}, NetDial: func(network, addr string) (net.Conn, error) {
		return smallDialer.Dial(network, addr)
	}}
	ws, _, err := d.Dial("ws://"+b.Addrs()[1], nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	r := &raw5{&wsConn{Conn: ws.NetConn(), ws: ws}, t}
	r.connect(connectPacket5("slow", true, 0, nil))
	r.subscribe(1, "s/#", 0)
	// The broker's side of the socket takes little too: most of what
	// follows is kept, for longer than the pong's deadline.
	tl := b.tracked["tcp1"]
	tl.mu.Lock()
	for c := range tl.conns {
		c.Conn.(*net.TCPConn).SetWriteBuffer(4096)
	}
	tl.mu.Unlock()
	pub := dial5(t, b)
	pub.connect(connectPacket5("pub", true, 0, nil))
	const n = 60 // 3.9 MB, kept at once: under pendingMax
	for i := range n {
		pub.publish(0, "s/x", 0, fmt.Sprint(i, " ")+string(make([]byte, 64<<10)), nil)
	}
	// All of it written (and kept): no write after the pong's clears its
	// deadline.
	pollUntil(t, "the messages to be written", func() bool { return atomic.LoadInt64(&b.srv.Info.MessagesSent) >= n })
	tick := time.NewTicker(30 * time.Millisecond) // 1.8 s in all: longer than the pong's deadline
	defer tick.Stop()
	for i := range n {
		<-tick.C
		if i == 5 {
			if err := ws.WriteControl(websocket.PingMessage, []byte("p"), time.Now().Add(time.Second)); err != nil {
				t.Fatal(err)
			}
		}
		p, err := r.read()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if pp, ok := p.Content.(*packets.Publish); !ok || !strings.HasPrefix(string(pp.Payload), fmt.Sprint(i, " ")) {
			t.Fatalf("message %d: got %v", i, p)
		}
	}
}
