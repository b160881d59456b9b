// Package bridge carries selected topics between the local broker and a
// central broker over mutually authenticated TLS.
//
// Messages on "out" routes are queued by Forward and sent in order, one
// route's messages never overtaking each other; a message leaves the queue
// only once the central broker has acknowledged it (QoS 1). Messages on
// "in" routes are handed to Options.Deliver.
package bridge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// ErrQueueFull is returned by Forward when a message cannot be queued.
var ErrQueueFull = errors.New("bridge: queue full")

// Options configure a Bridge.
type Options struct {
	// Addresses of the central broker, tried in order: ssl://host:port.
	Addresses []string
	// TLS holds the device certificate and key and the CA that signed the
	// central broker. It must not be nil.
	TLS      *tls.Config
	ClientID string
	Routes   []Route
	// Deliver publishes a message from the central broker on the local
	// broker. Required when a route carries messages in.
	Deliver func(topic string, payload []byte, qos byte, retain bool) error

	QueueSize    int           // messages held while the uplink is down; default 10000
	KeepAlive    time.Duration // default 30s
	ReconnectMin time.Duration // default 1s
	ReconnectMax time.Duration // default 2m
	// FlushTimeout bounds how long Run keeps sending the queue once its
	// context is done. Default 5s.
	FlushTimeout time.Duration
}

// Status is a snapshot of the uplink.
type Status struct {
	Connected   bool
	Attempts    uint64 // connection attempts so far
	Connections uint64 // attempts that succeeded
	LastError   string // why the last attempt or connection failed
	Queued      int    // messages waiting to be sent
	Sent        uint64 // messages acknowledged by the central broker
	Dropped     uint64 // messages dropped because the queue was full
	Received    uint64 // messages from the central broker delivered locally
}

// Bridge is the uplink to the central broker.
type Bridge struct {
	o   Options
	log *slog.Logger

	mu      sync.Mutex
	queue   []message
	seq     uint64 // of the last message queued
	st      Status
	changed chan struct{} // closed and replaced on every change of st or queue
	lostErr chan error
}

type message struct {
	seq     uint64
	topic   string
	payload []byte
	qos     byte
	retain  bool
}

// New returns a Bridge; Run connects it.
func New(o Options, log *slog.Logger) (*Bridge, error) {
	if len(o.Addresses) == 0 {
		return nil, errors.New("bridge: no address")
	}
	if o.TLS == nil {
		return nil, errors.New("bridge: no TLS configuration")
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 10000
	}
	if o.KeepAlive <= 0 {
		o.KeepAlive = 30 * time.Second
	}
	if o.ReconnectMin <= 0 {
		o.ReconnectMin = time.Second
	}
	if o.ReconnectMax < o.ReconnectMin {
		o.ReconnectMax = max(2*time.Minute, o.ReconnectMin)
	}
	if o.FlushTimeout <= 0 {
		o.FlushTimeout = 5 * time.Second
	}
	for _, r := range o.Routes {
		if r.Direction&In != 0 && o.Deliver == nil {
			return nil, errors.New("bridge: a route carries messages in but Deliver is nil")
		}
	}
	return &Bridge{o: o, log: log, changed: make(chan struct{}), lostErr: make(chan error, 1)}, nil
}

// Forward queues a local message for the central broker if an "out" route
// matches its topic; the first matching route decides. It does not block.
func (b *Bridge) Forward(topic string, payload []byte, qos byte, retain bool) error {
	for i := range b.o.Routes {
		r := &b.o.Routes[i]
		if r.Direction&Out == 0 || !Match(r.Local, topic) {
			continue
		}
		// The route's QoS is the uplink's: a reading published at QoS 0 on
		// the local broker still travels upstream at least once.
		m := message{topic: r.RemoteTopic(topic), payload: payload, qos: r.QoS, retain: retain}
		b.update(func(st *Status) {
			b.seq++
			m.seq = b.seq
			if len(b.queue) >= b.o.QueueSize {
				b.queue = b.queue[1:] // drop-oldest: telemetry keeps the newest
				st.Dropped++
			}
			b.queue = append(b.queue, m)
		})
		return nil
	}
	return nil
}

// Status returns a snapshot of the uplink.
func (b *Bridge) Status() Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.st
	st.Queued = len(b.queue)
	return st
}

// Wait blocks until cond holds for the status or ctx ends.
func (b *Bridge) Wait(ctx context.Context, cond func(Status) bool) (Status, error) {
	for {
		b.mu.Lock()
		st := b.st
		st.Queued = len(b.queue)
		ch := b.changed
		b.mu.Unlock()
		if cond(st) {
			return st, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return st, ctx.Err()
		}
	}
}

func (b *Bridge) update(f func(*Status)) {
	b.mu.Lock()
	f(&b.st)
	close(b.changed)
	b.changed = make(chan struct{})
	b.mu.Unlock()
}

// Run connects to the central broker, reconnecting with backoff, and sends
// the queue until ctx ends; then it flushes for up to FlushTimeout and
// disconnects.
func (b *Bridge) Run(ctx context.Context) error {
	opts := paho.NewClientOptions()
	for _, a := range b.o.Addresses {
		opts.AddBroker(a)
	}
	opts.SetClientID(b.o.ClientID).
		SetTLSConfig(b.o.TLS).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetKeepAlive(b.o.KeepAlive).
		SetConnectTimeout(15 * time.Second).
		SetOrderMatters(false).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case b.lostErr <- err:
			default:
			}
		})
	client := paho.NewClient(opts)

	var lastLogged string
	var ceil, delay time.Duration
	for {
		if ctx.Err() != nil {
			b.dropQueueOnExit()
			return nil
		}
		err := b.connect(ctx, client)
		if err != nil {
			b.update(func(st *Status) { st.Attempts++; st.LastError = err.Error() })
			if err.Error() != lastLogged { // the same failure every backoff is not news
				b.log.Warn("uplink connect failed", "addresses", b.o.Addresses, "err", err)
				lastLogged = err.Error()
			}
			ceil, delay = backoff(ceil, b.o.ReconnectMin, b.o.ReconnectMax)
			select {
			case <-time.After(delay):
			case <-ctx.Done():
			}
			continue
		}
		ceil, lastLogged = 0, ""
		b.update(func(st *Status) { st.Attempts++; st.Connections++; st.Connected = true; st.LastError = "" })
		b.log.Info("uplink connected", "addresses", b.o.Addresses, "client_id", b.o.ClientID)

		err = b.send(ctx, client)
		b.update(func(st *Status) {
			st.Connected = false
			if err != nil {
				st.LastError = err.Error()
			}
		})
		if err != nil {
			b.log.Warn("uplink lost", "err", err)
			continue
		}
		// ctx ended: flush what we can, then leave.
		fctx, cancel := context.WithTimeout(context.Background(), b.o.FlushTimeout)
		b.flush(fctx, client)
		cancel()
		client.Disconnect(250)
		b.dropQueueOnExit()
		return nil
	}
}

func (b *Bridge) connect(ctx context.Context, client paho.Client) error {
	select { // a loss reported for an earlier connection is stale now
	case <-b.lostErr:
	default:
	}
	tok := client.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := tok.Error(); err != nil {
		return err
	}
	for i := range b.o.Routes {
		r := &b.o.Routes[i]
		if r.Direction&In == 0 {
			continue
		}
		st := client.Subscribe(r.RemoteFilter(), r.QoS, b.inbound(r))
		select {
		case <-st.Done():
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := st.Error(); err != nil {
			client.Disconnect(0)
			return fmt.Errorf("subscribe %s: %w", r.RemoteFilter(), err)
		}
	}
	return nil
}

func (b *Bridge) inbound(r *Route) paho.MessageHandler {
	return func(_ paho.Client, m paho.Message) {
		local, ok := r.LocalTopic(m.Topic())
		if !ok {
			return
		}
		if err := b.o.Deliver(local, m.Payload(), min(m.Qos(), r.QoS), m.Retained()); err != nil {
			b.log.Warn("inbound message not delivered", "topic", local, "err", err)
			return
		}
		b.update(func(st *Status) { st.Received++ })
	}
}

// send publishes the head of the queue, one message at a time and in order,
// until the connection is lost (error) or ctx ends (nil).
func (b *Bridge) send(ctx context.Context, client paho.Client) error {
	for {
		b.mu.Lock()
		ch := b.changed
		var head *message
		if len(b.queue) > 0 {
			head = &b.queue[0]
		}
		b.mu.Unlock()
		if head == nil {
			select {
			case <-ch:
				continue
			case err := <-b.lostErr:
				return err
			case <-ctx.Done():
				return nil
			}
		}
		if err := b.publish(ctx, client, head); err != nil {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// publish sends m and, once the central broker has acknowledged it, takes
// it off the queue.
func (b *Bridge) publish(ctx context.Context, client paho.Client, m *message) error {
	tok := client.Publish(m.topic, m.qos, m.retain, m.payload)
	select {
	case <-tok.Done():
	case err := <-b.lostErr:
		return err
	case <-ctx.Done():
		return nil
	}
	if err := tok.Error(); err != nil {
		return err
	}
	b.update(func(st *Status) {
		if len(b.queue) > 0 && b.queue[0].seq == m.seq { // unless dropped meanwhile
			b.queue = b.queue[1:]
		}
		st.Sent++
	})
	return nil
}

// flush sends what is queued until the queue is empty or ctx ends.
func (b *Bridge) flush(ctx context.Context, client paho.Client) {
	for ctx.Err() == nil {
		b.mu.Lock()
		if len(b.queue) == 0 {
			b.mu.Unlock()
			return
		}
		head := &b.queue[0]
		b.mu.Unlock()
		if err := b.publish(ctx, client, head); err != nil {
			return
		}
	}
}

func (b *Bridge) dropQueueOnExit() {
	if st := b.Status(); st.Queued > 0 {
		b.log.Warn("uplink stopped with messages not delivered; they are lost (the in-memory queue is not durable)", "messages", st.Queued)
	}
}

// backoff doubles the ceiling between lo and hi and picks the next
// reconnect delay under it with full jitter, so a site's gateways do not
// reconnect in step after an outage.
func backoff(ceil, lo, hi time.Duration) (next, delay time.Duration) {
	next = min(max(2*ceil, lo), hi)
	return next, lo + rand.N(next-lo+1)
}
