package bridge

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/fieldgate/fieldgate/bridge/outbox"
)

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		filter, topic string
		want          bool
	}{
		{"sensors/#", "sensors/sim/temperature", true},
		{"sensors/#", "sensors", true}, // '#' includes the parent level
		{"sensors/#", "sensorsx/a", false},
		{"sensors/+/temperature", "sensors/sim/temperature", true},
		{"sensors/+/temperature", "sensors/sim/humidity", false},
		{"sensors/+/temperature", "sensors/a/b/temperature", false},
		{"sensors/+", "sensors/", true}, // an empty level is a level
		{"sensors/+", "sensors", false},
		{"+/+", "/finance", true},
		{"#", "a/b/c", true},
		{"#", "$SYS/broker/uptime", false}, // wildcards do not match $ topics at the first level
		{"+/broker/uptime", "$SYS/broker/uptime", false},
		{"$SYS/#", "$SYS/broker/uptime", true},
		{"a/b", "a/b", true},
		{"a/b", "a/b/c", false},
		{"a/b/c", "a/b", false},
	} {
		if got := Match(tc.filter, tc.topic); got != tc.want {
			t.Errorf("Match(%q, %q): got %v, want %v", tc.filter, tc.topic, got, tc.want)
		}
	}
}

func TestValidateFilter(t *testing.T) {
	for _, tc := range []struct {
		filter string
		ok     bool
	}{
		{"sensors/#", true},
		{"+/x/+", true},
		{"#", true},
		{"", false},
		{"a/#/b", false},
		{"a/b#", false},
		{"a/b+/c", false},
	} {
		if err := ValidateFilter(tc.filter); (err == nil) != tc.ok {
			t.Errorf("ValidateFilter(%q): got %v, want ok=%v", tc.filter, err, tc.ok)
		}
	}
}

func TestRouteTopics(t *testing.T) {
	r := Route{Local: "commands/#", Direction: In, Prefix: ExpandPrefix("devices/%d/", "EGW-7"), QoS: 1}
	if got, want := r.RemoteTopic("commands/relay"), "devices/EGW-7/commands/relay"; got != want {
		t.Errorf("RemoteTopic: got %q, want %q", got, want)
	}
	if got, want := r.RemoteFilter(), "devices/EGW-7/commands/#"; got != want {
		t.Errorf("RemoteFilter: got %q, want %q", got, want)
	}
	for _, tc := range []struct {
		remote, local string
		ok            bool
	}{
		{"devices/EGW-7/commands/relay", "commands/relay", true},
		{"devices/EGW-8/commands/relay", "", false}, // another device's
		{"devices/EGW-7/sensors/x", "", false},      // outside the route's filter
		{"devices/EGW-7/", "", false},
	} {
		local, ok := r.LocalTopic(tc.remote)
		if local != tc.local || ok != tc.ok {
			t.Errorf("LocalTopic(%q): got %q, %v, want %q, %v", tc.remote, local, ok, tc.local, tc.ok)
		}
	}
}

func TestBackoff(t *testing.T) {
	lo, hi := time.Second, 8*time.Second
	var ceil, delay time.Duration
	for i, want := range []time.Duration{1, 2, 4, 8, 8, 8} {
		ceil, delay = backoff(ceil, lo, hi)
		if ceil != want*time.Second {
			t.Errorf("step %d: ceiling %v, want %v", i, ceil, want*time.Second)
		}
		if delay < lo || delay > ceil {
			t.Errorf("step %d: delay %v outside [%v, %v]", i, delay, lo, ceil)
		}
	}
}

func TestForward(t *testing.T) {
	ob, err := outbox.Open(filepath.Join(t.TempDir(), "outbox.db"), &outbox.Options{CommitInterval: time.Millisecond, MaxMessages: 3}, discard())
	if err != nil {
		t.Fatal(err)
	}
	defer ob.Close()
	b, err := New(Options{
		Addresses: []string{"ssl://127.0.0.1:1"},
		TLS:       &tls.Config{},
		Outbox:    ob,
		Routes: []Route{
			{Local: "commands/#", Direction: In, Prefix: "devices/x/", QoS: 1},
			{Local: "sensors/#", Direction: Out, Prefix: "devices/x/", QoS: 1, ID: "s"},
			{Local: "sensors/raw/#", Direction: Out, Prefix: "raw/", QoS: 0, ID: "raw"}, // shadowed by the route above
			{Local: "alarms/#", Direction: Both, LocalPrefix: "site/", Prefix: "", QoS: 0, ID: "a", Policy: outbox.Reject},
			{Local: "debug/#", Direction: Out, Prefix: "dbg/", QoS: 0, ID: "d", DropQoS0Offline: true},
		},
		Deliver: func(string, []byte, byte, bool) error { return nil },
	}, discard())
	if err != nil {
		t.Fatal(err)
	}
	for _, topic := range []string{"commands/x", "other/y", "sensors/a", "sensors/raw/b", "alarms/door", "site/alarms/door", "debug/1", "sensors/c"} {
		stored, err := b.Forward(topic, []byte(topic), 0, false)
		if err != nil {
			t.Fatalf("Forward(%s): %v", topic, err)
		}
		if stored != nil {
			if err := <-stored; err != nil {
				t.Fatalf("Forward(%s): stored: %v", topic, err)
			}
		}
	}
	// "commands/x" is an in-route, "other/y" and "alarms/door" (no
	// local prefix) match none, "debug/1" is QoS 0 while offline on a
	// route that drops those. Four were stored into room for three: the
	// oldest was dropped.
	st := ob.Stats()
	if st.Messages != 3 || st.Dropped[outbox.ReasonOverflow] != 1 || b.Status().DroppedQoS0 != 1 {
		t.Errorf("got %+v, %+v; want 3 stored, 1 dropped for overflow, 1 QoS 0 dropped offline", st, b.Status())
	}
	var got []string
	for _, r := range []string{"s", "a"} {
		ms, _ := ob.Read(r, 0, 10)
		for _, m := range ms {
			got = append(got, fmt.Sprintf("%s q%d", m.Topic, m.QoS))
		}
	}
	want := []string{"devices/x/sensors/raw/b q1", "devices/x/sensors/c q1", "alarms/door q0"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("outbox: got %v, want %v", got, want)
	}
	// The alarm route rejects when full.
	if _, err := b.Forward("site/alarms/fire", nil, 1, false); !errors.Is(err, ErrQueueFull) {
		t.Errorf("full outbox, reject policy: got %v, want ErrQueueFull", err)
	}
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
