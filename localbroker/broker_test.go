package localbroker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"
)

func newBroker(t *testing.T, fwd func(Message) (<-chan error, error)) *Broker {
	t.Helper()
	b, err := New(&Options{Listeners: []Listener{{Address: "127.0.0.1:0"}}, Forward: fwd}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// A real MQTT client gets no anonymous access.
func TestAnonymousRefused(t *testing.T) {
	b := newBroker(t, nil)
	for _, version := range []uint{4, 5} {
		opts := paho.NewClientOptions().AddBroker("tcp://" + b.Addrs()[0]).SetClientID("anon").
			SetProtocolVersion(version).SetAutoReconnect(false).SetConnectRetry(false)
		cl := paho.NewClient(opts)
		tok := cl.Connect()
		if !tok.WaitTimeout(10 * time.Second) {
			t.Fatal("connect did not complete")
		}
		if err := tok.Error(); err == nil || !strings.Contains(err.Error(), "not Authorized") {
			t.Errorf("MQTT v%d anonymous connect: got %v, want not authorized", version, err)
			cl.Disconnect(0)
		}
	}
}

func TestForward(t *testing.T) {
	var mu sync.Mutex
	var forwarded []string
	b := newBroker(t, func(m Message) (<-chan error, error) {
		mu.Lock()
		defer mu.Unlock()
		forwarded = append(forwarded, m.Topic)
		stored := make(chan error, 1)
		switch m.Topic {
		case "full/x":
			return nil, ErrRejected
		case "disk/full":
			stored <- errors.New("no space left on device")
		default:
			stored <- nil
		}
		return stored, nil
	})
	got := make(chan string, 10)
	if err := b.Subscribe("#", 1, func(m Message) { got <- m.Topic + " " + string(m.Payload) }); err != nil {
		t.Fatal(err)
	}
	for _, m := range []struct {
		local bool
		topic string
	}{{false, "sensors/a"}, {false, "full/x"}, {true, "commands/b"}, {false, "disk/full"}, {false, "sensors/c"}} {
		msg := Message{Topic: m.topic, Payload: []byte("p"), QoS: 1}
		var err error
		if m.local {
			err = b.PublishLocal(msg)
		} else {
			err = b.Publish(msg)
		}
		if err != nil {
			t.Fatalf("publish %s: %v", m.topic, err)
		}
	}
	// The rejected message and the one that could not be stored were not
	// delivered; the one from the uplink was, without being forwarded back.
	var delivered []string
	for len(delivered) < 3 {
		select {
		case s := <-got:
			delivered = append(delivered, s)
		case <-time.After(10 * time.Second):
			t.Fatalf("delivered only %v", delivered)
		}
	}
	if want := "[sensors/a p commands/b p sensors/c p]"; strings.Join(delivered, " ") != strings.Trim(want, "[]") {
		t.Errorf("delivered %v, want %s", delivered, want)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := "sensors/a full/x disk/full sensors/c"; strings.Join(forwarded, " ") != want {
		t.Errorf("forwarded %v, want %s", forwarded, want)
	}
}

func TestListenError(t *testing.T) {
	b := newBroker(t, nil)
	_, err := New(&Options{Listeners: []Listener{{Address: b.Addrs()[0]}}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil || !strings.Contains(err.Error(), "listen on "+b.Addrs()[0]) || !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("got %v, want an address-in-use error naming %s", err, b.Addrs()[0])
	}
}

// A network client's QoS 1 PUBACK waits for storage: it comes once the
// message is stored, in order, and a message that could not be stored gets
// 0x80 (MQTT 5) and is not delivered.
func TestDeferredAck(t *testing.T) {
	release := make(chan struct{})
	forwarded := make(chan string, 10)
	b, err := New(&Options{
		Listeners: []Listener{{Address: "127.0.0.1:0"}},
		Security:  Security{AllowAnonymous: true},
		Forward: func(m Message) (<-chan error, error) {
			forwarded <- m.Topic
			stored := make(chan error, 1)
			go func() {
				<-release
				if m.Topic == "disk/full" {
					stored <- errors.New("no space left on device")
				} else {
					stored <- nil
				}
			}()
			return stored, nil
		},
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	delivered := make(chan string, 10)
	b.Subscribe("#", 1, func(m Message) { delivered <- m.Topic })

	conn, err := net.Dial("tcp", b.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	cl := paho5.NewClient(paho5.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := cl.Connect(ctx, &paho5.Connect{ClientID: "dev", KeepAlive: 30, CleanStart: true}); err != nil {
		t.Fatal(err)
	}
	defer cl.Disconnect(&paho5.Disconnect{})
	type result struct {
		topic string
		code  byte
	}
	results := make(chan result, 3)
	for _, topic := range []string{"a/1", "disk/full", "a/2"} {
		go func() {
			resp, _ := cl.Publish(ctx, &paho5.Publish{Topic: topic, QoS: 1, Payload: []byte("x")})
			code := byte(0xff)
			if resp != nil {
				code = resp.ReasonCode
			}
			results <- result{topic, code}
		}()
	}
	for n := 0; n < 3; {
		select {
		case r := <-results:
			t.Fatalf("%s acknowledged (%#x) before it was stored", r.topic, r.code)
		case d := <-delivered:
			t.Fatalf("%s delivered before it was stored", d)
		case <-forwarded:
			n++
		}
	}
	close(release)
	got := map[string]byte{}
	for range 3 {
		r := <-results
		got[r.topic] = r.code
	}
	if got["a/1"] != 0 || got["a/2"] != 0 || got["disk/full"] != 0x80 {
		t.Errorf("reason codes: got %v, want a/1 and a/2 0, disk/full 0x80", got)
	}
	for range 2 {
		if d := <-delivered; d == "disk/full" {
			t.Error("a message that was not stored was delivered")
		}
	}
}

// Close disconnects every client and returns while others come and go.
// (mochi's own Close could wait for ever when a client left at the wrong
// moment: Clients.GetByListener takes its read lock twice, and a client's
// Delete queued in between blocks both. It did once on a shutdown right
// after 1,000 clients had left; Close no longer goes that way.)
func TestCloseWhileClientsComeAndGo(t *testing.T) {
	connect := func(addr, id string, d time.Duration) (net.Conn, error) {
		c, err := net.DialTimeout("tcp", addr, d)
		if err != nil {
			return nil, err
		}
		c.SetDeadline(time.Now().Add(d))
		body := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, byte(len(id))}, id...)
		c.Write(append([]byte{0x10, byte(len(body))}, body...))
		ack := make([]byte, 4)
		if _, err := io.ReadFull(c, ack); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	for round := range 3 {
		b, err := New(&Options{Listeners: []Listener{{Address: "127.0.0.1:0"}}, Security: Security{AllowAnonymous: true}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		addr := b.Addrs()[0]
		var conns []net.Conn
		for i := range 300 {
			c, err := connect(addr, fmt.Sprintf("c%d-%d", round, i), 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
		stop := make(chan struct{})
		var churn sync.WaitGroup
		for g := range 4 {
			churn.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					if c, err := connect(addr, fmt.Sprintf("churn%d-%d", g, i), 200*time.Millisecond); err == nil {
						c.Close()
					}
				}
			})
		}
		for _, c := range conns[:150] { // half leave as Close begins
			go c.Close()
		}
		closed := make(chan error, 1)
		go func() { closed <- b.Close() }()
		select {
		case <-closed:
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: Close did not return while clients came and went", round)
		}
		close(stop)
		churn.Wait()
		// The others were disconnected by the broker.
		for i, c := range conns[150:] {
			c.SetDeadline(time.Now().Add(10 * time.Second))
			// Whatever the broker says last (a DISCONNECT), then the end.
			if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("round %d: client %d still connected after Close: %v", round, 150+i, err)
			}
			c.Close()
		}
	}
}

// A connection that never sends CONNECT is closed after ConnectTimeout
// (mochi waits for ever); a client that connected with keepalive 0 is not;
// and Close does not wait for a silent connection.
func TestConnectTimeout(t *testing.T) {
	b, err := New(&Options{Listeners: []Listener{{Address: "127.0.0.1:0"}}, Security: Security{AllowAnonymous: true}, ConnectTimeout: 200 * time.Millisecond},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	client, err := net.Dial("tcp", b.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	body := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 0, 0, 2}, "k0"...) // keepalive 0
	client.Write(append([]byte{0x10, byte(len(body))}, body...))
	ack := make([]byte, 4)
	if _, err := io.ReadFull(client, ack); err != nil || ack[3] != 0 {
		t.Fatalf("connect: %x %v", ack, err)
	}
	silent, err := net.Dial("tcp", b.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	silent.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, silent); err != nil {
		t.Fatalf("a connection without CONNECT was not closed by the broker: %v", err)
	}
	// By now the connect timeout has passed for the client too: it is
	// still connected, and answers a ping.
	client.SetDeadline(time.Now().Add(10 * time.Second))
	client.Write([]byte{0xC0, 0})
	if _, err := io.ReadFull(client, ack[:2]); err != nil || ack[0] != 0xD0 {
		t.Fatalf("ping after the connect timeout: %x %v", ack[:2], err)
	}
}

func TestCloseCutsSilentConnections(t *testing.T) {
	b, err := New(&Options{Listeners: []Listener{{Address: "127.0.0.1:0"}}, ConnectTimeout: time.Hour}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	silent, err := net.Dial("tcp", b.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	// The connection is accepted before Close begins.
	silent.Write([]byte{0x10})
	closed := make(chan error, 1)
	go func() { closed <- b.Close() }()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close waited for a connection that never sent CONNECT")
	}
}
