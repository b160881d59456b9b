package localbroker

import (
	"fmt"
	"testing"

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
