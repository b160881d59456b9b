package bridge

import (
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"
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
	b, err := New(Options{
		Addresses: []string{"ssl://127.0.0.1:1"},
		TLS:       &tls.Config{},
		QueueSize: 3,
		Routes: []Route{
			{Local: "commands/#", Direction: In, Prefix: "devices/x/", QoS: 1},
			{Local: "sensors/#", Direction: Out, Prefix: "devices/x/", QoS: 1},
			{Local: "sensors/raw/#", Direction: Out, Prefix: "raw/", QoS: 0}, // shadowed by the route above
			{Local: "alarms/#", Direction: Both, Prefix: "", QoS: 0},
		},
		Deliver: func(string, []byte, byte, bool) error { return nil },
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	for _, topic := range []string{"commands/x", "other/y", "sensors/a", "sensors/raw/b", "alarms/door", "sensors/c"} {
		if err := b.Forward(topic, []byte(topic), 0, false); err != nil {
			t.Fatalf("Forward(%s): %v", topic, err)
		}
	}
	// "commands/x" is an in-route and "other/y" matches none: not queued.
	// Four were queued into room for three: the oldest was dropped.
	st := b.Status()
	if st.Queued != 3 || st.Dropped != 1 {
		t.Errorf("got %d queued, %d dropped; want 3 queued, 1 dropped", st.Queued, st.Dropped)
	}
	var got []string
	for _, m := range b.queue {
		got = append(got, fmt.Sprintf("%s q%d", m.topic, m.qos))
	}
	want := []string{"devices/x/sensors/raw/b q1", "alarms/door q0", "devices/x/sensors/c q1"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("queue: got %v, want %v", got, want)
	}
}
