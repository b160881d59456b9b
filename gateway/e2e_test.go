package gateway

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/goleak"

	"github.com/fieldgate/fieldgate/bridge"
	"github.com/fieldgate/fieldgate/bridge/mosquittotest"
	"github.com/fieldgate/fieldgate/bridge/outbox"
	"github.com/fieldgate/fieldgate/localbroker"
	"github.com/fieldgate/fieldgate/provisioning"
	"github.com/fieldgate/fieldgate/provisioning/pkitest"
	"github.com/fieldgate/fieldgate/sensors"
)

// central is a real Mosquitto set up as the central broker: TLS, client
// certificates required, CN as username.
type central struct {
	ca     *pkitest.CA
	broker *mosquittotest.Broker
}

func startCentral(t *testing.T) *central {
	t.Helper()
	ca := pkitest.NewCA(t, "Central CA")
	srv := ca.Server(t, "central")
	return &central{ca: ca, broker: mosquittotest.Start(t, mosquittotest.Options{
		CAFile: ca.CertFile, CertFile: srv.CertFile, KeyFile: srv.KeyFile,
	})}
}

// observe connects an observer to the central broker with a certificate of
// its own and returns the messages arriving on filter.
func (c *central) observe(t *testing.T, filter string) (paho.Client, <-chan paho.Message) {
	t.Helper()
	obs := c.ca.Client(t, "observer")
	signer, err := provisioning.LoadSigner("file:"+obs.KeyFile, provisioning.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := provisioning.ClientCertificate(signer, obs.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := provisioning.CertPool(c.ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	msgs := make(chan paho.Message, 100)
	opts := paho.NewClientOptions().AddBroker(c.broker.URL).SetClientID("observer").
		SetTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots, MinVersion: tls.VersionTLS12}).
		SetAutoReconnect(false)
	cl := paho.NewClient(opts)
	if tok := cl.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("observer connect: %v", tok.Error())
	}
	if tok := cl.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) { msgs <- m }); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("observer subscribe: %v", tok.Error())
	}
	t.Cleanup(func() { cl.Disconnect(0) })
	return cl, msgs
}

// writeConfig writes a gateway configuration whose bridge points at c,
// trusting caFile for the central broker, and returns it loaded.
func writeConfig(t *testing.T, c *central, caFile string) *Config {
	t.Helper()
	dev := c.ca.Client(t, "EGW-E2E-1")
	dir := t.TempDir()
	src := fmt.Sprintf(`[device]
state_dir = %q

[identity]
key = "file:%s"
cert = %q
ca = %q

[[broker.listener]]
address = "127.0.0.1:0"

[bridge]
address = [%q]
sequence_field = "seq"

[[bridge.route]]
local = "sensors/#"
direction = "out"
remote_prefix = "devices/%%d/"
qos = 1

[[bridge.route]]
local = "commands/#"
direction = "in"
remote_prefix = "devices/%%d/"
qos = 1

[[sensor]]
name = "sim"
driver = "simulated"
interval = "50ms"

[metrics]
address = "127.0.0.1:0"
`, dir, dev.KeyFile, dev.CertFile, caFile, c.broker.URL)
	path := filepath.Join(dir, "fieldgate.toml")
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// startGateway runs a gateway until the test ends and checks that it
// stops cleanly.
func startGateway(t *testing.T, cfg *Config) *Gateway {
	t.Helper()
	return startGatewayLog(t, cfg, testLogger(t))
}

// startGatewayLog is startGateway with the logger log.
func startGatewayLog(t *testing.T, cfg *Config, log *slog.Logger) *Gateway {
	t.Helper()
	g, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("gateway did not stop within 30s of its context ending")
		}
	})
	return g
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestEndToEnd(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) }) // runs last: after the gateway and Mosquitto stopped
	c := startCentral(t)
	observer, arrived := c.observe(t, "devices/#")
	cfg := writeConfig(t, c, c.ca.CertFile)
	g := startGateway(t, cfg)

	// Readings from the simulated sensor arrive at the central broker,
	// under the remote prefix, as SenML.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	quantities := map[string]bool{}
	online := false
	for len(quantities) < 3 || !online { // temperature, humidity and the sensor's status
		select {
		case m := <-arrived:
			if m.Topic() == "devices/EGW-E2E-1/status" {
				// Birth message, retained; "offline" is the will.
				if string(m.Payload()) == "online" {
					online = true
				}
				continue
			}
			if strings.HasPrefix(m.Topic(), "devices/EGW-E2E-1/checkpoint") {
				continue // the bridge's own (see bridge.Options.CheckpointTopic)
			}
			checkReading(t, m.Topic(), m.Payload(), quantities)
		case <-ctx.Done():
			t.Fatalf("readings arrived for %v only; bridge status %+v", quantities, g.Bridge().Status())
		}
	}

	// A command published on the central broker reaches local
	// subscribers, without the prefix.
	commands := make(chan localbroker.Message, 10)
	if err := g.Subscribe("commands/#", 1, func(m localbroker.Message) { commands <- m }); err != nil {
		t.Fatal(err)
	}
	if tok := observer.Publish("devices/EGW-E2E-1/commands/relay1", 1, false, "on"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish command: %v", tok.Error())
	}
	select {
	case m := <-commands:
		if m.Topic != "commands/relay1" || string(m.Payload) != "on" {
			t.Errorf("command: got %s %q, want commands/relay1 \"on\"", m.Topic, m.Payload)
		}
	case <-ctx.Done():
		t.Fatal("the command did not reach the local broker")
	}
	// Mosquitto saw the gateway with the certificate's CN as its username.
	if _, err := c.broker.WaitLog(ctx, "u'EGW-E2E-1'"); err != nil {
		t.Error(err)
	}

	// The metrics say so too.
	code, health := get(t, "http://"+g.MetricsAddr()+"/healthz")
	if code != 200 || !strings.HasPrefix(health, "uplink flowing") {
		t.Errorf("/healthz: %d %q, want 200 uplink flowing", code, health)
	}
	_, text := get(t, "http://"+g.MetricsAddr()+"/metrics")
	for _, want := range []string{"\nfieldgate_uplink_connected 1\n", "\nfieldgate_uplink_received_total 1\n", "\nfieldgate_certificate_expiry_timestamp_seconds "} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics has no %q:\n%s", strings.TrimSpace(want), text)
		}
	}
	_, js := get(t, "http://"+g.MetricsAddr()+"/status")
	var st Status
	if err := json.Unmarshal([]byte(js), &st); err != nil {
		t.Fatalf("/status: %v\n%s", err, js)
	}
	if st.Device != "EGW-E2E-1" || st.Uplink == nil || !st.Uplink.Connected || !st.Uplink.Flowing || st.Sensors["sim"].State != sensors.StateOK || st.CertExpires.IsZero() {
		t.Errorf("/status: %s", js)
	}
	if v := metricValue(t, text, "fieldgate_uplink_sent_total"); v < 2 {
		t.Errorf("fieldgate_uplink_sent_total %v, want at least the 2 readings seen", v)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func metricValue(t *testing.T, text, name string) float64 {
	t.Helper()
	for _, l := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", l, err)
			}
			return f
		}
	}
	t.Fatalf("no metric %s in\n%s", name, text)
	return 0
}

// checkReading checks one message from the central broker and records its
// quantity.
func checkReading(t *testing.T, topic string, payload []byte, seen map[string]bool) {
	t.Helper()
	if topic == "devices/EGW-E2E-1/sensors/sim/status" {
		var st sensors.Status
		if err := json.Unmarshal(payload, &st); err != nil || st.State != sensors.StateOK {
			t.Errorf("%s: got %q (%v), want the sensor's state ok", topic, payload, err)
		}
		seen["status"] = true
		return
	}
	var pack []sensors.Record
	if err := json.Unmarshal(payload, &pack); err != nil {
		t.Fatalf("%s: payload %q is not a SenML JSON pack: %v", topic, payload, err)
	}
	if len(pack) != 1 {
		t.Fatalf("%s: got %d records, want 1", topic, len(pack))
	}
	r := pack[0]
	var withSeq []map[string]any
	json.Unmarshal(payload, &withSeq)
	if seq, ok := withSeq[0]["seq"].(float64); !ok || seq < 1 {
		t.Errorf("%s: no outbox sequence number in %s", topic, payload)
	}
	if r.BaseName != "EGW-E2E-1/" {
		t.Errorf("%s: bn: got %q, want %q", topic, r.BaseName, "EGW-E2E-1/")
	}
	if age := time.Since(time.UnixMilli(int64(r.BaseTime * 1e3))); age < 0 || age > time.Minute {
		t.Errorf("%s: bt %v is %v from now, want the time of acquisition", topic, r.BaseTime, age)
	}
	switch topic {
	case "devices/EGW-E2E-1/sensors/sim/temperature":
		if r.Name != "sim/temperature" || r.Unit != "Cel" || r.Value < 17 || r.Value > 25 {
			t.Errorf("%s: got %+v, want sim/temperature in Cel between 17 and 25", topic, r)
		}
		seen["temperature"] = true
	case "devices/EGW-E2E-1/sensors/sim/humidity":
		if r.Name != "sim/humidity" || r.Unit != "%RH" || r.Value < 30 || r.Value > 60 {
			t.Errorf("%s: got %+v, want sim/humidity in %%RH between 30 and 60", topic, r)
		}
		seen["humidity"] = true
	default:
		t.Errorf("unexpected topic %q", topic)
	}
}

// TestBridgeRefusesUnknownCA: a central broker whose certificate was not
// signed by the configured CA gets no data, however long the sensors run.
func TestBridgeRefusesUnknownCA(t *testing.T) {
	c := startCentral(t)
	_, arrived := c.observe(t, "#")
	other := pkitest.NewCA(t, "Some Other CA")
	cfg := writeConfig(t, c, other.CertFile)
	g := startGateway(t, cfg)

	local := make(chan localbroker.Message, 100)
	if err := g.Subscribe("sensors/#", 2, func(m localbroker.Message) { local <- m }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := g.Bridge().Wait(ctx, func(s bridge.Status) bool { return s.Attempts >= 2 })
	if err != nil {
		t.Fatalf("bridge made no two connection attempts: %+v", st)
	}
	if st.Connections != 0 || !strings.Contains(st.LastError, "certificate signed by unknown authority") {
		t.Errorf("bridge status %+v: want no connection and an unknown-authority error", st)
	}
	for range 10 { // readings keep being produced locally...
		select {
		case <-local:
		case <-ctx.Done():
			t.Fatal("no local readings")
		}
	}
	select { // ...and none of them reached the central broker.
	case m := <-arrived:
		t.Errorf("central broker received %s from a gateway that should not trust it", m.Topic())
	default:
	}
	if q := g.Bridge().Status().Queued; q == 0 {
		t.Error("nothing queued: readings were neither sent nor kept")
	}
	code, health := get(t, "http://"+g.MetricsAddr()+"/healthz")
	if code != 503 || !strings.Contains(health, "certificate signed by unknown authority") {
		t.Errorf("/healthz: %d %q, want 503 naming the unknown authority", code, health)
	}
}

// TestCentralRefusesNoClientCertificate: the central broker is set up as
// in the field (require_certificate), and a bridge that presents no
// certificate is refused.
func TestCentralRefusesNoClientCertificate(t *testing.T) {
	c := startCentral(t)
	roots, err := provisioning.CertPool(c.ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	ob, err := outbox.Open(filepath.Join(t.TempDir(), "outbox.db"), nil, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer ob.Close()
	b, err := bridge.New(bridge.Options{
		Outbox:    ob,
		Addresses: []string{c.broker.URL},
		TLS:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		ClientID:  "no-cert",
		Routes:    []bridge.Route{{Local: "sensors/#", Direction: bridge.Out, Prefix: "devices/x/", QoS: 1}},
	}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); b.Run(ctx) }()
	defer func() { cancel(); <-done }()

	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	st, err := b.Wait(wctx, func(s bridge.Status) bool { return s.Attempts >= 1 && s.LastError != "" })
	if err != nil {
		t.Fatalf("no failed attempt: %+v", st)
	}
	if st.Connections != 0 {
		t.Errorf("got %d connections, want the broker to refuse every one", st.Connections)
	}
	if _, err := c.broker.WaitLog(wctx, "peer did not return a certificate"); err != nil {
		t.Error(err)
	}
}
