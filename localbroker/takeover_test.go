package localbroker

import (
	"fmt"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
)

// A client that disconnects and at once connects again with the same
// client id and a clean session gets what it subscribes to on the new
// connection: the old connection's clean-up must not remove the new one.
// (mochi v2.7.9 deletes the client id from its client list after the old
// connection ends; a new connection registered in between was deleted with
// it, and nothing was delivered to it.)
func TestQuickReconnectKeepsDeliveries(t *testing.T) {
	b := interopBroker(t, Limits{})
	for i := range 1000 {
		r := dial5(t, b)
		r.connect(connectPacket5("quick", true, 0, nil))
		r.subscribe(1, "quick/t", 1)
		want := fmt.Sprint("round ", i)
		r.publish(2, "quick/t", 1, want, nil)
		got := r.exchange(1)
		if string(got[0].Payload) != want {
			t.Fatalf("round %d: got %q, want %q", i, got[0].Payload, want)
		}
		r.send(&packets.Disconnect{Properties: &packets.Properties{}})
		r.Close()
	}
}

// A device cannot take over the gateway's own clients inside the broker
// (the one the sensors publish with, the one the uplink delivers with):
// its CONNECT is refused as an invalid client id, and the gateway's
// publishes still reach the site's subscribers.
func TestReservedClientIDs(t *testing.T) {
	b := interopBroker(t, Limits{})
	got := make(chan Message, 10)
	if err := b.Subscribe("site/#", 1, func(m Message) { got <- m }); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"inline", "fieldgate-uplink"} {
		r := dial5(t, b)
		r.send(connectPacket5(id, true, 0, nil))
		if ca := r.expect(packets.CONNACK).Content.(*packets.Connack); ca.ReasonCode != 0x85 {
			t.Errorf("client id %q: CONNACK %#x, want 0x85 (client identifier not valid)", id, ca.ReasonCode)
		}
		r.Close()
	}
	if err := b.Publish(Message{Topic: "site/a", Payload: []byte("sensor"), QoS: 1}); err != nil {
		t.Fatalf("the sensors' client: %v", err)
	}
	if err := b.PublishLocal(Message{Topic: "site/b", Payload: []byte("uplink"), QoS: 1}); err != nil {
		t.Fatalf("the uplink's client: %v", err)
	}
	for _, want := range []string{"site/a", "site/b"} {
		select {
		case m := <-got:
			if m.Topic != want {
				t.Errorf("got %s, want %s", m.Topic, want)
			}
		case <-time.After(wait):
			t.Fatalf("%s never arrived", want)
		}
	}
}
