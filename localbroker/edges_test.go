package localbroker

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	mqtt "github.com/mochi-mqtt/server/v2"
	mochipk "github.com/mochi-mqtt/server/v2/packets"
)

// publishAtConnack publishes n QoS 1 messages to the resuming client while
// mochi encodes its CONNACK: after Clients.Add, before the resend, the
// window a busy publisher hits.
type publishAtConnack struct {
	mqtt.HookBase
	b     *Broker
	id    string
	n     int
	armed atomic.Bool
}

func (h *publishAtConnack) ID() string           { return "test-publish-at-connack" }
func (h *publishAtConnack) Provides(b byte) bool { return b == mqtt.OnPacketEncode }
func (h *publishAtConnack) OnPacketEncode(cl *mqtt.Client, pk mochipk.Packet) mochipk.Packet {
	if cl.ID == h.id && pk.FixedHeader.Type == mochipk.Connack && h.armed.CompareAndSwap(true, false) {
		for i := 0; i < h.n; i++ {
			h.b.Publish(Message{Topic: "q/x", Payload: []byte{'m', byte('0' + i)}, QoS: 1})
		}
		// wait until the write loop holds the first (OnPacketEncode)
		waitAtMost(2*time.Second, func() bool { return h.b.takeover.heldBack.Load() > 0 })
	}
	return pk
}

// A connection that resumes a session gets its CONNACK when messages are
// published to it as the CONNACK is encoded: they are queued, and resent
// with the session, and the queued copies are not sent (Mods.MaxSize=1).
// mochi returned before it sent its write buffer for them, which held the
// CONNACK (a review found it never sent).
func TestResumeConnackNotLeftInBuffer(t *testing.T) {
	b := interopBroker(t, Limits{})
	h := &publishAtConnack{b: b, id: "dev", n: 3}
	if err := b.srv.AddHook(h, nil); err != nil {
		t.Fatal(err)
	}
	props := func() *packets.Properties { return &packets.Properties{SessionExpiryInterval: u32(3600)} }
	r := dial5(t, b)
	r.connect(connectPacket5("dev", true, 0, props()))
	r.subscribe(1, "q/#", 1)
	r.Close()
	pollUntil(t, "the device to be gone", func() bool { cl, ok := b.srv.Clients.Get("dev"); return ok && cl.Closed() })
	h.armed.Store(true)
	r = dial5(t, b)
	r.send(connectPacket5("dev", false, 0, props()))
	p, err := r.read()
	t.Logf("heldBack=%d notResent=%d", b.takeover.heldBack.Load(), b.takeover.notResent.Load())
	if err != nil {
		t.Fatalf("no CONNACK within %v: %v", wait, err)
	}
	t.Logf("first packet: %v", p)
}

// A packet too large after a stored QoS 1 or 2 publish gets its
// DISCONNECT 0x95: a QoS 2 one is processed twice as the client's (by the
// reader, and when the waiter hands it back to mochi), and is counted
// once.
func TestTooLargeAfterStoredPublish(t *testing.T) {
	b := interopBrokerForwarding(t, Limits{MaxPacketSize: 256}, storingForward(t, filepath.Join(t.TempDir(), "outbox.db")))
	for _, qos := range []byte{1, 2} {
		r := dial5(t, b)
		r.connect(connectPacket5(fmt.Sprint("q", qos), true, 0, nil))
		r.publish(1, "t/x", qos, "x", nil)
		if qos == 2 {
			r.expect(packets.PUBREC)
			r.send(&packets.Pubrel{PacketID: 1, Properties: &packets.Properties{}})
			r.expect(packets.PUBCOMP)
		} else {
			r.expect(packets.PUBACK)
		}
		cc := func() *corkConn { cl, _ := b.srv.Clients.Get(fmt.Sprint("q", qos)); return cl.Net.Conn.(*corkConn) }()
		t.Logf("QoS %d: processed %d (reader processed %d packets after CONNECT)", qos, cc.processed.Load(), map[byte]int{1: 1, 2: 2}[qos])
		var big bytes.Buffer
		(&packets.Publish{Topic: "t/big", Payload: make([]byte, 300), Properties: &packets.Properties{}}).WriteTo(&big)
		r.Write(big.Bytes())
		if code := r.disconnectedWith(); code != 0x95 {
			t.Errorf("QoS %d: DISCONNECT %d, want 0x95 (-1: none)", qos, code)
		}
	}
}

// pauseProcessed holds the reader in OnPacketProcessed (after gateHook
// counted the packet) for a publish with payload p1, until resume.
type pauseProcessed struct {
	mqtt.HookBase
	paused, resume chan struct{}
	once           atomic.Bool
}

func (h *pauseProcessed) ID() string           { return "test-pause-processed" }
func (h *pauseProcessed) Provides(b byte) bool { return b == mqtt.OnPacketProcessed }
func (h *pauseProcessed) OnPacketProcessed(cl *mqtt.Client, pk mochipk.Packet, _ error) {
	if string(pk.Payload) == "p1" && h.once.CompareAndSwap(false, true) {
		close(h.paused)
		<-h.resume
	}
}

// A connection closed for another reason (here a takeover: mochi sends
// 0x8E) while mochi has yet to read a packet too large that the client
// sent gets one DISCONNECT, not a second one with 0x95.
func TestTooLargeNotAfterAnotherDisconnect(t *testing.T) {
	b := interopBroker(t, Limits{MaxPacketSize: 256})
	h := &pauseProcessed{paused: make(chan struct{}), resume: make(chan struct{})}
	if err := b.srv.AddHook(h, nil); err != nil {
		t.Fatal(err)
	}
	r := dial5(t, b)
	r.connect(connectPacket5("dup", true, 0, nil))
	var buf bytes.Buffer
	(&packets.Publish{Topic: "t/x", Payload: []byte("p1"), Properties: &packets.Properties{}}).WriteTo(&buf)
	(&packets.Publish{Topic: "t/big", Payload: make([]byte, 300), Properties: &packets.Properties{}}).WriteTo(&buf)
	r.Write(buf.Bytes())
	<-h.paused
	taken := make(chan struct{})
	go func() {
		defer close(taken)
		r2 := dial5(t, b)
		r2.connect(connectPacket5("dup", true, 0, nil))
	}()
	defer func() { <-taken }()
	var once sync.Once
	codes := r.disconnectCodes(func(int) { once.Do(func() { close(h.resume) }) })
	if len(codes) != 1 {
		t.Errorf("DISCONNECT reason codes %#x, want one (0x8e)", codes)
	}
}

// Shutdown with hung devices, each with bytes kept for it, is not a second
// per device: the listener's connections get one deadline first (closing
// one waits, a second at most, for what is kept). With a second each, 8
// devices took 8 s, and systemd's stop timeout could pass before the
// session store was saved.
func TestCloseWithHungClients(t *testing.T) {
	b := unclosedBroker(t)
	const n = 8
	for i := range n {
		r := dialSmall(t, b)
		r.connect(connectPacket5(fmt.Sprint("hung", i), true, 0, nil))
		r.subscribe(1, "h/#", 0)
	}
	pub := dial5(t, b)
	pub.connect(connectPacket5("pub", true, 0, nil))
	for range 48 {
		pub.publish(0, "h/x", 0, string(make([]byte, 64<<10)), nil)
	}
	// wait until every hung device's connection holds bytes for its writer
	pollUntil(t, "writers", func() bool {
		k := 0
		for _, tl := range b.tracked {
			tl.mu.Lock()
			for c := range tl.conns {
				c.mu.Lock()
				if c.writing {
					k++
				}
				c.mu.Unlock()
			}
			tl.mu.Unlock()
		}
		return k >= n
	})
	start := time.Now()
	b.Close()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %v with %d hung clients", d.Round(10*time.Millisecond), n)
	}
}

// unclosedBroker is a broker like interopBroker's that the test closes.
func unclosedBroker(t *testing.T) *Broker {
	dir := t.TempDir()
	hash, _ := HashPassword([]byte(interopPassword), 0)
	pwFile := filepath.Join(dir, "passwd")
	os.WriteFile(pwFile, []byte(interopUser+":"+hash+"\n"), 0o600)
	pw, err := LoadPasswordFile(pwFile)
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(&Options{Listeners: []Listener{{Address: "127.0.0.1:0"}}, Security: Security{Passwords: pw},
		SessionFile: filepath.Join(dir, "sessions.db")}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// mochi takes a remaining length of more than four bytes as long as the
// value stays in range (0x80 0x80 0x80 0x80 0x00 is 0), and so does the
// framer: a later packet too large still gets its DISCONNECT 0x95.
func TestTooLargeAfterOverlongLength(t *testing.T) {
	b := interopBroker(t, Limits{MaxPacketSize: 256})
	r := dial5(t, b)
	r.connect(connectPacket5("overlong", true, 0, nil))
	r.Write([]byte{0xc0, 0x80, 0x80, 0x80, 0x80, 0x00}) // PINGREQ, length 0 in five bytes
	r.expect(packets.PINGRESP)                          // mochi took it
	var big bytes.Buffer
	(&packets.Publish{Topic: "t/big", Payload: make([]byte, 300), Properties: &packets.Properties{}}).WriteTo(&big)
	r.Write(big.Bytes()) // the broker may close before it has all: an error here is no failure
	if code := r.disconnectedWith(); code != 0x95 {
		t.Errorf("DISCONNECT %d, want 0x95 (-1: none)", code)
	}
}
