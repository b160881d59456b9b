package gateway

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldgate/fieldgate/bridge/mosquittotest"
	"github.com/fieldgate/fieldgate/localbroker"
	"github.com/fieldgate/fieldgate/provisioning/pkitest"
	"github.com/fieldgate/fieldgate/sensors"
)

// Reload takes a new password file; a broken one is refused and the
// running one kept.
func TestReloadSecurityFiles(t *testing.T) {
	ca := pkitest.NewCA(t, "Central CA")
	cfg := siteConfig(t, "ssl://localhost:"+strconv.Itoa(mosquittotest.FreePort(t)), ca, 0)
	g := startGateway(t, cfg)
	login := func(user string) error { return loginAs(t, g, user) }
	if err := login("newcomer"); err == nil {
		t.Fatal("newcomer logged in before being added")
	}
	passwd := cfg.Broker.PasswordFile
	hash, _ := localbroker.HashPassword([]byte("pw"), 0)
	old, _ := os.ReadFile(passwd)
	os.WriteFile(passwd, append(old, []byte("newcomer:"+hash+"\n")...), 0o600)
	if err := g.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := login("newcomer"); err != nil {
		t.Errorf("newcomer after reload: %v", err)
	}

	os.WriteFile(passwd, []byte("broken line\n"), 0o600)
	err := g.Reload()
	if err == nil || !strings.Contains(err.Error(), filepath.Base(passwd)+":1: want user:hash") {
		t.Errorf("reload of a broken file: got %v, want it refused naming the line", err)
	}
	if err := login("plc"); err != nil {
		t.Errorf("after a refused reload the running file should be kept: %v", err)
	}
}

// SIGHUP's reload takes a new sensor list: the old sensors stop, the new
// ones publish.
func TestReloadSensors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "fieldgate.toml")
	write := func(name string) {
		os.WriteFile(path, []byte("[device]\nid = \"EGW-R\"\nstate_dir = \""+dir+"\"\n[[sensor]]\nname = \""+name+"\"\ndriver = \"simulated\"\ninterval = \"20ms\"\n"), 0o600)
	}
	write("before")
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, cfg)
	seen := make(chan string, 1000)
	g.Subscribe("sensors/#", 1, func(m localbroker.Message) {
		select {
		case seen <- m.Topic:
		default:
		}
	})
	waitTopic := func(prefix string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case topic := <-seen:
				if strings.HasPrefix(topic, prefix) {
					return
				}
			case <-deadline:
				t.Fatalf("no reading on %s…", prefix)
			}
		}
	}
	waitTopic("sensors/before/")
	write("after")
	if err := g.Reload(); err != nil {
		t.Fatal(err)
	}
	waitTopic("sensors/after/")
	h := g.sensorLoop().Status()
	if _, before := h["before"]; before || len(h) != 1 {
		t.Errorf("health after reload: %v, want only the new sensor", h)
	}
}

// A chip whose bus is not there does not stop the gateway: it shows as
// absent, and the other sensors carry on.
func TestMissingChipDoesNotStopGateway(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "fieldgate.toml")
	os.WriteFile(path, []byte("[device]\nid = \"EGW-M\"\nstate_dir = \""+dir+"\"\n"+
		"[[sensor]]\nname = \"room\"\ndriver = \"bme280\"\nbus = \"/dev/i2c-99\"\naddress = 0x77\ninterval = \"20ms\"\n"+
		"[[sensor]]\nname = \"sim\"\ndriver = \"simulated\"\ninterval = \"20ms\"\n"), 0o600)
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, cfg)
	seen := make(chan string, 100)
	g.Subscribe("sensors/#", 1, func(m localbroker.Message) {
		select {
		case seen <- m.Topic:
		default:
		}
	})
	select {
	case <-seen:
	case <-time.After(10 * time.Second):
		t.Fatal("the simulated sensor stopped with the missing chip")
	}
	deadline := time.After(10 * time.Second)
	for g.sensorLoop().Status()["room"].State != sensors.StateAbsent {
		select {
		case <-seen: // each reading is a turn of the loop
		case <-deadline:
			t.Fatalf("health of the missing chip: %+v, want absent", g.sensorLoop().Status()["room"])
		}
	}
	if h := g.sensorLoop().Status()["room"]; !strings.Contains(h.Error, "/dev/i2c-99") {
		t.Errorf("health %+v does not name the bus", h)
	}
}

// loginAs connects to the gateway's first listener as user, password
// "pw", and disconnects.
func loginAs(t *testing.T, g *Gateway, user string) error {
	t.Helper()
	cl := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + g.BrokerAddrs()[0]).SetClientID(user + "-r").
		SetUsername(user).SetPassword("pw").SetAutoReconnect(false).SetConnectRetry(false))
	tok := cl.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return errors.New("timeout")
	}
	if tok.Error() == nil {
		cl.Disconnect(0)
	}
	return tok.Error()
}
