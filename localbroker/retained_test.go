package localbroker

import (
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"
)

// Retained messages survive a restart; a cleared one stays cleared.
func TestRetainedSurviveRestart(t *testing.T) {
	file := filepath.Join(t.TempDir(), "broker.db")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := New(&Options{RetainedFile: file}, log)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []Message{
		{Topic: "site/door", Payload: []byte("closed"), Retain: true},
		{Topic: "site/pump", Payload: []byte("on"), Retain: true},
		{Topic: "site/door", Payload: []byte("open"), Retain: true}, // replaces
		{Topic: "site/pump", Payload: nil, Retain: true},            // clears
		{Topic: "site/fan", Payload: []byte("not retained")},
	} {
		if err := b.Publish(m); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	b, err = New(&Options{RetainedFile: file}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got := make(chan Message, 10)
	if err := b.Subscribe("site/#", 1, func(m Message) { got <- m }); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m.Topic != "site/door" || string(m.Payload) != "open" {
			t.Errorf("after restart: %s %q, want site/door \"open\"", m.Topic, m.Payload)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no retained message after restart")
	}
	select {
	case m := <-got:
		t.Errorf("after restart, also %s %q: want only site/door", m.Topic, m.Payload)
	default: // Subscribe delivers the retained messages before it returns
	}
}

// Retained messages and messages queued for an away client are not
// deleted a day after they were published, as mochi does by default:
// only their own MQTT 5 expiry ends them, as with Mosquitto. (mochi's
// expiry sweep cannot be run from a test, so this checks what it is
// given, and that a retained message carries no expiry of its own.)
func TestNoForcedMessageExpiry(t *testing.T) {
	b := newBroker(t, nil)
	if got := b.srv.Options.Capabilities.MaximumMessageExpiryInterval; got < 50*365*24*3600 {
		t.Errorf("maximum message expiry %d s: retained and queued messages would be deleted after that", got)
	}
	if err := b.Publish(Message{Topic: "sensors/x/status", Payload: []byte("ok"), QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	pk, ok := b.srv.Topics.Retained.GetAll()["sensors/x/status"]
	if !ok {
		t.Fatal("the message was not retained")
	}
	if pk.Expiry != 0 && pk.Expiry-pk.Created < 50*365*24*3600 {
		t.Errorf("retained %s expires after %d s", pk.TopicName, pk.Expiry-pk.Created)
	}
}
