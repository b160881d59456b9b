package localbroker

// The MQTT 3.1.1 cases of Eclipse paho.mqtt.testing's interoperability
// suite (interoperability/client_test.py), written again in Go against
// our broker with real clients: paho.mqtt.golang, and its packets package
// where the suite works on the socket itself (a second CONNECT, a client
// that stops answering, a connection dropped without DISCONNECT). Each
// test names the suite's case and asserts what it asserts. Instead of the
// suite's sleeps, a test waits for the event with a deadline, and shows
// that something did not arrive by a sentinel published after it by the
// same client: the broker delivers one publisher's messages in order.

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	pahopk "github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/fieldgate/fieldgate/bridge/outbox"
)

// The suite's topics and filters (client_test.py's main).
var (
	suiteTopics     = [...]string{"TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA"}
	suiteWildtopics = [...]string{"TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#"}
)

// suiteNoSubscribe is the suite's nosubscribe_topics[0]: the ACL denies it.
const suiteNoSubscribe = "test/nosubscribe"

// interopACL is the acl_file the suite's broker runs with: everything for
// the test user but the topic the subscribe-failure case needs refused,
// and the $ topics of the $-topics case, so that the case shows the
// filter not matching rather than the ACL refusing the publish.
const interopACL = `user interop
topic deny test/nosubscribe
topic readwrite #
topic readwrite $TopicA/#
topic readwrite $client_test5/#
`

const interopUser, interopPassword = "interop", "interop-pw"

// wait is how long a test waits for an event before it fails: long, since
// the machine may be busy; nothing waits for it when all is well.
const wait = 10 * time.Second

// interopBroker starts a broker set up as the gateway sets one up: a
// loopback listener, a password file, an ACL file, retained messages and
// sessions in the state directory.
func interopBroker(t *testing.T, lim Limits) *Broker {
	t.Helper()
	var fwd func(Message) (<-chan error, error)
	if strings.HasPrefix(t.Name(), "TestInteropStoring/") {
		fwd = storingForward(t, filepath.Join(t.TempDir(), "outbox.db"))
	}
	return interopBrokerForwarding(t, lim, fwd)
}

// interopBrokerForwarding is interopBroker handing publishes to fwd.
func interopBrokerForwarding(t *testing.T, lim Limits, fwd func(Message) (<-chan error, error)) *Broker {
	t.Helper()
	return interopBrokerACL(t, lim, fwd, interopACL)
}

// interopBrokerACL is interopBrokerForwarding with the acl_file aclText,
// and the options changed by more.
func interopBrokerACL(t *testing.T, lim Limits, fwd func(Message) (<-chan error, error), aclText string, more ...func(*Options)) *Broker {
	t.Helper()
	return interopBrokerLog(t, io.Discard, lim, fwd, aclText, more...)
}

// interopBrokerLog is interopBrokerACL logging to w.
func interopBrokerLog(t *testing.T, w io.Writer, lim Limits, fwd func(Message) (<-chan error, error), aclText string, more ...func(*Options)) *Broker {
	t.Helper()
	dir := t.TempDir()
	hash, err := HashPassword([]byte(interopPassword), 0)
	if err != nil {
		t.Fatal(err)
	}
	pwFile, aclFile := filepath.Join(dir, "passwd"), filepath.Join(dir, "acl")
	if err := os.WriteFile(pwFile, []byte(interopUser+":"+hash+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(aclFile, []byte(aclText), 0o600); err != nil {
		t.Fatal(err)
	}
	pw, err := LoadPasswordFile(pwFile)
	if err != nil {
		t.Fatal(err)
	}
	acl, err := LoadACL(aclFile)
	if err != nil {
		t.Fatal(err)
	}
	o := &Options{
		Listeners:    []Listener{{Address: "127.0.0.1:0"}},
		Security:     Security{Passwords: pw, ACL: acl},
		Limits:       lim,
		RetainedFile: filepath.Join(dir, "broker.db"),
		SessionFile:  filepath.Join(dir, "sessions.db"),
		Forward:      fwd,
	}
	for _, f := range more {
		f(o)
	}
	b, err := New(o, slog.New(slog.NewTextHandler(w, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// storingForward stores every publish in a real outbox, as the gateway
// does with what a route forwards: the broker then acknowledges a QoS 1
// or 2 publish and delivers it only once it is on disk.
func storingForward(t *testing.T, path string) func(Message) (<-chan error, error) {
	ob, err := outbox.Open(path, &outbox.Options{CommitInterval: 5 * time.Millisecond}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ob.Close() })
	return func(m Message) (<-chan error, error) {
		return ob.Append(outbox.Message{Route: "all", Topic: m.Topic, Payload: m.Payload, QoS: m.QoS, Retain: m.Retain}, outbox.DropOldest)
	}
}

// TestInteropStoring runs both interoperability suites against a broker
// that stores every publish before it acknowledges and delivers it, as
// the gateway's broker does for what a route forwards.
func TestInteropStoring(t *testing.T) {
	for _, tc := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"311Basic", TestInterop311Basic},
		{"311RetainedMessages", TestInterop311RetainedMessages},
		{"311WillMessage", TestInterop311WillMessage},
		{"311OfflineMessageQueueing", TestInterop311OfflineMessageQueueing},
		{"311OverlappingSubscriptions", TestInterop311OverlappingSubscriptions},
		{"311RedeliveryOnReconnect", TestInterop311RedeliveryOnReconnect},
		{"311DollarTopics", TestInterop311DollarTopics},
		{"311Unsubscribe", TestInterop311Unsubscribe},
	} {
		t.Run(tc.name, tc.fn)
	}
	for _, tc := range interop5Storing {
		t.Run(tc.name, tc.fn)
	}
}

// received is a message as a test client saw it.
type received struct {
	topic    string
	payload  string
	qos      byte
	retained bool
	dup      bool
}

// inbox collects what a client receives, in order.
type inbox chan received

func newInbox() inbox { return make(inbox, 1000) }

func (in inbox) handler(_ paho.Client, m paho.Message) {
	in <- received{m.Topic(), string(m.Payload()), m.Qos(), m.Retained(), m.Duplicate()}
}

// next returns the next message, failing the test after the deadline.
func (in inbox) next(t *testing.T) received {
	t.Helper()
	select {
	case m := <-in:
		return m
	case <-time.After(wait):
		t.Fatal("no message arrived")
		return received{}
	}
}

// sentinel is the payload a test publishes after what it checks, to know
// that nothing else is coming: a broker delivers one client's publishes
// to a subscriber in the order they were sent.
const sentinel = "sentinel"

// upTo returns the messages that came before the first sentinel, which it
// consumes.
func (in inbox) upTo(t *testing.T) []received {
	t.Helper()
	var got []received
	for {
		m := in.next(t)
		if m.payload == sentinel {
			return got
		}
		got = append(got, m)
	}
}

// client311 is a suite client: paho.mqtt.golang speaking MQTT 3.1.1 as
// the test user. Messages on no subscription's route go to in.
type client311 struct {
	paho.Client
	in inbox
	// sessionPresent is the CONNACK's session present flag.
	sessionPresent bool
}

func options311(b *Broker, id string, clean bool) *paho.ClientOptions {
	return paho.NewClientOptions().AddBroker("tcp://" + b.Addrs()[0]).SetClientID(id).
		SetUsername(interopUser).SetPassword(interopPassword).SetProtocolVersion(4).
		SetCleanSession(clean).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(wait).SetWriteTimeout(wait)
}

// connect311 connects, failing the test on an error; it disconnects at
// the end of the test if the test has not.
func connect311(t *testing.T, o *paho.ClientOptions) *client311 {
	t.Helper()
	c, err := tryConnect311(o)
	if err != nil {
		t.Fatalf("connect %s: %v", o.ClientID, err)
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

func tryConnect311(o *paho.ClientOptions) (*client311, error) {
	c := &client311{in: newInbox()}
	o.SetDefaultPublishHandler(c.in.handler)
	c.Client = paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(wait) {
		c.Disconnect(0)
		return nil, errors.New("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	c.sessionPresent = tok.(*paho.ConnectToken).SessionPresent()
	return c, nil
}

func done(t *testing.T, tok paho.Token, what string) {
	t.Helper()
	if !tok.WaitTimeout(wait) {
		t.Fatalf("%s: no answer", what)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func (c *client311) sub(t *testing.T, filters map[string]byte) {
	t.Helper()
	tok := c.SubscribeMultiple(filters, nil)
	done(t, tok, fmt.Sprint("subscribe ", filters))
	for f, qos := range tok.(*paho.SubscribeToken).Result() {
		if qos == 0x80 {
			t.Fatalf("subscribe %s refused", f)
		}
	}
}

// nothingMore publishes the sentinel on topic, which c subscribes to, and
// fails if c receives anything before it.
func (c *client311) nothingMore(t *testing.T, topic, after string) {
	t.Helper()
	c.pub(t, topic, 1, false, sentinel)
	if got := c.in.upTo(t); len(got) != 0 {
		t.Errorf("%s, also %v", after, got)
	}
}

func (c *client311) pub(t *testing.T, topic string, qos byte, retained bool, payload string) {
	t.Helper()
	done(t, c.Publish(topic, qos, retained, payload), "publish "+topic)
}

// raw311 is a connection driven packet by packet, for what the suite's
// client does on the socket itself.
type raw311 struct {
	net.Conn
	t *testing.T
}

func dial311(t *testing.T, b *Broker) *raw311 {
	t.Helper()
	c, err := net.Dial("tcp", b.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &raw311{c, t}
}

func connectPacket311(id string, clean bool, keepalive uint16) *pahopk.ConnectPacket {
	cp := pahopk.NewControlPacket(pahopk.Connect).(*pahopk.ConnectPacket)
	cp.ProtocolName, cp.ProtocolVersion = "MQTT", 4
	cp.ClientIdentifier, cp.CleanSession, cp.Keepalive = id, clean, keepalive
	cp.UsernameFlag, cp.Username = true, interopUser
	cp.PasswordFlag, cp.Password = true, []byte(interopPassword)
	return cp
}

func (r *raw311) send(p pahopk.ControlPacket) {
	r.t.Helper()
	if err := p.Write(r); err != nil {
		r.t.Fatalf("send %s: %v", p, err)
	}
}

// read returns the next packet, or the error that ended the connection.
func (r *raw311) read() (pahopk.ControlPacket, error) {
	r.SetReadDeadline(time.Now().Add(wait))
	return pahopk.ReadPacket(r)
}

func (r *raw311) connack() *pahopk.ConnackPacket {
	r.t.Helper()
	p, err := r.read()
	if err != nil {
		r.t.Fatalf("no CONNACK: %v", err)
	}
	ca, ok := p.(*pahopk.ConnackPacket)
	if !ok {
		r.t.Fatalf("got %s, want CONNACK", p)
	}
	return ca
}

// closedByBroker reports whether the broker closed the connection (rather
// than the deadline passing), reading what it sends meanwhile.
func (r *raw311) closedByBroker() bool {
	for {
		_, err := r.read()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return false
		}
		if err != nil {
			return true
		}
	}
}

// testBasic
func TestInterop311Basic(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	a := connect311(t, options311(b, "myclientid", true))
	a.Disconnect(0)
	a = connect311(t, options311(b, "myclientid", true))
	if a.sessionPresent {
		t.Error("session present on a clean session")
	}
	a.sub(t, map[string]byte{suiteTopics[0]: 2})
	for qos := range byte(3) {
		a.pub(t, suiteTopics[0], qos, false, fmt.Sprint("qos ", qos))
	}
	a.pub(t, suiteTopics[0], 0, false, sentinel)
	if got := a.in.upTo(t); len(got) != 3 {
		t.Errorf("got %v, want the 3 messages", got)
	}
	a.Disconnect(0)

	// A second CONNECT on the socket is a protocol violation.
	r := dial311(t, b)
	r.send(connectPacket311("myclientid", true, 0))
	if ca := r.connack(); ca.ReturnCode != 0 {
		t.Fatalf("connect: return code %d", ca.ReturnCode)
	}
	r.send(connectPacket311("myclientid", true, 0))
	if !r.closedByBroker() {
		t.Error("a second CONNECT on the socket: the connection stays open")
	}

	// A wrong protocol name is refused.
	r = dial311(t, b)
	cp := connectPacket311("myclientid", true, 0)
	cp.ProtocolName = "hj"
	r.send(cp)
	if p, err := r.read(); err == nil {
		if ca, ok := p.(*pahopk.ConnackPacket); ok && ca.ReturnCode == 0 {
			t.Error("protocol name \"hj\": connection accepted")
		}
	}
}

// test_retained_messages
func TestInterop311RetainedMessages(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	a := connect311(t, options311(b, "myclientid", true))
	if a.sessionPresent {
		t.Error("session present on a clean session")
	}
	a.pub(t, suiteTopics[1], 0, true, "qos 0")
	a.pub(t, suiteTopics[2], 1, true, "qos 1")
	a.pub(t, suiteTopics[3], 2, true, "qos 2")
	a.sub(t, map[string]byte{suiteWildtopics[5]: 2})
	a.pub(t, "TopicA/end", 0, false, sentinel)
	if got := a.in.upTo(t); len(got) != 3 {
		t.Errorf("got %v, want the 3 retained messages", got)
	}
	a.Disconnect(0)

	// Clear the retained messages.
	a = connect311(t, options311(b, "myclientid", true))
	if a.sessionPresent {
		t.Error("session present on a clean session")
	}
	a.pub(t, suiteTopics[1], 0, true, "")
	a.pub(t, suiteTopics[2], 1, true, "")
	a.pub(t, suiteTopics[3], 2, true, "")
	a.sub(t, map[string]byte{suiteWildtopics[5]: 2})
	a.nothingMore(t, "TopicA/end", "after clearing the retained messages")
}

// will_message_test (in client_test.py, though not named test_*, so
// unittest does not run it there)
func TestInterop311WillMessage(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	bc := connect311(t, options311(b, "myclientid2", false))
	bc.sub(t, map[string]byte{suiteTopics[2]: 2})

	a := dial311(t, b)
	cp := connectPacket311("myclientid", true, 2)
	cp.WillFlag, cp.WillTopic, cp.WillMessage = true, suiteTopics[2], []byte("client not disconnected")
	a.send(cp)
	if ca := a.connack(); ca.ReturnCode != 0 || ca.SessionPresent {
		t.Fatalf("connect: return code %d, session present %v", ca.ReturnCode, ca.SessionPresent)
	}
	a.Close() // terminate: no DISCONNECT

	if m := bc.in.next(t); m.topic != suiteTopics[2] || m.payload != "client not disconnected" {
		t.Errorf("got %+v, want the will message", m)
	}
	bc.nothingMore(t, suiteTopics[2], "after the will")
}

// test_zero_length_clientid
func TestInterop311ZeroLengthClientID(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	if c, err := tryConnect311(options311(b, "", false)); err == nil {
		c.Disconnect(0)
		t.Error("empty client id with cleansession false: accepted, want refused")
	} else if !errors.Is(err, pahopk.ErrorRefusedIDRejected) {
		t.Errorf("empty client id with cleansession false: got %v, want %v", err, pahopk.ErrorRefusedIDRejected)
	}
	connect311(t, options311(b, "", true)).Disconnect(0)
}

// test_offline_message_queueing
func TestInterop311OfflineMessageQueueing(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	a := connect311(t, options311(b, "myclientid", false))
	a.sub(t, map[string]byte{suiteWildtopics[5]: 2})
	a.Disconnect(0)

	bc := connect311(t, options311(b, "myclientid2", true))
	if bc.sessionPresent {
		t.Error("session present on a clean session")
	}
	bc.pub(t, suiteTopics[1], 0, false, "qos 0")
	bc.pub(t, suiteTopics[2], 1, false, "qos 1")
	bc.pub(t, suiteTopics[3], 2, false, "qos 2")
	bc.Disconnect(0)

	a = connect311(t, options311(b, "myclientid", false))
	if !a.sessionPresent {
		t.Error("session present 0, want 1")
	}
	// The queued messages are sent as the session resumes, before a's
	// own publish is read.
	a.pub(t, "TopicA/end", 2, false, sentinel)
	got := a.in.upTo(t)
	if len(got) != 2 && len(got) != 3 {
		t.Fatalf("got %v, want 2 or 3 messages", got)
	}
	t.Logf("the broker %s QoS 0 messages for offline clients", map[bool]string{true: "queues", false: "does not queue"}[len(got) == 3])
}

// test_overlapping_subscriptions
func TestInterop311OverlappingSubscriptions(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	a := connect311(t, options311(b, "myclientid", true))
	a.sub(t, map[string]byte{suiteWildtopics[6]: 2, suiteWildtopics[0]: 1})
	a.pub(t, suiteTopics[3], 2, false, "overlapping topic filters")
	a.pub(t, suiteTopics[3], 2, false, sentinel)
	got := a.in.upTo(t)
	switch {
	case len(got) == 1:
		t.Log("one message for all matching overlapping subscriptions")
		if got[0].qos != 2 {
			t.Errorf("got QoS %d, want 2", got[0].qos)
		}
	case len(got) == 2:
		t.Log("one message per matching overlapping subscription")
		if got[0].qos+got[1].qos != 3 || got[0].qos == got[1].qos {
			t.Errorf("got QoS %d and %d, want 2 and 1", got[0].qos, got[1].qos)
		}
	default:
		t.Errorf("got %v, want 1 or 2 messages", got)
	}
}

// test_keepalive
func TestInterop311Keepalive(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	bc := connect311(t, options311(b, "myclientid2", true).SetKeepAlive(0))
	bc.sub(t, map[string]byte{suiteTopics[4]: 2})

	// The suite's keepalive is 5 s; 1 s, the smallest, finds the same.
	a := dial311(t, b)
	cp := connectPacket311("myclientid", true, 1)
	cp.WillFlag, cp.WillTopic, cp.WillMessage = true, suiteTopics[4], []byte("keepalive expiry")
	a.send(cp)
	if ca := a.connack(); ca.ReturnCode != 0 {
		t.Fatalf("connect: return code %d", ca.ReturnCode)
	}
	// a sends nothing more, not even PINGREQ.
	if m := bc.in.next(t); m.topic != suiteTopics[4] || m.payload != "keepalive expiry" {
		t.Errorf("got %+v, want the will message", m)
	}
	if !a.closedByBroker() {
		t.Error("the silent client's connection is still open")
	}
	bc.nothingMore(t, suiteTopics[4], "after the will")
}

// test_redelivery_on_reconnect
func TestInterop311RedeliveryOnReconnect(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	// bclient, paused: it completes its own publishes but does not
	// acknowledge the ones it is sent.
	r := dial311(t, b)
	r.send(connectPacket311("myclientid2", false, 0))
	if ca := r.connack(); ca.ReturnCode != 0 {
		t.Fatalf("connect: return code %d", ca.ReturnCode)
	}
	sp := pahopk.NewControlPacket(pahopk.Subscribe).(*pahopk.SubscribePacket)
	sp.MessageID, sp.Topics, sp.Qoss = 1, []string{suiteWildtopics[6]}, []byte{2}
	r.send(sp)
	for i, topic := range []string{suiteTopics[1], suiteTopics[3]} {
		pp := pahopk.NewControlPacket(pahopk.Publish).(*pahopk.PublishPacket)
		pp.TopicName, pp.Qos, pp.MessageID = topic, byte(i+1), uint16(i+2)
		r.send(pp)
	}
	var unacked []string
	acked := 0
	for acked < 2 || len(unacked) < 2 {
		p, err := r.read()
		if err != nil {
			t.Fatalf("after %d acknowledgements and %v: %v", acked, unacked, err)
		}
		switch p := p.(type) {
		case *pahopk.SubackPacket:
			if p.ReturnCodes[0] != 2 {
				t.Fatalf("subscribe: return code %#x", p.ReturnCodes[0])
			}
		case *pahopk.PublishPacket:
			unacked = append(unacked, p.TopicName)
		case *pahopk.PubackPacket:
			acked++
		case *pahopk.PubrecPacket:
			rel := pahopk.NewControlPacket(pahopk.Pubrel).(*pahopk.PubrelPacket)
			rel.MessageID = p.MessageID
			r.send(rel)
		case *pahopk.PubcompPacket:
			acked++
		}
	}
	r.send(pahopk.NewControlPacket(pahopk.Disconnect))
	r.Close()

	bc := connect311(t, options311(b, "myclientid2", false))
	bc.pub(t, suiteTopics[1], 0, false, sentinel)
	got := bc.in.upTo(t)
	if len(got) != 2 {
		t.Fatalf("after reconnecting: got %v, want the 2 messages not acknowledged", got)
	}
	for _, m := range got {
		if !m.dup {
			t.Errorf("%s sent again without the DUP flag", m.topic)
		}
	}
}

// test_subscribe_failure
func TestInterop311SubscribeFailure(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	a := connect311(t, options311(b, "myclientid", true))
	tok := a.Subscribe(suiteNoSubscribe, 2, nil)
	done(t, tok, "subscribe")
	if rc := tok.(*paho.SubscribeToken).Result()[suiteNoSubscribe]; rc != 0x80 {
		t.Errorf("return code %#x, want 0x80", rc)
	}
}

// test_dollar_topics
func TestInterop311DollarTopics(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	bc := connect311(t, options311(b, "myclientid2", true).SetKeepAlive(0))
	bc.sub(t, map[string]byte{suiteWildtopics[5]: 2})
	// Not in the suite: a subscriber to the $ topic itself shows the
	// message was published.
	c := connect311(t, options311(b, "dollar-subscriber", true))
	c.sub(t, map[string]byte{"$" + suiteTopics[1]: 2})
	bc.pub(t, "$"+suiteTopics[1], 1, false, "")
	if m := c.in.next(t); m.topic != "$"+suiteTopics[1] {
		t.Fatalf("the $ topic's own subscriber got %+v", m)
	}
	bc.nothingMore(t, suiteTopics[1], "+/+ matched a $ topic")
}

// test_unsubscribe
func TestInterop311Unsubscribe(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	bc := connect311(t, options311(b, "myclientid2", true))
	for _, topic := range suiteTopics[:3] {
		bc.sub(t, map[string]byte{topic: 2})
	}
	done(t, bc.Unsubscribe(suiteTopics[0]), "unsubscribe")
	a := connect311(t, options311(b, "myclientid", true))
	for _, topic := range suiteTopics[:3] {
		a.pub(t, topic, 1, false, "")
	}
	a.pub(t, suiteTopics[2], 1, false, sentinel)
	got := bc.in.upTo(t)
	if len(got) != 2 || got[0].topic != suiteTopics[1] || got[1].topic != suiteTopics[2] {
		t.Errorf("got %v, want only %s and %s", got, suiteTopics[1], suiteTopics[2])
	}
}
