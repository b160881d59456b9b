package localbroker

import (
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sort"
	"testing"
	"time"

	pahopk "github.com/eclipse/paho.mqtt.golang/packets"
)

// A device with unacknowledged messages from the broker that publishes
// QoS 1 with one of their packet ids (each direction numbers its own)
// still gets every one of them again when it comes back: mochi deleted
// the broker's message with that id.
func TestClientPacketIDsDoNotDeleteBrokerMessages(t *testing.T) {
	stored := func(Message) (<-chan error, error) {
		done := make(chan error, 1)
		done <- nil
		return done, nil
	}
	for _, tc := range []struct {
		name    string
		forward func(Message) (<-chan error, error)
		restart bool // with a session store, the broker restarted before the device is back
	}{
		{"not forwarded", nil, false},
		{"forwarded (acknowledged once stored)", stored, false},
		{"stored session, across a restart", stored, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := &Options{Listeners: []Listener{{Address: "127.0.0.1:0"}}, Security: Security{AllowAnonymous: true}, Forward: tc.forward}
			if tc.restart {
				opts.SessionFile = filepath.Join(t.TempDir(), "sessions.db")
			}
			b, err := New(opts, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err != nil {
				t.Fatal(err)
			}
			defer func() { b.Close() }()
			dial := func() net.Conn {
				c, err := net.Dial("tcp", b.Addrs()[0])
				if err != nil {
					t.Fatal(err)
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				cp := pahopk.NewControlPacket(pahopk.Connect).(*pahopk.ConnectPacket)
				cp.ProtocolName, cp.ProtocolVersion, cp.ClientIdentifier, cp.Keepalive, cp.CleanSession = "MQTT", 4, "device", 60, false
				if err := cp.Write(c); err != nil {
					t.Fatal(err)
				}
				if ack, err := pahopk.ReadPacket(c); err != nil || ack.(*pahopk.ConnackPacket).ReturnCode != 0 {
					t.Fatalf("connect: %v %v", ack, err)
				}
				return c
			}
			c := dial()
			sp := pahopk.NewControlPacket(pahopk.Subscribe).(*pahopk.SubscribePacket)
			sp.MessageID, sp.Topics, sp.Qoss = 1, []string{"cmd/#"}, []byte{1}
			sp.Write(c)
			if _, err := pahopk.ReadPacket(c); err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{"a", "b", "c"} {
				if err := b.Publish(Message{Topic: "cmd/" + p, Payload: []byte(p), QoS: 1}); err != nil {
					t.Fatal(err)
				}
			}
			var ids []uint16
			for range 3 {
				pk, err := pahopk.ReadPacket(c)
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, pk.(*pahopk.PublishPacket).MessageID) // not acknowledged
			}
			// The device publishes telemetry, numbering from 1 as clients do.
			pp := pahopk.NewControlPacket(pahopk.Publish).(*pahopk.PublishPacket)
			pp.TopicName, pp.Qos, pp.MessageID, pp.Payload = "tele/x", 1, ids[0], []byte("21.5")
			pp.Write(c)
			if ack, err := pahopk.ReadPacket(c); err != nil {
				t.Fatal(err)
			} else if pa, ok := ack.(*pahopk.PubackPacket); !ok || pa.MessageID != ids[0] {
				t.Fatalf("got %v, want the PUBACK of the telemetry", ack)
			}
			c.Close()
			if tc.restart {
				if err := b.Close(); err != nil {
					t.Fatal(err)
				}
				opts.Listeners = []Listener{{Address: b.Addrs()[0]}}
				if b, err = New(opts, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
					t.Fatal(err)
				}
			}

			c = dial()
			defer c.Close()
			var again []uint16
			for range 3 {
				pk, err := pahopk.ReadPacket(c)
				if err != nil {
					t.Fatalf("after %v: %v (the broker resent only these)", again, err)
				}
				again = append(again, pk.(*pahopk.PublishPacket).MessageID)
			}
			sort.Slice(again, func(i, j int) bool { return again[i] < again[j] })
			sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
			if len(again) != 3 || again[0] != ids[0] || again[2] != ids[2] {
				t.Errorf("resent %v, want %v", again, ids)
			}
		})
	}
}
