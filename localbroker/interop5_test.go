package localbroker

// The MQTT 5 cases of Eclipse paho.mqtt.testing's interoperability suite
// (interoperability/client_test5.py), as interop_test.go has the 3.1.1
// ones: real clients (paho.golang, and its packets package where the
// suite works on the socket: flow control, topic aliases, a client that
// stops answering), one test per case, the suite's assertions, events
// waited for instead of sleeps, sentinels instead of "nothing else came
// in a second".

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	paho5 "github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	mochipk "github.com/mochi-mqtt/server/v2/packets"
)

// client_test5.py's main prefixes its topics so as not to meet other tests'.
const prefix5 = "client_test5/"

var topics5, wildtopics5 = prefixed(suiteTopics[:]), prefixed(suiteWildtopics[:])

func prefixed(ts []string) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = prefix5 + t
	}
	return out
}

// received5 is a message as an MQTT 5 client saw it.
type received5 struct {
	received
	props *paho5.PublishProperties
}

type inbox5 chan received5

func (in inbox5) next(t *testing.T) received5 {
	t.Helper()
	select {
	case m := <-in:
		return m
	case <-time.After(wait):
		t.Fatal("no message arrived")
		return received5{}
	}
}

func (in inbox5) upTo(t *testing.T) []received5 {
	t.Helper()
	var got []received5
	for {
		m := in.next(t)
		if m.payload == sentinel {
			return got
		}
		got = append(got, m)
	}
}

// client5 is a suite client on paho.golang, as the test user.
type client5 struct {
	*paho5.Client
	in          inbox5
	connack     *paho5.Connack
	disconnects chan *paho5.Disconnect // DISCONNECTs from the broker
	t           *testing.T
}

func connect5(t *testing.T, b *Broker, cp *paho5.Connect) *client5 {
	t.Helper()
	c, err := tryConnect5(t, b, cp)
	if err != nil {
		t.Fatalf("connect %q: %v", cp.ClientID, err)
	}
	return c
}

func tryConnect5(t *testing.T, b *Broker, cp *paho5.Connect) (*client5, error) {
	conn, err := net.Dial("tcp", b.Addrs()[0])
	if err != nil {
		return nil, err
	}
	return tryConnect5Over(t, conn, cp)
}

// tryConnect5Over is tryConnect5 on a connection of the caller's.
func tryConnect5Over(t *testing.T, conn net.Conn, cp *paho5.Connect) (*client5, error) {
	var err error
	c := &client5{in: make(inbox5, 1000), disconnects: make(chan *paho5.Disconnect, 1), t: t}
	c.Client = paho5.NewClient(paho5.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(paho5.PublishReceived) (bool, error){func(r paho5.PublishReceived) (bool, error) {
			p := r.Packet
			c.in <- received5{received{p.Topic, string(p.Payload), p.QoS, p.Retain, p.Duplicate()}, p.Properties}
			return true, nil
		}},
		OnServerDisconnect: func(d *paho5.Disconnect) { c.disconnects <- d },
		OnClientError:      func(error) {},
	})
	cp.Username, cp.UsernameFlag = interopUser, true
	cp.Password, cp.PasswordFlag = []byte(interopPassword), true
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c.connack, err = c.Connect(ctx, cp)
	if err != nil {
		conn.Close()
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(&paho5.Disconnect{}) })
	return c, nil
}

func ctx5(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}

func (c *client5) sub(t *testing.T, props *paho5.SubscribeProperties, subs ...paho5.SubscribeOptions) *paho5.Suback {
	t.Helper()
	sa, err := c.Subscribe(ctx5(t), &paho5.Subscribe{Subscriptions: subs, Properties: props})
	if err != nil {
		t.Fatalf("subscribe %v: %v", subs, err)
	}
	return sa
}

func (c *client5) pub(t *testing.T, p *paho5.Publish) {
	t.Helper()
	if _, err := c.Publish(ctx5(t), p); err != nil {
		t.Fatalf("publish %s: %v", p.Topic, err)
	}
}

// nothingMore publishes the sentinel on topic, which c subscribes to, and
// fails if c receives anything before it.
func (c *client5) nothingMore(t *testing.T, topic, after string) {
	t.Helper()
	c.pub(t, &paho5.Publish{Topic: topic, QoS: 1, Payload: []byte(sentinel)})
	if got := c.in.upTo(t); len(got) != 0 {
		t.Errorf("%s, also %v", after, got)
	}
}

func (c *client5) disconnect(t *testing.T, d *paho5.Disconnect) {
	t.Helper()
	if err := c.Disconnect(d); err != nil {
		t.Fatalf("disconnect: %v", err)
	}
}

func u32(v uint32) *uint32 { return &v }
func u16(v uint16) *uint16 { return &v }

var suiteUserProps = paho5.UserProperties{{Key: "a", Value: "2"}, {Key: "c", Value: "3"}}

// hasSuiteUserProps is the suite's check: a=2 and c=3, in either order.
func hasSuiteUserProps(p *paho5.PublishProperties) bool {
	if p == nil || len(p.User) != 2 {
		return false
	}
	return slices.Equal(p.User, suiteUserProps) || slices.Equal(p.User, paho5.UserProperties{suiteUserProps[1], suiteUserProps[0]})
}

// checkSuiteUserProps checks messages published at QoS 0, 1 and 2 with
// the suite's user properties.
func checkSuiteUserProps(t *testing.T, got []received5) {
	t.Helper()
	for _, m := range got {
		if !hasSuiteUserProps(m.props) {
			t.Errorf("%s QoS %d: user properties %v, want a=2 and c=3", m.topic, m.qos, m.props)
		}
	}
	if q := qosSet(got); !slices.Equal(q, []byte{0, 1, 2}) {
		t.Errorf("QoS %v, want 0, 1 and 2", q)
	}
}

func qosSet(ms []received5) []byte {
	var q []byte
	for _, m := range ms {
		q = append(q, m.qos)
	}
	slices.Sort(q)
	return q
}

// raw5 is an MQTT 5 connection driven packet by packet.
type raw5 struct {
	net.Conn
	t *testing.T
}

func dial5(t *testing.T, b *Broker) *raw5 {
	t.Helper()
	c, err := net.Dial("tcp", b.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &raw5{c, t}
}

func connectPacket5(id string, clean bool, keepalive uint16, props *packets.Properties) *packets.Connect {
	if props == nil {
		props = &packets.Properties{}
	}
	return &packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, ClientID: id, CleanStart: clean, KeepAlive: keepalive,
		UsernameFlag: true, Username: interopUser, PasswordFlag: true, Password: []byte(interopPassword), Properties: props}
}

func (r *raw5) send(p interface {
	WriteTo(io.Writer) (int64, error)
}) {
	r.t.Helper()
	if _, err := p.WriteTo(r); err != nil {
		r.t.Fatalf("send %v: %v", p, err)
	}
}

func (r *raw5) read() (*packets.ControlPacket, error) {
	r.SetReadDeadline(time.Now().Add(wait))
	return packets.ReadPacket(r)
}

// expect reads the next packet and fails unless it is of type typ.
func (r *raw5) expect(typ byte) *packets.ControlPacket {
	r.t.Helper()
	p, err := r.read()
	if err != nil {
		r.t.Fatalf("want %s: %v", packets.NewControlPacket(typ).PacketType(), err)
	}
	if p.Type != typ {
		r.t.Fatalf("got %s, want %s", p, packets.NewControlPacket(typ).PacketType())
	}
	return p
}

func (r *raw5) connect(cp *packets.Connect) *packets.Connack {
	r.t.Helper()
	r.send(cp)
	ca := r.expect(packets.CONNACK).Content.(*packets.Connack)
	if ca.ReasonCode != 0 {
		r.t.Fatalf("connect: reason code %#x", ca.ReasonCode)
	}
	return ca
}

func (r *raw5) subscribe(id uint16, filter string, qos byte) {
	r.t.Helper()
	r.send(&packets.Subscribe{PacketID: id, Subscriptions: []packets.SubOptions{{Topic: filter, QoS: qos}}, Properties: &packets.Properties{}})
	if sa := r.expect(packets.SUBACK).Content.(*packets.Suback); sa.Reasons[0] >= 0x80 {
		r.t.Fatalf("subscribe %s: reason code %#x", filter, sa.Reasons[0])
	}
}

func (r *raw5) publish(id uint16, topic string, qos byte, payload string, props *packets.Properties) {
	r.t.Helper()
	if props == nil {
		props = &packets.Properties{}
	}
	r.send(&packets.Publish{PacketID: id, Topic: topic, QoS: qos, Payload: []byte(payload), Properties: props})
}

// disconnectCodes reads until the connection ends, and returns the reason
// codes of the DISCONNECTs it got; each is passed to each, if not nil.
func (r *raw5) disconnectCodes(each func(code int)) []int {
	var codes []int
	for {
		p, err := r.read()
		if err != nil {
			return codes
		}
		if p.Type == packets.DISCONNECT {
			c := int(p.Content.(*packets.Disconnect).ReasonCode)
			codes = append(codes, c)
			if each != nil {
				each(c)
			}
		}
	}
}

// disconnectedWith reads until the broker's DISCONNECT or the end of the
// connection; it returns the reason code, or -1 when the connection
// ended without one, and fails when it stays open.
func (r *raw5) disconnectedWith() int {
	r.t.Helper()
	for {
		p, err := r.read()
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			r.t.Fatal("the connection stays open")
		case err != nil:
			return -1
		case p.Type == packets.DISCONNECT:
			return int(p.Content.(*packets.Disconnect).ReasonCode)
		}
	}
}

// events observes the broker for what the suite waits seconds for: a
// session expiring, an expired message dropped.
type events struct {
	mqtt.HookBase
	expired chan string // client ids
	dropped chan string // client ids, per message
}

func observe(t *testing.T, b *Broker) *events {
	t.Helper()
	e := &events{expired: make(chan string, 100), dropped: make(chan string, 100)}
	if err := b.srv.AddHook(e, nil); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *events) ID() string { return "interop-events" }

func (e *events) Provides(b byte) bool { return b == mqtt.OnClientExpired || b == mqtt.OnQosDropped }

func (e *events) OnClientExpired(cl *mqtt.Client) { e.expired <- cl.ID }

func (e *events) OnQosDropped(cl *mqtt.Client, _ mochipk.Packet) { e.dropped <- cl.ID }

func waitFor(t *testing.T, ch chan string, id, what string) {
	t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case got := <-ch:
			if got == id {
				return
			}
		case <-deadline:
			t.Fatalf("%s %s: did not happen", id, what)
		}
	}
}

// test_basic
func TestInterop5Basic(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: true}).disconnect(t, &paho5.Disconnect{})
	a := connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: true})
	if rc := a.connack.ReasonCode; rc != 0 {
		t.Errorf("reason code %#x, want success", rc)
	}
	a.sub(t, nil, paho5.SubscribeOptions{Topic: topics5[0], QoS: 2})
	for qos := range byte(3) {
		a.pub(t, &paho5.Publish{Topic: topics5[0], QoS: qos, Payload: fmt.Appendf(nil, "qos %d", qos)})
	}
	a.pub(t, &paho5.Publish{Topic: topics5[0], Payload: []byte(sentinel)})
	if got := a.in.upTo(t); len(got) != 3 {
		t.Errorf("got %v, want the 3 messages", got)
	}

	// A second CONNECT on the socket is a protocol violation.
	r := dial5(t, b)
	r.connect(connectPacket5("myclientid", true, 0, nil))
	r.send(connectPacket5("myclientid", true, 0, nil))
	if rc := r.disconnectedWith(); rc != -1 && rc < 0x80 {
		t.Errorf("second CONNECT: DISCONNECT %#x, want an error", rc)
	}

	// A wrong protocol name is refused.
	r = dial5(t, b)
	cp := connectPacket5("myclientid", true, 0, nil)
	cp.ProtocolName = "hj"
	r.send(cp)
	if p, err := r.read(); err == nil && p.Type == packets.CONNACK && p.Content.(*packets.Connack).ReasonCode == 0 {
		t.Error("protocol name \"hj\": connection accepted")
	}
}

// test_retained_message
func TestInterop5RetainedMessage(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	a := connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: true})
	for qos := range byte(3) {
		a.pub(t, &paho5.Publish{Topic: topics5[qos+1], QoS: qos, Retain: true, Payload: fmt.Appendf(nil, "qos %d", qos),
			Properties: &paho5.PublishProperties{User: suiteUserProps}})
	}
	a.sub(t, nil, paho5.SubscribeOptions{Topic: wildtopics5[5], QoS: 2})
	a.pub(t, &paho5.Publish{Topic: prefix5 + "TopicA/end", Payload: []byte(sentinel)})
	got := a.in.upTo(t)
	if len(got) != 3 {
		t.Fatalf("got %v, want the 3 retained messages", got)
	}
	checkSuiteUserProps(t, got)
}

// test_will_message
func TestInterop5WillMessage(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	bc := connect5(t, b, &paho5.Connect{ClientID: "myclientid2"})
	bc.sub(t, nil, paho5.SubscribeOptions{Topic: topics5[2], QoS: 2})

	// The suite's aclient has keepalive 2 and lets it expire; 1 s finds
	// the same sooner.
	a := dial5(t, b)
	cp := connectPacket5("myclientid", true, 1, nil)
	cp.WillFlag, cp.WillTopic, cp.WillMessage = true, topics5[2], []byte("will message")
	cp.WillProperties = &packets.Properties{WillDelayInterval: u32(0),
		User: []packets.User{{Key: "a", Value: "2"}, {Key: "c", Value: "3"}}}
	a.connect(cp)
	m := bc.in.next(t)
	if m.topic != topics5[2] || m.payload != "will message" {
		t.Fatalf("got %+v, want the will message", m)
	}
	if m.props == nil || !slices.Equal(m.props.User, suiteUserProps) {
		t.Errorf("user properties %v, want [a=2 c=3]", m.props)
	}
	bc.nothingMore(t, topics5[2], "after the will")
}

// test_zero_length_clientid
func TestInterop5ZeroLengthClientID(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	c, err := tryConnect5(t, b, &paho5.Connect{ClientID: "", CleanStart: false})
	if err != nil {
		t.Fatalf("empty client id with clean start false: %v, want accepted", err)
	}
	c.disconnect(t, &paho5.Disconnect{})
	connect5(t, b, &paho5.Connect{ClientID: "", CleanStart: true}).disconnect(t, &paho5.Disconnect{})
}

// test_offline_message_queueing
func TestInterop5OfflineMessageQueueing(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	keep := &paho5.ConnectProperties{SessionExpiryInterval: u32(99999)}
	a := connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: true, Properties: keep})
	a.sub(t, nil, paho5.SubscribeOptions{Topic: wildtopics5[5], QoS: 2})
	a.disconnect(t, &paho5.Disconnect{})

	bc := connect5(t, b, &paho5.Connect{ClientID: "myclientid2", CleanStart: true})
	for qos := range byte(3) {
		bc.pub(t, &paho5.Publish{Topic: topics5[qos+1], QoS: qos, Payload: fmt.Appendf(nil, "qos %d", qos)})
	}
	bc.disconnect(t, &paho5.Disconnect{})

	a = connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: false, Properties: keep})
	a.pub(t, &paho5.Publish{Topic: prefix5 + "TopicA/end", QoS: 2, Payload: []byte(sentinel)})
	got := a.in.upTo(t)
	if len(got) != 2 && len(got) != 3 {
		t.Fatalf("got %v, want 2 or 3 messages", got)
	}
	t.Logf("the broker %s QoS 0 messages for offline clients", map[bool]string{true: "queues", false: "does not queue"}[len(got) == 3])
}

// test_overlapping_subscriptions
func TestInterop5OverlappingSubscriptions(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	a := connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: true})
	a.sub(t, nil, paho5.SubscribeOptions{Topic: wildtopics5[6], QoS: 2}, paho5.SubscribeOptions{Topic: wildtopics5[0], QoS: 1})
	a.pub(t, &paho5.Publish{Topic: topics5[3], QoS: 2, Payload: []byte("overlapping topic filters")})
	a.pub(t, &paho5.Publish{Topic: topics5[3], QoS: 2, Payload: []byte(sentinel)})
	got := a.in.upTo(t)
	switch q := qosSet(got); {
	case len(got) == 1:
		t.Log("one message for all matching overlapping subscriptions")
		if q[0] != 2 {
			t.Errorf("got QoS %d, want 2", q[0])
		}
	case len(got) == 2:
		t.Log("one message per matching overlapping subscription")
		if !slices.Equal(q, []byte{1, 2}) {
			t.Errorf("got QoS %v, want 2 and 1", q)
		}
	default:
		t.Errorf("got %v, want 1 or 2 messages", got)
	}
}

// test_keepalive
func TestInterop5Keepalive(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	bc := connect5(t, b, &paho5.Connect{ClientID: "myclientid2", CleanStart: true, KeepAlive: 0})
	bc.sub(t, nil, paho5.SubscribeOptions{Topic: topics5[4], QoS: 2})

	// The suite's keepalive is 5 s; 1 s, the smallest, finds the same.
	a := dial5(t, b)
	cp := connectPacket5("myclientid", true, 1, nil)
	cp.WillFlag, cp.WillTopic, cp.WillMessage = true, topics5[4], []byte("keepalive expiry")
	cp.WillProperties = &packets.Properties{}
	a.connect(cp)
	if m := bc.in.next(t); m.topic != topics5[4] || m.payload != "keepalive expiry" {
		t.Errorf("got %+v, want the will message", m)
	}
	if rc := a.disconnectedWith(); rc != -1 && rc != int(mochipk.ErrKeepAliveTimeout.Code) {
		t.Errorf("the silent client: DISCONNECT %#x, want %#x (keep alive timeout) or none", rc, mochipk.ErrKeepAliveTimeout.Code)
	}
	bc.nothingMore(t, topics5[4], "after the will")
}

// test_redelivery_on_reconnect
func TestInterop5RedeliveryOnReconnect(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	keep := &packets.Properties{SessionExpiryInterval: u32(99999)}
	// bclient, paused: it completes its own publishes but does not
	// acknowledge the ones it is sent.
	r := dial5(t, b)
	r.connect(connectPacket5("myclientid2", false, 0, keep))
	r.subscribe(1, wildtopics5[6], 2)
	r.publish(2, topics5[1], 1, "", nil)
	r.publish(3, topics5[3], 2, "", nil)
	var unacked []string
	acked := 0
	for acked < 2 || len(unacked) < 2 {
		p, err := r.read()
		if err != nil {
			t.Fatalf("after %d acknowledgements and %v: %v", acked, unacked, err)
		}
		switch p.Type {
		case packets.PUBLISH:
			unacked = append(unacked, p.Content.(*packets.Publish).Topic)
		case packets.PUBACK, packets.PUBCOMP:
			acked++
		case packets.PUBREC:
			r.send(&packets.Pubrel{PacketID: p.PacketID(), Properties: &packets.Properties{}})
		}
	}
	r.send(&packets.Disconnect{Properties: &packets.Properties{}})
	r.Close()

	bc := connect5(t, b, &paho5.Connect{ClientID: "myclientid2", CleanStart: false,
		Properties: &paho5.ConnectProperties{SessionExpiryInterval: u32(99999)}})
	bc.pub(t, &paho5.Publish{Topic: topics5[1], Payload: []byte(sentinel)})
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

// test_subscribe_failure. The suite wants reason code 0x80; a topic the
// ACL denies gets 0x87 (not authorized), as from Mosquitto: both are
// failures, and the issue asks for 0x87.
func TestInterop5SubscribeFailure(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	a := connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: true})
	sa, err := a.Subscribe(ctx5(t), &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: suiteNoSubscribe, QoS: 2}}})
	if sa == nil {
		t.Fatalf("subscribe: %v", err)
	}
	if rc := sa.Reasons[0]; rc != 0x87 {
		t.Errorf("reason code %#x, want a failure: 0x87", rc)
	}
}

// test_dollar_topics
func TestInterop5DollarTopics(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	bc := connect5(t, b, &paho5.Connect{ClientID: "myclientid2", CleanStart: true, KeepAlive: 0})
	bc.sub(t, nil, paho5.SubscribeOptions{Topic: wildtopics5[5], QoS: 2})
	// Not in the suite: a subscriber to the $ topic itself shows the
	// message was published.
	c := connect5(t, b, &paho5.Connect{ClientID: "dollar-subscriber", CleanStart: true})
	c.sub(t, nil, paho5.SubscribeOptions{Topic: "$" + topics5[1], QoS: 2})
	bc.pub(t, &paho5.Publish{Topic: "$" + topics5[1], QoS: 1})
	if m := c.in.next(t); m.topic != "$"+topics5[1] {
		t.Fatalf("the $ topic's own subscriber got %+v", m)
	}
	bc.nothingMore(t, topics5[1], "+/+ matched a $ topic")
}

// test_unsubscribe
func TestInterop5Unsubscribe(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	bc := connect5(t, b, &paho5.Connect{ClientID: "myclientid2", CleanStart: true})
	for _, topic := range topics5[:3] {
		bc.sub(t, nil, paho5.SubscribeOptions{Topic: topic, QoS: 2})
	}
	if _, err := bc.Unsubscribe(ctx5(t), &paho5.Unsubscribe{Topics: topics5[:1]}); err != nil {
		t.Fatal(err)
	}
	a := connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: true})
	for i, topic := range topics5[:3] {
		a.pub(t, &paho5.Publish{Topic: topic, QoS: 1, Payload: []byte([]string{"topic 0 - unsubscribed", "topic 1", "topic 2"}[i])})
	}
	a.pub(t, &paho5.Publish{Topic: topics5[2], QoS: 1, Payload: []byte(sentinel)})
	got := bc.in.upTo(t)
	if len(got) != 2 || got[0].topic != topics5[1] || got[1].topic != topics5[2] {
		t.Errorf("got %v, want only %s and %s", got, topics5[1], topics5[2])
	}
}

// sessionCheck checks a CONNACK's reason code and session present flag.
func sessionCheck(t *testing.T, a *client5, present bool, when string) {
	t.Helper()
	if rc := a.connack.ReasonCode; rc != 0 {
		t.Errorf("%s: reason code %#x", when, rc)
	}
	if a.connack.SessionPresent != present {
		t.Errorf("%s: session present %v, want %v", when, a.connack.SessionPresent, present)
	}
}

func expiry(s uint32) *paho5.ConnectProperties {
	return &paho5.ConnectProperties{SessionExpiryInterval: u32(s)}
}

// test_session_expiry, but for its sessions of interval 0 (see
// TestInterop5SessionExpiryZero). The suite sleeps past the intervals;
// this test waits for the broker to expire the session, or, to show that
// a session outlived its first interval, for a witness session given the
// same interval to expire.
func TestInterop5SessionExpiry(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	ev := observe(t, b)

	// There after disconnecting, gone once it expires.
	a := connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: true, Properties: expiry(60)})
	sessionCheck(t, a, false, "clean start")
	a.sub(t, nil, paho5.SubscribeOptions{Topic: topics5[0], QoS: 2})
	a.disconnect(t, &paho5.Disconnect{})
	a = connect5(t, b, &paho5.Connect{ClientID: "myclientid", Properties: expiry(1)})
	sessionCheck(t, a, true, "reconnecting within the interval")
	a.disconnect(t, &paho5.Disconnect{})
	waitFor(t, ev.expired, "myclientid", "session expiry")
	// mochi calls OnClientExpired before it deletes the client: a connect
	// in between inherits the session (TestReviewReconnectAsSessionExpires).
	pollUntil(t, "the expired session to be deleted", func() bool { _, ok := b.srv.Clients.Get("myclientid"); return !ok })
	a = connect5(t, b, &paho5.Connect{ClientID: "myclientid", Properties: expiry(1)})
	sessionCheck(t, a, false, "after the session expired")
	a.disconnect(t, &paho5.Disconnect{})

	// The DISCONNECT's interval replaces the CONNECT's.
	a = connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: true, Properties: expiry(1)})
	a.sub(t, nil, paho5.SubscribeOptions{Topic: topics5[0], QoS: 2})
	a.disconnect(t, &paho5.Disconnect{Properties: &paho5.DisconnectProperties{SessionExpiryInterval: u32(60)}})
	connect5(t, b, &paho5.Connect{ClientID: "witness", CleanStart: true, Properties: expiry(1)}).disconnect(t, &paho5.Disconnect{})
	waitFor(t, ev.expired, "witness", "session expiry")
	a = connect5(t, b, &paho5.Connect{ClientID: "myclientid", Properties: expiry(1)})
	sessionCheck(t, a, true, "past the CONNECT's interval, within the DISCONNECT's")
}

// test_session_expiry, its sessions of interval 0: a session ends with
// its connection, whether the CONNECT or the DISCONNECT says 0.
func TestInterop5SessionExpiryZero(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	a := connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: true, Properties: expiry(0)})
	a.sub(t, nil, paho5.SubscribeOptions{Topic: topics5[0], QoS: 2})
	a.disconnect(t, &paho5.Disconnect{})
	a = connect5(t, b, &paho5.Connect{ClientID: "myclientid", Properties: expiry(0)})
	sessionCheck(t, a, false, "after expiry 0")
	a.disconnect(t, &paho5.Disconnect{})

	a = connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: true, Properties: expiry(60)})
	a.sub(t, nil, paho5.SubscribeOptions{Topic: topics5[0], QoS: 2})
	a.disconnect(t, &paho5.Disconnect{Properties: &paho5.DisconnectProperties{SessionExpiryInterval: u32(0)}})
	a = connect5(t, b, &paho5.Connect{ClientID: "myclientid", Properties: expiry(1)})
	sessionCheck(t, a, false, "after a DISCONNECT with interval 0")
}

// test_user_properties
func TestInterop5UserProperties(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	a := connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: true})
	a.sub(t, nil, paho5.SubscribeOptions{Topic: topics5[0], QoS: 2})
	for qos := range byte(3) {
		a.pub(t, &paho5.Publish{Topic: topics5[0], QoS: qos, Properties: &paho5.PublishProperties{User: suiteUserProps}})
	}
	got := []received5{a.in.next(t), a.in.next(t), a.in.next(t)}
	checkSuiteUserProps(t, got)
}

// test_payload_format
func TestInterop5PayloadFormat(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	a := connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: true})
	a.sub(t, nil, paho5.SubscribeOptions{Topic: topics5[0], QoS: 2})
	utf8 := byte(1)
	for qos := range byte(3) {
		a.pub(t, &paho5.Publish{Topic: topics5[0], QoS: qos, Properties: &paho5.PublishProperties{PayloadFormat: &utf8, ContentType: "My name"}})
	}
	got := []received5{a.in.next(t), a.in.next(t), a.in.next(t)}
	for _, m := range got {
		if m.props == nil || m.props.ContentType != "My name" || m.props.PayloadFormat == nil || *m.props.PayloadFormat != 1 {
			t.Errorf("QoS %d: properties %+v, want content type \"My name\" and payload format 1", m.qos, m.props)
		}
	}
	if q := qosSet(got); !slices.Equal(q, []byte{0, 1, 2}) {
		t.Errorf("QoS %v, want 0, 1 and 2", q)
	}
}

// test_publication_expiry. The suite's messages expire after 1 s and 6
// s and it reconnects after 3; here the long-lived ones have 60 s and
// the test waits for the broker to drop the two that expire.
func TestInterop5PublicationExpiry(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	ev := observe(t, b)
	bc := connect5(t, b, &paho5.Connect{ClientID: "myclientid2", CleanStart: true,
		Properties: &paho5.ConnectProperties{SessionExpiryInterval: u32(99999)}})
	bc.sub(t, nil, paho5.SubscribeOptions{Topic: topics5[0], QoS: 2})
	bc.disconnect(t, &paho5.Disconnect{Properties: &paho5.DisconnectProperties{SessionExpiryInterval: u32(999999999)}})

	a := connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: true})
	for _, m := range []struct {
		qos     byte
		expiry  uint32
		payload string
	}{{1, 1, "qos 1 - expire"}, {2, 1, "qos 2 - expire"}, {1, 60, "qos 1 - don't expire"}, {2, 60, "qos 2 - don't expire"}} {
		a.pub(t, &paho5.Publish{Topic: topics5[0], QoS: m.qos, Payload: []byte(m.payload), Properties: &paho5.PublishProperties{MessageExpiry: u32(m.expiry)}})
	}
	waitFor(t, ev.dropped, "myclientid2", "first expired message dropped")
	waitFor(t, ev.dropped, "myclientid2", "second expired message dropped")

	bc = connect5(t, b, &paho5.Connect{ClientID: "myclientid2", Properties: &paho5.ConnectProperties{SessionExpiryInterval: u32(99999)}})
	bc.pub(t, &paho5.Publish{Topic: topics5[0], Payload: []byte(sentinel)})
	got := bc.in.upTo(t)
	if len(got) != 2 {
		t.Fatalf("got %v, want the 2 messages that have not expired", got)
	}
	for _, m := range got {
		if m.props == nil || m.props.MessageExpiry == nil || *m.props.MessageExpiry >= 60 {
			t.Errorf("%q: message expiry %v, want less than the 60 s it was published with", m.payload, m.props)
		}
	}
}

// test_subscribe_options
func TestInterop5SubscribeOptions(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	end := prefix5 + "TopicA/end" // matches +/+, for the sentinels

	// noLocal
	a := connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: true})
	bc := connect5(t, b, &paho5.Connect{ClientID: "myclientid2", CleanStart: true})
	a.sub(t, nil, paho5.SubscribeOptions{Topic: topics5[0], QoS: 2, NoLocal: true}, paho5.SubscribeOptions{Topic: end, QoS: 2})
	bc.sub(t, nil, paho5.SubscribeOptions{Topic: topics5[0], QoS: 2, NoLocal: true})
	a.pub(t, &paho5.Publish{Topic: topics5[0], QoS: 1, Payload: []byte("noLocal test")})
	if m := bc.in.next(t); m.payload != "noLocal test" {
		t.Errorf("the other subscriber got %+v, want the message", m)
	}
	a.nothingMore(t, end, "noLocal: the publisher got its own message")
	a.disconnect(t, &paho5.Disconnect{})
	bc.disconnect(t, &paho5.Disconnect{})

	// retainAsPublished
	a = connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: true})
	a.sub(t, nil, paho5.SubscribeOptions{Topic: topics5[0], QoS: 2, RetainAsPublished: true})
	a.pub(t, &paho5.Publish{Topic: topics5[0], QoS: 1, Payload: []byte("retain as published false")})
	a.pub(t, &paho5.Publish{Topic: topics5[0], QoS: 1, Retain: true, Payload: []byte("retain as published true")})
	a.pub(t, &paho5.Publish{Topic: topics5[0], QoS: 1, Payload: []byte(sentinel)})
	got := a.in.upTo(t)
	if len(got) != 2 || got[0].retained || !got[1].retained {
		t.Errorf("retainAsPublished: got %v, want retain false then true", got)
	}
	a.pub(t, &paho5.Publish{Topic: topics5[0], QoS: 1, Retain: true}) // clears it
	a.disconnect(t, &paho5.Disconnect{})

	// retainHandling
	retained := func(a *client5, handling byte, want int, when string) {
		t.Helper()
		a.sub(t, nil, paho5.SubscribeOptions{Topic: wildtopics5[5], QoS: 2, RetainHandling: handling})
		a.pub(t, &paho5.Publish{Topic: end, QoS: 1, Payload: []byte(sentinel)})
		got := a.in.upTo(t)
		if len(got) != want {
			t.Errorf("retainHandling %d, %s: got %v, want %d retained messages", handling, when, got, want)
		} else if want == 3 && !slices.Equal(qosSet(got), []byte{0, 1, 2}) {
			t.Errorf("retainHandling %d, %s: QoS %v, want 0, 1 and 2", handling, when, qosSet(got))
		}
	}
	a = connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: true})
	for qos := range byte(3) {
		a.pub(t, &paho5.Publish{Topic: topics5[qos+1], QoS: qos, Retain: true, Payload: fmt.Appendf(nil, "qos %d", qos)})
	}
	retained(a, 1, 3, "new subscription")
	retained(a, 1, 0, "existing subscription")
	a.disconnect(t, &paho5.Disconnect{})
	a = connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: true})
	retained(a, 2, 0, "new subscription")
	retained(a, 2, 0, "existing subscription")
	a.disconnect(t, &paho5.Disconnect{})
	a = connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: true})
	retained(a, 0, 3, "new subscription")
	retained(a, 0, 3, "existing subscription")
}

// test_assigned_clientid
func TestInterop5AssignedClientID(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	c := connect5(t, b, &paho5.Connect{ClientID: "", CleanStart: true})
	if c.connack.Properties == nil || c.connack.Properties.AssignedClientID == "" {
		t.Errorf("CONNACK properties %+v: no assigned client identifier", c.connack.Properties)
	}
}

// test_subscribe_identifiers
func TestInterop5SubscribeIdentifiers(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	id := func(v int) *paho5.SubscribeProperties { return &paho5.SubscribeProperties{SubscriptionIdentifier: &v} }
	a := connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: true})
	a.sub(t, id(456789), paho5.SubscribeOptions{Topic: topics5[0], QoS: 2})

	// bclient reads the PUBLISH itself: paho.golang keeps one
	// subscription identifier of a message, and it has two.
	r := dial5(t, b)
	r.connect(connectPacket5("myclientid2", true, 0, nil))
	for i, sub := range []struct {
		filter string
		id     int
	}{{topics5[0], 2}, {topics5[0] + "/#", 3}} {
		r.send(&packets.Subscribe{PacketID: uint16(i + 1), Subscriptions: []packets.SubOptions{{Topic: sub.filter, QoS: 2}},
			Properties: &packets.Properties{SubscriptionIdentifier: &sub.id}})
		r.expect(packets.SUBACK)
	}
	r.publish(3, topics5[0], 1, "sub identifier test", nil)

	m := a.in.next(t)
	if m.props == nil || m.props.SubscriptionIdentifier == nil || *m.props.SubscriptionIdentifier != 456789 {
		t.Errorf("aclient: subscription identifier %v, want 456789", m.props)
	}
	for {
		typ, body := r.readRaw()
		if typ != packets.PUBLISH {
			continue
		}
		if ids := publishSubscriptionIDs(t, body); !slices.Equal(ids, []int{2, 3}) && !slices.Equal(ids, []int{3, 2}) {
			t.Errorf("bclient: subscription identifiers %v, want 2 and 3", ids)
		}
		break
	}
}

// readRaw reads one packet's type and body (after the fixed header).
func (r *raw5) readRaw() (byte, []byte) {
	r.t.Helper()
	r.SetReadDeadline(time.Now().Add(wait))
	var h [1]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		r.t.Fatal(err)
	}
	n, err := readVBI(r)
	if err != nil {
		r.t.Fatal(err)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		r.t.Fatal(err)
	}
	return h[0] >> 4, body
}

func readVBI(r io.ByteReader) (int, error) {
	v, shift := 0, 0
	for {
		c, err := r.ReadByte()
		if err != nil {
			return 0, err
		}
		v |= int(c&0x7f) << shift
		if c&0x80 == 0 {
			return v, nil
		}
		if shift += 7; shift > 21 {
			return 0, errors.New("malformed variable byte integer")
		}
	}
}

type byteReader struct{ io.Reader }

func (b byteReader) ReadByte() (byte, error) {
	var c [1]byte
	_, err := io.ReadFull(b.Reader, c[:])
	return c[0], err
}

func (r *raw5) ReadByte() (byte, error) { return byteReader{r.Conn}.ReadByte() }

// publishSubscriptionIDs returns every subscription identifier in the
// properties of a QoS 1 or 2 PUBLISH's body.
func publishSubscriptionIDs(t *testing.T, body []byte) []int {
	t.Helper()
	rd := bytes.NewReader(body)
	skip := func(n int) { rd.Seek(int64(n), io.SeekCurrent) }
	u16 := func() int { var b [2]byte; io.ReadFull(rd, b[:]); return int(b[0])<<8 | int(b[1]) }
	skip(u16()) // topic
	skip(2)     // packet id
	n, err := readVBI(rd)
	if err != nil {
		t.Fatal(err)
	}
	end := rd.Len() - n
	var ids []int
	for rd.Len() > end {
		id, _ := rd.ReadByte()
		switch id {
		case 0x01: // payload format
			skip(1)
		case 0x23: // topic alias
			skip(2)
		case 0x02: // message expiry
			skip(4)
		case 0x03, 0x08, 0x09: // content type, response topic, correlation data
			skip(u16())
		case 0x26: // user property
			skip(u16())
			skip(u16())
		case 0x0b:
			v, err := readVBI(rd)
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, v)
		default:
			t.Fatalf("PUBLISH property %#x not expected", id)
		}
	}
	return ids
}

// test_request_response
func TestInterop5RequestResponse(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	a := connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: true})
	bc := connect5(t, b, &paho5.Connect{ClientID: "myclientid2", CleanStart: true})
	a.sub(t, nil, paho5.SubscribeOptions{Topic: topics5[0], QoS: 2, NoLocal: true})
	bc.sub(t, nil, paho5.SubscribeOptions{Topic: topics5[0], QoS: 2, NoLocal: true})
	a.pub(t, &paho5.Publish{Topic: topics5[0], QoS: 1, Payload: []byte("request"),
		Properties: &paho5.PublishProperties{ResponseTopic: topics5[0], CorrelationData: []byte("334")}})
	req := bc.in.next(t)
	if req.props == nil || req.props.ResponseTopic != topics5[0] || string(req.props.CorrelationData) != "334" {
		t.Fatalf("responder got %+v %+v, want response topic %s and correlation data 334", req, req.props, topics5[0])
	}
	bc.pub(t, &paho5.Publish{Topic: req.props.ResponseTopic, QoS: 1, Payload: []byte("response"),
		Properties: &paho5.PublishProperties{CorrelationData: req.props.CorrelationData}})
	if resp := a.in.next(t); resp.payload != "response" || resp.props == nil || string(resp.props.CorrelationData) != "334" {
		t.Errorf("requester got %+v %+v, want the response with correlation data 334", resp, resp.props)
	}
}

// exchange reads until n PUBLISHes have come, acknowledging them and
// completing the client's own QoS 2 publishes meanwhile.
func (r *raw5) exchange(n int) []*packets.Publish {
	r.t.Helper()
	var got []*packets.Publish
	for len(got) < n {
		p, err := r.read()
		if err != nil {
			r.t.Fatalf("after %d PUBLISH: %v", len(got), err)
		}
		props := &packets.Properties{}
		switch p.Type {
		case packets.PUBLISH:
			pb := p.Content.(*packets.Publish)
			got = append(got, pb)
			switch pb.QoS {
			case 1:
				r.send(&packets.Puback{PacketID: pb.PacketID, Properties: props})
			case 2:
				r.send(&packets.Pubrec{PacketID: pb.PacketID, Properties: props})
			}
		case packets.PUBREC:
			r.send(&packets.Pubrel{PacketID: p.PacketID(), Properties: props})
		case packets.PUBREL:
			r.send(&packets.Pubcomp{PacketID: p.PacketID(), Properties: props})
		case packets.DISCONNECT:
			r.t.Fatalf("DISCONNECT %#x after %d PUBLISH", p.Content.(*packets.Disconnect).ReasonCode, len(got))
		}
	}
	return got
}

// test_client_topic_alias
func TestInterop5ClientTopicAlias(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	alias := func(a uint16) *packets.Properties { return &packets.Properties{TopicAlias: &a} }

	r := dial5(t, b)
	r.connect(connectPacket5("myclientid", true, 0, nil))
	r.publish(1, topics5[0], 1, "topic alias 0", alias(0))
	if rc := r.disconnectedWith(); rc == -1 {
		t.Error("topic alias 0: connection closed without a DISCONNECT")
	} else if rc != int(mochipk.ErrTopicAliasInvalid.Code) {
		t.Errorf("topic alias 0: DISCONNECT %#x, want %#x", rc, mochipk.ErrTopicAliasInvalid.Code)
	}

	r = dial5(t, b)
	ca := r.connect(connectPacket5("myclientid", true, 0, &packets.Properties{TopicAliasMaximum: u16(0), SessionExpiryInterval: u32(99999)}))
	if ca.Properties == nil || ca.Properties.TopicAliasMaximum == nil || *ca.Properties.TopicAliasMaximum == 0 {
		t.Log("the broker takes no topic aliases")
		return
	}
	r.subscribe(1, topics5[0], 2)
	r.publish(2, topics5[0], 1, "topic alias 1", alias(1))
	r.publish(3, "", 1, "topic alias 2", alias(1))
	for _, m := range r.exchange(2) {
		if m.Topic != topics5[0] {
			t.Errorf("%q arrived on %q, want %s", m.Payload, m.Topic, topics5[0])
		}
	}
	r.send(&packets.Disconnect{Properties: &packets.Properties{}})
	r.Close()

	// The aliases end with the connection, the subscription does not.
	r = dial5(t, b)
	r.connect(connectPacket5("myclientid", false, 0, nil))
	r.publish(4, topics5[0], 1, "topic alias 3", nil)
	r.exchange(1)
	r.publish(5, "", 1, "topic alias 4", alias(1))
	// The broker reads packets in order: a PUBACK, or a PINGRESP, says it
	// let the publish pass without disconnecting.
	r.send(&packets.Pingreq{})
	p, err := r.read()
	switch {
	case err != nil:
		t.Errorf("an alias from the last connection: %v, want a DISCONNECT", err)
	case p.Type != packets.DISCONNECT || p.Content.(*packets.Disconnect).ReasonCode != 0x82:
		t.Errorf("an alias from the last connection: got %s, want DISCONNECT with an error", p)
	}
}

// test_server_topic_alias
func TestInterop5ServerTopicAlias(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	for _, tc := range []struct {
		name    string
		maximum *uint16
	}{{"topic alias maximum 1", u16(1)}, {"no topic alias maximum", nil}, {"topic alias maximum 0", u16(0)}} {
		r := dial5(t, b)
		r.connect(connectPacket5("myclientid", true, 0, &packets.Properties{TopicAliasMaximum: tc.maximum}))
		r.subscribe(1, topics5[0], 2)
		for qos := range byte(3) {
			r.publish(uint16(qos+2), topics5[0], qos, "topic alias 1", nil)
		}
		got := r.exchange(3)
		r.send(&packets.Disconnect{Properties: &packets.Properties{}})
		r.Close()
		if tc.maximum == nil || *tc.maximum == 0 {
			for _, m := range got {
				if m.Properties != nil && m.Properties.TopicAlias != nil {
					t.Errorf("%s: topic alias %d, want none", tc.name, *m.Properties.TopicAlias)
				}
			}
			continue
		}
		// The first message sets the alias; the next ones use it.
		first := got[0].Properties.TopicAlias
		if first == nil || *first == 0 || got[0].Topic != topics5[0] {
			t.Fatalf("%s: first message: topic %q, alias %v, want %s and an alias", tc.name, got[0].Topic, first, topics5[0])
		}
		for _, m := range got[1:] {
			if a := m.Properties.TopicAlias; a == nil || *a != *first || m.Topic != "" {
				t.Errorf("%s: then topic %q, alias %v, want \"\" and %d", tc.name, m.Topic, a, *first)
			}
		}
	}
}

// test_maximum_packet_size. The suite tries a packet too large only when
// the broker's maximum is below 64 KiB; the default is 256 KiB, so this
// test sets max_packet_size to 1 KiB, as a site may.
func TestInterop5MaximumPacketSize(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{MaxPacketSize: 1024})

	// The broker's maximum.
	a := connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: true})
	serverMax := uint32(1<<28 - 1)
	if p := a.connack.Properties; p != nil && p.MaximumPacketSize != nil {
		serverMax = *p.MaximumPacketSize
	}
	if serverMax >= 65535 {
		t.Fatalf("CONNACK maximum packet size %d, want the 1024 configured", serverMax)
	}
	a.Publish(ctx5(t), &paho5.Publish{Topic: topics5[0], Payload: bytes.Repeat([]byte("."), int(serverMax))})
	noDisconnect := false
	select {
	case d := <-a.disconnects:
		if d.ReasonCode != mochipk.ErrPacketTooLarge.Code {
			t.Errorf("DISCONNECT %#x, want %#x (packet too large)", d.ReasonCode, mochipk.ErrPacketTooLarge.Code)
		}
	case <-a.Done():
		select {
		case d := <-a.disconnects: // paho may end before it reports the DISCONNECT
			if d.ReasonCode != mochipk.ErrPacketTooLarge.Code {
				t.Errorf("DISCONNECT %#x, want %#x (packet too large)", d.ReasonCode, mochipk.ErrPacketTooLarge.Code)
			}
		case <-time.After(time.Second):
			noDisconnect = true // see the end
		}
	case <-time.After(wait):
		t.Error("a packet too large: still connected")
	}

	// The client's maximum.
	a = connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: true,
		Properties: &paho5.ConnectProperties{MaximumPacketSize: u32(64)}})
	a.sub(t, nil, paho5.SubscribeOptions{Topic: topics5[0], QoS: 2})
	a.pub(t, &paho5.Publish{Topic: topics5[0], Payload: bytes.Repeat([]byte("."), 32)})
	if m := a.in.next(t); len(m.payload) != 32 {
		t.Errorf("got %d bytes, want the 32 sent", len(m.payload))
	}
	a.pub(t, &paho5.Publish{Topic: topics5[0], QoS: 1, Payload: bytes.Repeat([]byte("."), 64)})
	a.nothingMore(t, topics5[0], "a packet larger than the client's maximum was sent")

	if noDisconnect {
		t.Error("a packet too large: the connection ended without a DISCONNECT 0x95")
	}
}

// test_server_keep_alive. The suite's broker bounds keepalive to 60 s:
// so does max_keepalive here.
func TestInterop5ServerKeepAlive(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{MaxKeepalive: 60 * time.Second})
	a := connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: true, KeepAlive: 120})
	if p := a.connack.Properties; p == nil || p.ServerKeepAlive == nil || *p.ServerKeepAlive != 60 {
		t.Errorf("CONNACK properties %+v, want server keep alive 60", p)
	}
}

// test_flow_control1: the broker sends no more QoS 1 and 2 messages at
// once than the client's receive maximum.
func TestInterop5FlowControl1(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	const receiveMaximum = 2
	r := dial5(t, b)
	r.connect(connectPacket5("myclientid", true, 0, &packets.Properties{ReceiveMaximum: u16(receiveMaximum), SessionExpiryInterval: u32(0)}))
	r.subscribe(1, topics5[0], 2)
	for i := range uint16(receiveMaximum + 1) {
		r.publish(10+i, topics5[0], 1, fmt.Sprint("message ", i+1), nil)
	}
	var publishes []*packets.Publish
	for acks := 0; acks < receiveMaximum+1 || len(publishes) < receiveMaximum; {
		p := r.expectOneOf(packets.PUBLISH, packets.PUBACK)
		if p.Type == packets.PUBACK {
			acks++
			continue
		}
		if publishes = append(publishes, p.Content.(*packets.Publish)); len(publishes) > receiveMaximum {
			t.Fatalf("%d QoS 1 messages unacknowledged, receive maximum %d", len(publishes), receiveMaximum)
		}
	}
	// A QoS 0 message is not held back: the third QoS 1 one would have
	// come before it.
	r.publish(0, topics5[0], 0, sentinel, nil)
	if p := r.expect(packets.PUBLISH).Content.(*packets.Publish); string(p.Payload) != sentinel {
		t.Fatalf("got %q before the first was acknowledged, receive maximum %d", p.Payload, receiveMaximum)
	}
	r.send(&packets.Puback{PacketID: publishes[0].PacketID, Properties: &packets.Properties{}})
	third := r.expect(packets.PUBLISH).Content.(*packets.Publish)
	if third.QoS != 1 || string(third.Payload) != "message 3" {
		t.Errorf("after the first acknowledgement: got %q QoS %d, want \"message 3\" QoS 1", third.Payload, third.QoS)
	}
	for _, p := range []*packets.Publish{publishes[1], third} {
		r.send(&packets.Puback{PacketID: p.PacketID, Properties: &packets.Properties{}})
	}
	r.send(&packets.Disconnect{Properties: &packets.Properties{}})
}

// expectOneOf reads the next packet, which must be of one of the types.
func (r *raw5) expectOneOf(types ...byte) *packets.ControlPacket {
	r.t.Helper()
	p, err := r.read()
	if err != nil {
		r.t.Fatal(err)
	}
	if !slices.Contains(types, p.Type) {
		r.t.Fatalf("got %s", p)
	}
	return p
}

// test_flow_control2: a client that sends more QoS 2 messages at once
// than the broker's receive maximum is disconnected with 0x93.
func TestInterop5FlowControl2(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	r := dial5(t, b)
	ca := r.connect(connectPacket5("myclientid", true, 0, &packets.Properties{SessionExpiryInterval: u32(0)}))
	serverMax := 65535
	if ca.Properties != nil && ca.Properties.ReceiveMaximum != nil {
		serverMax = int(*ca.Properties.ReceiveMaximum)
	}
	for i := 1; i <= serverMax+1; i++ {
		r.publish(uint16(i), topics5[0], 2, fmt.Sprint("message ", i), nil)
	}
	if rc := r.disconnectedWith(); rc != int(mochipk.ErrReceiveMaximum.Code) {
		t.Errorf("DISCONNECT %#x, want 0x93 (receive maximum exceeded)", rc)
	}
}

// test_will_delay. The suite times the will to a second; this test checks
// that the will does not come before its delay, and comes when the
// session ends if that is sooner.
func TestInterop5WillDelay(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name                 string
		willDelay, sessionEx uint32
		notBefore            time.Duration
	}{
		{"will delay before session expiry", 2, 3600, time.Second},
		{"session expiry 0, will delay longer", 3600, 0, 0},
		{"session expiry before will delay", 3600, 2, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := interopBroker(t, Limits{})
			bc := connect5(t, b, &paho5.Connect{ClientID: "myclientid2", CleanStart: true})
			bc.sub(t, nil, paho5.SubscribeOptions{Topic: topics5[0], QoS: 2})

			r := dial5(t, b)
			cp := connectPacket5("myclientid", true, 0, &packets.Properties{SessionExpiryInterval: u32(tc.sessionEx)})
			cp.WillFlag, cp.WillTopic, cp.WillMessage = true, topics5[0], []byte("test_will_delay will message")
			cp.WillProperties = &packets.Properties{WillDelayInterval: u32(tc.willDelay)}
			if ca := r.connect(cp); ca.SessionPresent {
				t.Error("session present on a clean start")
			}
			r.Close() // terminate
			start := time.Now()
			m := bc.in.next(t)
			if took := time.Since(start); took < tc.notBefore {
				t.Errorf("the will came after %v, before its delay", took)
			}
			if m.topic != topics5[0] || m.payload != "test_will_delay will message" {
				t.Errorf("got %+v, want the will message", m)
			}
		})
	}
}

// test_shared_subscriptions
func TestInterop5SharedSubscriptions(t *testing.T) {
	t.Parallel()
	b := interopBroker(t, Limits{})
	shared := []paho5.SubscribeOptions{{Topic: "$share/sharename/" + prefix5 + "x", QoS: 2}, {Topic: topics5[0], QoS: 2}}
	a := connect5(t, b, &paho5.Connect{ClientID: "myclientid", CleanStart: true})
	if a.connack.ReasonCode != 0 || a.connack.SessionPresent {
		t.Errorf("connect: reason code %#x, session present %v", a.connack.ReasonCode, a.connack.SessionPresent)
	}
	for _, c := range []*client5{a} {
		if sa := c.sub(t, nil, shared...); sa.Reasons[0] >= 0x80 || sa.Reasons[1] >= 0x80 {
			t.Fatalf("subscribe: reason codes %#x", sa.Reasons)
		}
	}
	bc := connect5(t, b, &paho5.Connect{ClientID: "myclientid2", CleanStart: true})
	if sa := bc.sub(t, nil, shared...); sa.Reasons[0] >= 0x80 || sa.Reasons[1] >= 0x80 {
		t.Fatalf("subscribe: reason codes %#x", sa.Reasons)
	}

	bc.pub(t, &paho5.Publish{Topic: topics5[0], Payload: []byte("message 0")})
	for _, c := range []*client5{a, bc} {
		if m := c.in.next(t); m.payload != "message 0" {
			t.Errorf("%s got %+v, want the message on the ordinary subscription", c.ClientID(), m)
		}
	}
	bc.pub(t, &paho5.Publish{Topic: prefix5 + "x", Payload: []byte("message 0")})
	bc.pub(t, &paho5.Publish{Topic: topics5[0], Payload: []byte(sentinel)})
	if got := len(a.in.upTo(t)) + len(bc.in.upTo(t)); got != 1 {
		t.Errorf("a shared subscription's message arrived %d times, want once", got)
	}
}

// interop5Storing is the MQTT 5 suite for TestInteropStoring.
var interop5Storing = []struct {
	name string
	fn   func(*testing.T)
}{
	{"5Basic", TestInterop5Basic},
	{"5RetainedMessage", TestInterop5RetainedMessage},
	{"5WillMessage", TestInterop5WillMessage},
	{"5ZeroLengthClientID", TestInterop5ZeroLengthClientID},
	{"5OfflineMessageQueueing", TestInterop5OfflineMessageQueueing},
	{"5OverlappingSubscriptions", TestInterop5OverlappingSubscriptions},
	{"5Keepalive", TestInterop5Keepalive},
	{"5RedeliveryOnReconnect", TestInterop5RedeliveryOnReconnect},
	{"5SubscribeFailure", TestInterop5SubscribeFailure},
	{"5DollarTopics", TestInterop5DollarTopics},
	{"5Unsubscribe", TestInterop5Unsubscribe},
	{"5SessionExpiry", TestInterop5SessionExpiry},
	{"5SessionExpiryZero", TestInterop5SessionExpiryZero},
	{"5UserProperties", TestInterop5UserProperties},
	{"5PayloadFormat", TestInterop5PayloadFormat},
	{"5PublicationExpiry", TestInterop5PublicationExpiry},
	{"5SubscribeOptions", TestInterop5SubscribeOptions},
	{"5AssignedClientID", TestInterop5AssignedClientID},
	{"5SubscribeIdentifiers", TestInterop5SubscribeIdentifiers},
	{"5RequestResponse", TestInterop5RequestResponse},
	{"5ClientTopicAlias", TestInterop5ClientTopicAlias},
	{"5ServerTopicAlias", TestInterop5ServerTopicAlias},
	{"5MaximumPacketSize", TestInterop5MaximumPacketSize},
	{"5ServerKeepAlive", TestInterop5ServerKeepAlive},
	{"5FlowControl1", TestInterop5FlowControl1},
	{"5FlowControl2", TestInterop5FlowControl2},
	{"5WillDelay", TestInterop5WillDelay},
	{"5SharedSubscriptions", TestInterop5SharedSubscriptions},
}
