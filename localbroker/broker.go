// Package localbroker is Fieldgate's embedded MQTT 3.1.1/5 broker for the
// site's own devices: mochi-mqtt/server v2 with our hooks around it.
//
// Every publish the broker accepts, from a network client or from the
// gateway's own sensors, is handed to Options.Forward before it is
// acknowledged; that is where the bridge takes what it sends upstream.
package localbroker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// ErrRejected is returned by a Forward func that refuses a message (for
// example because the outbox is full). A QoS 1 publisher on MQTT 5 gets
// reason code 0x97 (quota exceeded) and the message is not delivered.
var ErrRejected = errors.New("localbroker: message rejected")

// Message is a publish accepted by the broker.
type Message struct {
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
}

// Listener is one network listener.
type Listener struct {
	// Address is host:port. The caller has checked that a plain-TCP
	// listener is on loopback.
	Address string
}

// Options configure a Broker.
type Options struct {
	Listeners []Listener
	// Forward, if set, is called for every accepted publish, before the
	// publisher is acknowledged, except those sent with PublishLocal.
	// An error wrapping ErrRejected refuses the message.
	Forward func(Message) error
}

// Broker is a running local broker.
type Broker struct {
	srv    *mqtt.Server
	log    *slog.Logger
	uplink *mqtt.Client // inline identity for messages from the uplink
	addrs  []string
}

// uplinkClientID is the inline client that PublishLocal publishes as. Its
// messages are never forwarded, so a route in both directions cannot loop.
const uplinkClientID = "fieldgate-uplink"

// New starts a broker with o's listeners bound. Close stops it.
func New(o *Options, log *slog.Logger) (*Broker, error) {
	if o == nil {
		o = &Options{}
	}
	srv := mqtt.New(&mqtt.Options{
		InlineClient: true,
		// mochi tells at Info level of every hook and listener it adds;
		// the start-up line of the gateway says what matters.
		Logger: slog.New(minLevel{slog.LevelWarn, log.Handler()}),
	})
	b := &Broker{srv: srv, log: log}
	if err := srv.AddHook(&gateHook{log: log, forward: o.Forward}, nil); err != nil {
		return nil, fmt.Errorf("localbroker: %w", err)
	}
	for i, l := range o.Listeners {
		ln := listeners.NewTCP(listeners.Config{ID: fmt.Sprintf("tcp%d", i), Address: l.Address})
		if err := srv.AddListener(ln); err != nil {
			srv.Close()
			return nil, fmt.Errorf("localbroker: listen on %s: %w", l.Address, err)
		}
		b.addrs = append(b.addrs, ln.Address())
	}
	if err := srv.Serve(); err != nil {
		srv.Close()
		return nil, fmt.Errorf("localbroker: %w", err)
	}
	b.uplink = srv.NewClient(nil, mqtt.LocalListener, uplinkClientID, true)
	return b, nil
}

// Addrs returns the addresses the listeners are bound to (with the real
// port when the configuration asked for port 0).
func (b *Broker) Addrs() []string { return b.addrs }

// Publish publishes a message from the gateway itself (its sensors). It is
// handed to Forward like any client's publish.
func (b *Broker) Publish(m Message) error {
	return b.srv.Publish(m.Topic, m.Payload, m.Retain, m.QoS)
}

// PublishLocal delivers a message that came from the central broker to the
// local subscribers only: it is never handed to Forward.
func (b *Broker) PublishLocal(m Message) error {
	return b.srv.InjectPacket(b.uplink, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: m.QoS, Retain: m.Retain},
		TopicName:   m.Topic,
		Payload:     m.Payload,
		PacketID:    uint16(m.QoS),
	})
}

// Subscribe calls fn for every message published on topics matching
// filter. id must be unique per filter among the gateway's subscriptions.
func (b *Broker) Subscribe(filter string, id int, fn func(Message)) error {
	return b.srv.Subscribe(filter, id, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		fn(Message{Topic: pk.TopicName, Payload: pk.Payload, QoS: pk.FixedHeader.Qos, Retain: pk.FixedHeader.Retain})
	})
}

// Close disconnects every client and closes the listeners.
func (b *Broker) Close() error {
	return b.srv.Close()
}

// gateHook decides who may connect and hands accepted publishes to the
// forwarder. Until a password file or client certificates are configured
// (issue 3), no network client is let in: anonymous access is never the
// default.
type gateHook struct {
	mqtt.HookBase
	log     *slog.Logger
	forward func(Message) error
}

func (h *gateHook) ID() string { return "fieldgate-gate" }

func (h *gateHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnPublish}, []byte{b})
}

func (h *gateHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	h.log.Info("client refused: no credentials are accepted yet (anonymous access is disabled)",
		"client_id", cl.ID, "remote", remoteAddr(cl))
	return false
}

func (h *gateHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	return false
}

func (h *gateHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if h.forward == nil || cl.ID == uplinkClientID {
		return pk, nil
	}
	err := h.forward(Message{Topic: pk.TopicName, Payload: pk.Payload, QoS: pk.FixedHeader.Qos, Retain: pk.FixedHeader.Retain})
	if err == nil {
		return pk, nil
	}
	// mochi answers a Code error with a PUBACK reason code only for MQTT 5
	// QoS>0 publishes; anything else must be dropped explicitly or it
	// would be delivered after all.
	if errors.Is(err, ErrRejected) && !cl.Net.Inline && cl.Properties.ProtocolVersion == 5 && pk.FixedHeader.Qos > 0 {
		return pk, packets.ErrQuotaExceeded
	}
	h.log.Warn("publish refused", "client_id", cl.ID, "topic", pk.TopicName, "err", err)
	return pk, packets.ErrRejectPacket
}

func remoteAddr(cl *mqtt.Client) string {
	if cl.Net.Conn == nil {
		return "inline"
	}
	if a, ok := cl.Net.Conn.RemoteAddr().(*net.TCPAddr); ok {
		return a.String()
	}
	return cl.Net.Remote
}

// minLevel drops records below a level.
type minLevel struct {
	min slog.Level
	slog.Handler
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(as []slog.Attr) slog.Handler {
	return minLevel{h.min, h.Handler.WithAttrs(as)}
}

func (h minLevel) WithGroup(name string) slog.Handler {
	return minLevel{h.min, h.Handler.WithGroup(name)}
}
