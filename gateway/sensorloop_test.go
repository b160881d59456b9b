package gateway

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldgate/fieldgate/localbroker"
	"github.com/fieldgate/fieldgate/sensors"

	"github.com/fieldgate/fieldgate/internal/testlog"
)

func TestSensorLoopKeysDefaults(t *testing.T) {
	c, err := ParseConfig("f.toml", []byte("[device]\nid = \"a\"\n[[sensor]]\nname = \"s\"\ndriver = \"simulated\"\n"+
		"[[sensor]]\nname = \"t\"\ndriver = \"simulated\"\ninterval = \"1m\"\ntimeout = \"2s\"\nqos = 0\nretain = true\ntopic = \"site/%d/%n/%q\"\n"+
		"deadband = { temperature = 0.2, humidity = 0 }\nmax_silence = \"15m\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s := c.Sensors[0]; s.QoS != 1 || s.Retain || s.Topic != sensors.DefaultTopic || s.Timeout.Duration != 0 || s.Deadband != nil || s.MaxSilence.Duration != 0 {
		t.Errorf("defaults: got %+v, want qos 1, no retain, topic %s, the loop's timeout, no deadband", s, sensors.DefaultTopic)
	}
	s := c.Sensors[1]
	if s.QoS != 0 || !s.Retain || s.Topic != "site/%d/%n/%q" || s.Timeout.Duration != 2*time.Second ||
		fmt.Sprint(s.Deadband) != "map[humidity:0 temperature:0.2]" || s.MaxSilence.Duration != 15*time.Minute {
		t.Errorf("set: got %+v", s)
	}
}

// A chip on a bus that is not there is absent: that is published once,
// retained, on its status topic (a client that subscribes later gets it),
// logged once however often it is retried, and shown in /metrics and
// /status. The other sensor publishes on its own topic, retained.
func TestSensorHealthPublishedRetainedAndInMetrics(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "fieldgate.toml")
	os.WriteFile(path, []byte(`[device]
id = "EGW-H"
state_dir = "`+dir+`"
[broker]
allow_anonymous = true
[[broker.listener]]
address = "127.0.0.1:0"
[metrics]
address = "127.0.0.1:0"
[[sensor]]
name = "room"
driver = "bme280"
bus = "/dev/i2c-99"
interval = "20ms"
[[sensor]]
name = "sim"
driver = "simulated"
interval = "20ms"
topic = "site/%d/%n/%q"
retain = true
qos = 0
`), 0o600)
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	var logs testlog.Buffer
	g := startGatewayLog(t, cfg, slog.New(slog.NewTextHandler(&logs, nil)))

	// Wait, on the readings of sim, until room has been retried a few
	// times.
	sim := make(chan struct{}, 100)
	g.Subscribe("site/EGW-H/sim/#", 1, func(localbroker.Message) {
		select {
		case sim <- struct{}{}:
		default:
		}
	})
	deadline := time.After(20 * time.Second)
	for g.sensorLoop().Counts()["room"].ReadErrors < 5 {
		select {
		case <-sim:
		case <-deadline:
			t.Fatalf("room: %+v after 20s, want 5 failed reads", g.sensorLoop().Counts()["room"])
		}
	}

	cl := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + g.BrokerAddrs()[0]).SetClientID("watcher").SetAutoReconnect(false))
	if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer cl.Disconnect(0)
	got := make(chan paho.Message, 10)
	for _, topic := range []string{"sensors/room/status", "site/EGW-H/sim/temperature"} {
		if tok := cl.Subscribe(topic, 1, func(_ paho.Client, m paho.Message) { got <- m }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe %s: %v", topic, tok.Error())
		}
		select {
		case m := <-got:
			if !m.Retained() {
				t.Errorf("%s: the first message is not the retained one: %q", topic, m.Payload())
			}
			if topic != "sensors/room/status" {
				continue
			}
			var st sensors.Status
			if err := json.Unmarshal(m.Payload(), &st); err != nil || st.State != sensors.StateAbsent || !strings.Contains(st.Error, "/dev/i2c-99") || st.Since.IsZero() {
				t.Errorf("%s: %q (%v), want absent, naming the bus, with a time", topic, m.Payload(), err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no retained message", topic)
		}
	}

	if n := strings.Count(logs.String(), "sensor absent"); n != 1 {
		t.Errorf("the absent chip was logged %d times, want once:\n%s", n, logs.String())
	}
	_, text := get(t, "http://"+g.MetricsAddr()+"/metrics")
	for _, want := range []string{
		`fieldgate_sensor_state{sensor="room",state="absent"} 1`,
		`fieldgate_sensor_state{sensor="room",state="ok"} 0`,
		`fieldgate_sensor_state{sensor="sim",state="ok"} 1`,
		`fieldgate_sensor_dropped_total{sensor="room",reason="out_of_range"} 0`,
	} {
		if !strings.Contains(text, "\n"+want+"\n") {
			t.Errorf("/metrics has no %s", want)
		}
	}
	if !strings.Contains(text, "\nfieldgate_sensor_published_total{sensor=\"sim\"} ") || strings.Contains(text, "\nfieldgate_sensor_published_total{sensor=\"sim\"} 0\n") {
		t.Errorf("/metrics: no values published by sim")
	}
	_, js := get(t, "http://"+g.MetricsAddr()+"/status")
	var st Status
	if err := json.Unmarshal([]byte(js), &st); err != nil {
		t.Fatalf("/status: %v\n%s", err, js)
	}
	if st.Sensors["room"].State != sensors.StateAbsent || st.Sensors["sim"].State != sensors.StateOK {
		t.Errorf("/status sensors: %+v, want room absent, sim ok", st.Sensors)
	}
}

// A sensor taken out of the configuration by a reload does not leave its
// retained status behind; the new sensor's is there.
func TestReloadClearsRemovedSensorStatus(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "fieldgate.toml")
	write := func(name string) {
		os.WriteFile(path, []byte("[device]\nid = \"EGW-C\"\nstate_dir = \""+dir+"\"\n[broker]\nallow_anonymous = true\n"+
			"[[broker.listener]]\naddress = \"127.0.0.1:0\"\n[[sensor]]\nname = \""+name+"\"\ndriver = \"simulated\"\ninterval = \"20ms\"\n"), 0o600)
	}
	write("before")
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, cfg)
	status := make(chan string, 100)
	g.Subscribe("sensors/+/status", 1, func(m localbroker.Message) {
		select {
		case status <- m.Topic:
		default:
		}
	})
	waitStatus := func(topic string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case got := <-status:
				if got == topic {
					return
				}
			case <-deadline:
				t.Fatalf("no message on %s", topic)
			}
		}
	}
	waitStatus("sensors/before/status")
	write("after")
	if err := g.Reload(); err != nil {
		t.Fatal(err)
	}
	waitStatus("sensors/after/status")
	// A client subscribing now gets the retained messages of its first
	// filter before those of its second: a marker, retained after both
	// statuses, comes last, so whatever is not before it is not retained.
	if err := g.broker.Publish(localbroker.Message{Topic: "marker", Payload: []byte("m"), QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	cl := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + g.BrokerAddrs()[0]).SetClientID("watcher").SetAutoReconnect(false))
	if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer cl.Disconnect(0)
	got := make(chan string, 10)
	for _, filter := range []string{"sensors/+/status", "marker"} {
		if tok := cl.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) { got <- m.Topic() }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe %s: %v", filter, tok.Error())
		}
	}
	var retained []string
	for {
		select {
		case topic := <-got:
			if topic != "marker" {
				retained = append(retained, topic)
			}
			if topic == "sensors/before/status" || topic == "marker" {
				if strings.Join(retained, " ") != "sensors/after/status" {
					t.Errorf("retained statuses after the reload: %v, want only sensors/after/status", retained)
				}
				return
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no retained marker; got %v", retained)
		}
	}
}
