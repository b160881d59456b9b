package bridge

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"strings"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldgate/fieldgate/bridge/outbox"
)

// Checkpoint is what the bridge keeps retained on Options.CheckpointTopic.
type Checkpoint struct {
	Outbox string            `json:"outbox"` // outbox.Outbox.ID
	Routes map[string]uint64 `json:"routes"` // route ID → last sequence number sent before the checkpoint
}

// checkpoint makes the checkpoint message: for each route, the last
// message handed to paho on this connection, or, for a route none was
// handed on, the last one the central broker acknowledged.
func (b *Bridge) checkpoint(sent map[string]uint64) outbox.Message {
	cp := Checkpoint{Outbox: b.ob.ID(), Routes: map[string]uint64{}}
	for _, r := range b.ob.Routes() {
		if s := b.delivered[r]; s > 0 {
			cp.Routes[r] = s
		}
	}
	for r, s := range sent {
		cp.Routes[r] = max(cp.Routes[r], s)
	}
	payload, _ := json.Marshal(cp)
	return outbox.Message{Topic: b.o.CheckpointTopic, Payload: payload, QoS: 1, Retain: true}
}

// isCheckpoint tells whether a central broker topic is the checkpoint or
// under it (the fence).
func (b *Bridge) isCheckpoint(topic string) bool {
	cp := b.o.CheckpointTopic
	return cp != "" && (topic == cp || strings.HasPrefix(topic, cp+"/"))
}

// checkpointBlame is how soon after a checkpoint a lost connection is
// laid at its door.
const checkpointBlame = 5 * time.Second

// checkpointVerdict is told, when a connection is lost, how many
// checkpoints it sent, how many the central broker acknowledged, and
// whether the last was sent just before. A broker that drops the
// connection on a publish it does not allow (AWS IoT Core, HiveMQ, EMQX
// so set) would otherwise end every connection a window after it began:
// after three connections in a row lost so, the checkpoints are turned off
// until the gateway restarts. (A flaky link may pass for such a broker;
// that costs only the bound on duplicates.)
func (b *Bridge) checkpointVerdict(sent, acked int, recent bool) {
	switch {
	case acked > 0 || sent == 0 || !recent:
		if acked > 0 {
			b.cpSuspect = 0
		}
	case !b.cpOff:
		b.cpSuspect++
		if b.cpSuspect >= 3 {
			b.cpOff = true
			b.log.Error("the central broker drops the connection after each checkpoint (check its ACL, or set bridge.checkpoint_topic = \"\"): checkpoints are off until the gateway restarts, and a crash may resend a commit interval's worth of messages", "topic", b.o.CheckpointTopic)
		}
	}
}

// readCheckpoint reads the retained checkpoint back from the central
// broker, once per start of the bridge, and skips what it says the central
// broker holds. To know that no checkpoint is there (rather than not here
// yet), it subscribes to CheckpointTopic/# and publishes a fence, a random
// nonce on CheckpointTopic/fence: the broker sends the retained message,
// if any, before the fence, and paho hands them over in that order.
// An error is a lost connection; a checkpoint that cannot be read is
// logged and the bridge goes on without it.
func (b *Bridge) readCheckpoint(ctx context.Context, c *conn) error {
	if b.o.CheckpointTopic == "" || b.ob.Stats().Messages == 0 {
		// Nothing held can be in a checkpoint; what comes next has
		// higher sequence numbers than any checkpoint names.
		b.cpRead = true
		return nil
	}
	filter, fenceTopic, nonce := b.o.CheckpointTopic+"/#", b.o.CheckpointTopic+"/fence", rand.Text()
	found := make(chan []byte, 1)
	fenced := make(chan struct{})
	var fenceOnce sync.Once
	tok := c.client.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) {
		switch {
		case m.Topic() == b.o.CheckpointTopic && m.Retained():
			select {
			case found <- m.Payload():
			default:
			}
		case m.Topic() == fenceTopic && string(m.Payload()) == nonce:
			fenceOnce.Do(func() { close(fenced) })
		}
	})
	// Whatever happens from here, the checkpoint is read once a start: a
	// broker that drops the connection on the subscription or the fence
	// must not keep the uplink from draining.
	b.cpRead = true
	lost := func(what string, err error) error {
		b.cpSuspect++
		b.log.Error("the connection was lost while the checkpoint was read back: going on without it (a central broker that drops a client for a topic it may not use: check its ACL, or set bridge.checkpoint_topic = \"\")", "step", what, "err", err)
		return err
	}
	if err := waitConn(ctx, c, tok); err != nil {
		return lost("subscribe "+filter, err)
	}
	defer c.client.Unsubscribe(filter) // not waited for: a late checkpoint changes nothing
	if st, ok := tok.(*paho.SubscribeToken); ok && st.Result()[filter] == 0x80 {
		b.log.Warn("the central broker refused the subscription to the checkpoint (check its ACL): after a crash, what was in flight and what was acknowledged during the last commit interval is sent again", "filter", filter)
		return nil
	}
	if err := waitConn(ctx, c, c.client.Publish(fenceTopic, 1, false, nonce)); err != nil {
		return lost("publish "+fenceTopic, err)
	}
	select {
	case <-fenced:
	case <-time.After(b.o.CheckpointWait):
		select {
		case p := <-found: // it came; only its absence needed the fence
			b.applyCheckpoint(p)
		default:
			b.log.Warn("the checkpoint's fence did not come back from the central broker (check its ACL): going on without the checkpoint", "topic", fenceTopic, "waited", b.o.CheckpointWait)
		}
		return nil
	case err := <-c.lost:
		return lost("fence", err)
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case p := <-found:
		b.applyCheckpoint(p)
	default:
		b.log.Info("no checkpoint on the central broker: the outbox is sent from its head", "topic", b.o.CheckpointTopic)
	}
	return nil
}

// applyCheckpoint skips, and deletes, what a checkpoint read back says the
// central broker holds. A checkpoint of another outbox file, or naming
// messages this one never had, is ignored.
func (b *Bridge) applyCheckpoint(payload []byte) {
	var cp Checkpoint
	if err := json.Unmarshal(payload, &cp); err != nil {
		b.log.Warn("the checkpoint on the central broker is not one: ignored", "topic", b.o.CheckpointTopic, "err", err)
		return
	}
	if cp.Outbox != b.ob.ID() {
		b.log.Info("the checkpoint on the central broker is of another outbox file: ignored", "topic", b.o.CheckpointTopic, "its_outbox", cp.Outbox, "outbox", b.ob.ID())
		return
	}
	last := b.ob.OpenSeq() // what an earlier run can have sent
	for r, s := range cp.Routes {
		if s > last {
			b.log.Warn("the checkpoint on the central broker names messages this outbox never had (an outbox file restored from a copy?): ignored", "route", r, "checkpoint_seq", s, "last_seq_at_start", last)
			return
		}
	}
	for r, s := range cp.Routes {
		if s > b.delivered[r] {
			b.delivered[r] = s
			b.ob.AckThrough(r, s)
		}
	}
	b.log.Info("checkpoint read: what the central broker already holds is not sent again", "routes", cp.Routes)
}

// waitConn waits for tok, or for the connection to be lost.
func waitConn(ctx context.Context, c *conn, tok paho.Token) error {
	select {
	case <-tok.Done():
		return tok.Error()
	case err := <-c.lost:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
