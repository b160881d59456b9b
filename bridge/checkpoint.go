package bridge

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
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
	var found []byte
	fenced := make(chan struct{})
	tok := c.client.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) {
		switch {
		case m.Topic() == b.o.CheckpointTopic && m.Retained():
			found = m.Payload()
		case m.Topic() == fenceTopic && string(m.Payload()) == nonce:
			select {
			case <-fenced:
			default:
				close(fenced)
			}
		}
	})
	if err := waitConn(ctx, c, tok); err != nil {
		return fmt.Errorf("subscribe %s: %w", filter, err)
	}
	defer c.client.Unsubscribe(filter) // not waited for: a late checkpoint changes nothing
	if st, ok := tok.(*paho.SubscribeToken); ok && st.Result()[filter] == 0x80 {
		b.log.Warn("the central broker refused the subscription to the checkpoint (check its ACL): after a crash, what was in flight and what was acknowledged during the last commit interval is sent again", "filter", filter)
		b.cpRead = true
		return nil
	}
	if err := waitConn(ctx, c, c.client.Publish(fenceTopic, 1, false, nonce)); err != nil {
		return fmt.Errorf("publish %s: %w", fenceTopic, err)
	}
	select {
	case <-fenced:
	case <-time.After(b.o.CheckpointWait):
		b.log.Warn("the checkpoint's fence did not come back from the central broker (check its ACL): going on without the checkpoint", "topic", fenceTopic, "waited", b.o.CheckpointWait)
		b.cpRead = true
		return nil
	case err := <-c.lost:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
	b.cpRead = true
	if found == nil {
		b.log.Info("no checkpoint on the central broker: the outbox is sent from its head", "topic", b.o.CheckpointTopic)
		return nil
	}
	b.applyCheckpoint(found)
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
	last := b.ob.LastSeq()
	for r, s := range cp.Routes {
		if s > last {
			b.log.Warn("the checkpoint on the central broker names messages this outbox never had (an outbox file restored from a copy?): ignored", "route", r, "checkpoint_seq", s, "last_seq", last)
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
