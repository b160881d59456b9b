package gateway

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldgate/fieldgate/provisioning"
	"github.com/fieldgate/fieldgate/provisioning/pkitest"
)

// identityFiles writes a device identity and returns the [identity]
// section for it.
func identityFiles(t *testing.T) string {
	t.Helper()
	ca := pkitest.NewCA(t, "Config Test CA")
	dev := ca.Client(t, "EGW-0042")
	return "[identity]\nkey = \"file:" + dev.KeyFile + "\"\ncert = \"" + dev.CertFile + "\"\nca = \"" + ca.CertFile + "\"\n"
}

func TestParseConfigGood(t *testing.T) {
	id := identityFiles(t)
	src := `[device]
state_dir = "/tmp/x"

` + id + `
[[broker.listener]]
address = "127.0.0.1:1883"

[bridge]
address = ["ssl://central.example.com:8883"]

[[bridge.route]]
local = "sensors/#"

[[bridge.route]]
local = "commands/#"
direction = "in"
remote_prefix = "cmd/%d/"
qos = 0

[[sensor]]
name = "sim"
driver = "simulated"
interval = "1s"

[[sensor]]
name = "sim2"
driver = "simulated"
`
	c, err := ParseConfig("f.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if c.Device.ID != "EGW-0042" {
		t.Errorf("device id: got %q, want the certificate's CN EGW-0042", c.Device.ID)
	}
	r0, r1 := c.Bridge.Routes[0], c.Bridge.Routes[1]
	if r0.Direction != "out" || r0.QoS != 1 || r0.RemotePrefix != "devices/%d/" {
		t.Errorf("route 0 defaults: got %+v, want direction out, qos 1, prefix devices/%%d/", r0)
	}
	if r1.Direction != "in" || r1.QoS != 0 || r1.RemotePrefix != "cmd/%d/" {
		t.Errorf("route 1: got %+v", r1)
	}
	if c.Bridge.MaxInflight != 32 || c.Bridge.Outbox.MaxBytes != 256<<20 || c.Bridge.Outbox.CommitInterval.Duration != 50*time.Millisecond ||
		c.Bridge.Outbox.MaxAge.Duration != 168*time.Hour || *c.Bridge.StatusTopic != "devices/%d/status" || r0.Overflow != "drop-oldest" || r0.QoS0Offline != "keep" {
		t.Errorf("bridge defaults: got %+v, outbox %+v, route %+v", c.Bridge, c.Bridge.Outbox, r0)
	}
	if got := c.Sensors[0].Interval.Duration; got != time.Second {
		t.Errorf("sensor 0 interval: got %v, want 1s", got)
	}
	if got := c.Sensors[1].Interval.Duration; got != DefaultSensorInterval {
		t.Errorf("sensor 1 interval: got %v, want the default %v", got, DefaultSensorInterval)
	}
	want := strings.Count(src[:strings.LastIndex(src, "driver =")], "\n") + 1
	if got := c.lines["sensor[1].driver"]; got != want {
		t.Errorf("line of sensor[1].driver: got %d, want %d", got, want)
	}
}

func TestParseConfigMinimal(t *testing.T) {
	c, err := ParseConfig("f.toml", []byte("[device]\nid = \"EGW-1\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Bridge != nil || len(c.Sensors) != 0 || len(c.Broker.Listeners) != 0 {
		t.Errorf("got %+v, want no bridge, sensors or listeners", c)
	}
	if c.Device.StateDir != DefaultStateDir {
		t.Errorf("state_dir: got %q, want %q", c.Device.StateDir, DefaultStateDir)
	}
}

func TestParseConfigErrors(t *testing.T) {
	id := identityFiles(t)
	siteCA := pkitest.NewCA(t, "Site CA")
	srvPair := siteCA.Server(t, "site-server")
	otherCRL := pkitest.NewCA(t, "Other CA").CRL(t)
	missing := filepath.Join(t.TempDir(), "nope.crt")
	for _, tc := range []struct {
		name string
		src  string
		want []string // one line per problem, in order
	}{
		{"no device section", "[broker]\n", []string{
			"f.toml: device: missing section [device]",
			"f.toml: device.id: missing: set it, or set identity.cert so the certificate's CN is used",
		}},
		{"unknown key", "[device]\nid = \"a\"\ncolour = \"red\"\n", []string{
			"f.toml:3: device.colour: unknown key",
		}},
		{"unknown key in array table", "[device]\nid = \"a\"\n[[sensor]]\nname = \"s\"\ndriver = \"simulated\"\ncolour = 4\n", []string{
			"f.toml:6: sensor.colour: unknown key",
		}},
		{"wrong type", "[device]\nid = 7\n", []string{
			"f.toml:2: device.id: wrong type: want a string, got a TOML integer",
		}},
		{"bad duration", "[device]\nid = \"a\"\n[[sensor]]\nname = \"s\"\ndriver = \"simulated\"\ninterval = \"often\"\n", []string{
			"f.toml:6: sensor.interval: not a duration (want e.g. \"1s\", \"500ms\"): \"often\"",
		}},
		{"syntax error", "[device\nid = \"a\"\n", []string{
			"f.toml:1: expected ']' to close table name",
		}},
		{"cert is a directory", "[device]\nid = \"a\"\n[identity]\ncert = \"" + filepath.Dir(missing) + "\"\n", []string{
			"f.toml:4: identity.cert: " + filepath.Dir(missing) + ": is a directory",
		}},
		{"plain listener on all interfaces", "[device]\nid = \"a\"\n[[broker.listener]]\naddress = \"127.0.0.1:1883\"\n[[broker.listener]]\naddress = \"0.0.0.0:1883\"\n", []string{
			"f.toml:6: broker.listener[1].address: plain TCP is refused on non-loopback address 0.0.0.0: use 127.0.0.1 or ::1, or set allow_insecure_remote = true",
		}},
		{"TLS options on a plain listener", "[device]\nid = \"a\"\n[[broker.listener]]\naddress = \"127.0.0.1:1883\"\nrequire_certificate = true\n", []string{
			"f.toml:5: broker.listener[0].require_certificate: needs tls_cert and tls_key",
		}},
		{"TLS listener problems", "[device]\nid = \"a\"\n[[broker.listener]]\naddress = \"0.0.0.0:8883\"\ntls_cert = \"" + srvPair.CertFile + "\"\ntls_key = \"" + srvPair.KeyFile + "\"\nrequire_certificate = true\ntls_min_version = \"1.1\"\nbind_client_id = true\n", []string{
			"f.toml:3: broker.listener[0].client_ca: missing: client certificates need the CA that signs them",
			"f.toml:8: broker.listener[0].tls_min_version: TLS 1.1 is refused: 1.2 is the minimum",
			"f.toml:9: broker.listener[0].bind_client_id: needs use_identity_as_username",
		}},
		{"CRL from another CA", "[device]\nid = \"a\"\n[[broker.listener]]\naddress = \"0.0.0.0:8883\"\ntls_cert = \"" + srvPair.CertFile + "\"\ntls_key = \"" + srvPair.KeyFile + "\"\nclient_ca = \"" + siteCA.CertFile + "\"\ncrl_file = \"" + otherCRL + "\"\n", []string{
			"f.toml:8: broker.listener[0].crl_file: crl " + otherCRL + " is not signed by a CA in " + siteCA.CertFile,
		}},
		{"bridge over plain tcp", "[device]\n" + id + "[bridge]\naddress = [\"tcp://c:1883\"]\n[[bridge.route]]\nlocal = \"a/#\"\n", []string{
			"f.toml:7: bridge.address[0]: \"tcp://c:1883\": the uplink must use TLS (ssl://host:port)",
		}},
		{"bridge without identity", "[device]\nid = \"a\"\n[bridge]\naddress = [\"ssl://c:8883\"]\n[[bridge.route]]\nlocal = \"a/#\"\n", []string{
			"f.toml: identity.key: missing: the bridge authenticates with mutual TLS",
			"f.toml: identity.cert: missing: the bridge authenticates with mutual TLS",
			"f.toml: identity.ca: missing: the bridge authenticates with mutual TLS",
		}},
		{"bad route", "[device]\n" + id + "[bridge]\naddress = [\"ssl://c:8883\"]\n[[bridge.route]]\nlocal = \"a/#/b\"\ndirection = \"sideways\"\nremote_prefix = \"x/+/\"\nqos = 2\n", []string{
			"f.toml:9: bridge.route[0].local: \"a/#/b\": '#' must be the whole last level",
			"f.toml:10: bridge.route[0].direction: want out, in or both, got \"sideways\"",
			"f.toml:11: bridge.route[0].remote_prefix: \"x/+/\": no wildcards in a prefix",
			"f.toml:12: bridge.route[0].qos: must be 0 or 1, got 2",
		}},
		{"bad outbox and route options", "[device]\n" + id + "[bridge]\naddress = [\"ssl://c:8883\"]\nreconnect_min = \"5s\"\nreconnect_max = \"1s\"\n[bridge.outbox]\nmax_bytes = \"lots\"\n", []string{
			"f.toml:11: bridge.outbox.max_bytes: not a size (want e.g. \"256MiB\", \"64KiB\", \"1GB\"): \"lots\"",
		}},
		{"bad bridge values", "[device]\n" + id + "[bridge]\naddress = [\"ssl://c:8883\"]\nreconnect_min = \"5s\"\nreconnect_max = \"1s\"\nmax_inflight = 0\n[bridge.outbox]\nmax_bytes = \"1KiB\"\n[[bridge.route]]\nlocal = \"a/#\"\noverflow = \"drop-newest\"\nqos0_offline = \"maybe\"\n", []string{
			"f.toml:9: bridge.reconnect_max: 1s is less than reconnect_min (5s)",
			"f.toml:10: bridge.max_inflight: must be between 1 and 32767, got 0",
			"f.toml:12: bridge.outbox.max_bytes: must be at least 64KiB, got 1024 bytes",
			"f.toml:15: bridge.route[0].overflow: want drop-oldest or reject, got \"drop-newest\"",
			"f.toml:16: bridge.route[0].qos0_offline: want keep or drop, got \"maybe\"",
		}},
		{"bad broker limits", "[device]\nid = \"a\"\n[broker]\nmax_inflight_messages = 70000\n", []string{
			"f.toml:4: broker.max_inflight_messages: must be between 0 and 65535, got 70000",
		}},
		{"bridge without routes", "[device]\n" + id + "[bridge]\naddress = [\"ssl://c:8883\"]\n", []string{
			"f.toml:6: bridge.route: missing: a bridge with no [[bridge.route]] forwards nothing",
		}},
		{"unknown key store", "[device]\nid = \"a\"\n[identity]\nkey = \"vault:x\"\n", []string{
			"f.toml:4: identity.key: unknown key store \"vault\" (supported: " + strings.Join(provisioning.Schemes(), ", ") + ")",
		}},
		{"sensor problems", "[device]\nid = \"a\"\n[[sensor]]\nname = \"s\"\ndriver = \"simulated\"\n[[sensor]]\nname = \"s\"\ndriver = \"bme999\"\ninterval = \"1ms\"\n", []string{
			"f.toml:7: sensor[1].name: \"s\" is already the name of sensor[0]",
			"f.toml:8: sensor[1].driver: unknown driver \"bme999\" (known drivers: ads1115, bme280, ds18b20, gpio, pulse, sht3x, sht4x, simulated)",
			"f.toml:9: sensor[1].interval: must be at least 10ms, got 1ms",
		}},
		{"ads1115 options", "[device]\nid = \"a\"\n[[sensor]]\nname = \"adc\"\ndriver = \"ads1115\"\nchannel = \"ain4\"\ngain = \"5V\"\ndata_rate = 100\nscale = [1, 5]\npull = \"up\"\n", []string{
			"f.toml:6: sensor[0].channel: want ain0…ain3 (against GND) or ain0-ain1, ain0-ain3, ain1-ain3, ain2-ain3, got \"ain4\"",
			"f.toml:7: sensor[0].gain: want a full-scale range of 6.144V, 4.096V, 2.048V, 1.024V, 0.512V or 0.256V, got \"5V\"",
			"f.toml:8: sensor[0].data_rate: want one of [8 16 32 64 128 250 475 860] samples per second, got 100",
			"f.toml:9: sensor[0].scale: want [in_lo, in_hi, out_lo, out_hi], got 2 numbers",
			"f.toml:10: sensor[0].pull: not an option of driver ads1115 (its options: channel, gain, data_rate, scale, unit, quantity)",
		}},
		{"ads1115 scale without unit", "[device]\nid = \"a\"\n[[sensor]]\nname = \"adc\"\ndriver = \"ads1115\"\ngain = 7\nscale = [1, 5, 0, 1e6]\nquantity = \"a/b\"\n", []string{
			"f.toml:3: sensor[0].unit: missing: a scaled reading needs its SenML unit, e.g. \"Pa\", \"A\", \"m3/s\"",
			"f.toml:6: sensor[0].gain: want a full-scale range of 6.144V, 4.096V, 2.048V, 1.024V, 0.512V or 0.256V, got \"7\"",
			"f.toml:8: sensor[0].quantity: \"a/b\": want letters, digits and '-._:', starting with a letter or digit (it is a topic level and a SenML name)",
		}},
		{"gain of the wrong type", "[device]\nid = \"a\"\n[[sensor]]\nname = \"adc\"\ndriver = \"ads1115\"\ngain = true\n", []string{
			"f.toml:6: sensor[0].gain: wrong type: want a full-scale range such as \"4.096V\" or 4.096",
		}},
		{"gpio options", "[device]\nid = \"a\"\n[[sensor]]\nname = \"door\"\ndriver = \"gpio\"\npull = \"sideways\"\nedge = \"rising\"\ndebounce = \"-5ms\"\nchannel = \"ain0\"\n", []string{
			"f.toml:3: sensor[0].pin: missing: the GPIO the input is wired to, e.g. \"GPIO17\"",
			"f.toml:6: sensor[0].pull: want up, down or none, got \"sideways\"",
			"f.toml:7: sensor[0].edge: want both (publish each change) or none (poll only), got \"rising\"",
			"f.toml:8: sensor[0].debounce: want 0…10s, got -5ms",
			"f.toml:9: sensor[0].channel: not an option of driver gpio (its options: pull, edge, debounce, invert, quantity)",
		}},
		{"pulse options and a shared pin", "[device]\nid = \"a\"\n[[sensor]]\nname = \"rain\"\ndriver = \"pulse\"\npin = \"GPIO17\"\n[[sensor]]\nname = \"flow\"\ndriver = \"pulse\"\npin = \"GPIO17\"\nedge = \"none\"\ndebounce = \"1m\"\nquantity = \"litres\"\n", []string{
			"f.toml:10: sensor[1].pin: \"GPIO17\" is already the pin of sensor[0]",
			"f.toml:11: sensor[1].edge: want falling, rising or both, got \"none\"",
			"f.toml:12: sensor[1].debounce: want 0…10s, got 1m0s",
			"f.toml:13: sensor[1].quantity: not an option of driver pulse (its options: pull, edge, debounce, invert)",
		}},
		{"GPIO keys on an I²C chip", "[device]\nid = \"a\"\n[[sensor]]\nname = \"room\"\ndriver = \"bme280\"\npin = \"GPIO4\"\ninvert = true\n", []string{
			"f.toml:6: sensor[0].pin: not an option of driver bme280: only GPIO drivers take a pin",
			"f.toml:7: sensor[0].invert: not an option of driver bme280 (its options: mode, standby, filter, oversampling)",
		}},
		{"bme280 options", "[device]\nid = \"a\"\n[[sensor]]\nname = \"room\"\ndriver = \"bme280\"\nmode = \"continuous\"\nfilter = 3\noversampling = { pressure = 32, wind = 1 }\nchannel = \"ain0\"\n", []string{
			"f.toml:6: sensor[0].mode: want forced (a measurement per read) or normal (the chip measures on its own), got \"continuous\"",
			"f.toml:7: sensor[0].filter: want an IIR filter coefficient of 0 (off), 2, 4, 8 or 16, got 3",
			"f.toml:8: sensor[0].oversampling.pressure: want 1, 2, 4, 8 or 16 samples, got 32",
			"f.toml:8: sensor[0].oversampling.wind: not a quantity of the chip: want temperature, pressure or humidity",
			"f.toml:9: sensor[0].channel: not an option of driver bme280 (its options: mode, standby, filter, oversampling)",
		}},
		{"bme280 standby", "[device]\nid = \"a\"\n[[sensor]]\nname = \"room\"\ndriver = \"bme280\"\nstandby = \"1s\"\n[[sensor]]\nname = \"hall\"\ndriver = \"bme280\"\nmode = \"normal\"\nstandby = \"100ms\"\n[[sensor]]\nname = \"adc\"\ndriver = \"ads1115\"\nmode = \"normal\"\n", []string{
			"f.toml:6: sensor[0].standby: only with mode = \"normal\": in forced mode the chip sleeps between reads",
			"f.toml:11: sensor[1].standby: want 0.5ms, 62.5ms, 125ms, 250ms, 500ms or 1s; 10ms or 20ms on a BME280; 2s or 4s on a BMP280; got 100ms",
			"f.toml:15: sensor[2].mode: not an option of driver ads1115 (its options: channel, gain, data_rate, scale, unit, quantity)",
		}},
		{"bme280 oversampling not a table", "[device]\nid = \"a\"\n[[sensor]]\nname = \"room\"\ndriver = \"bme280\"\noversampling = 16\n", []string{
			"f.toml:6: sensor.oversampling: wrong type: want a table of integers by quantity, e.g. { pressure = 16 }, got a TOML integer",
		}},
		{"device id with wildcard", "[device]\nid = \"a/#\"\n", []string{
			"f.toml:2: device.id: \"a/#\": want letters, digits and '-._:', starting with a letter or digit (it is used in topics and SenML names)",
		}},
		{"sensor name with a space", "[device]\nid = \"a\"\n[[sensor]]\nname = \"boiler room\"\ndriver = \"simulated\"\n", []string{
			"f.toml:4: sensor[0].name: \"boiler room\": want letters, digits and '-._:', starting with a letter or digit (it is a topic level and a SenML name)",
		}},
		{"sensor poll and publish keys", "[device]\nid = \"a\"\n[[sensor]]\nname = \"s\"\ndriver = \"simulated\"\ninterval = \"10s\"\ntimeout = \"20s\"\nqos = 2\ntopic = \"sensors/%n\"\ndeadband = { temperature = -1, \"a/b\" = 1 }\nmax_silence = \"5s\"\n", []string{
			"f.toml:7: sensor[0].timeout: must be between 1ms and the interval (10s), got 20s",
			"f.toml:8: sensor[0].qos: must be 0 or 1, got 2",
			"f.toml:9: sensor[0].topic: \"sensors/%n\": no %q: each quantity needs a topic of its own",
			"f.toml:10: sensor[0].deadband.a/b: \"a/b\" is not a quantity name",
			"f.toml:10: sensor[0].deadband.temperature: must be 0 (publish on any change) or more, got -1",
			"f.toml:11: sensor[0].max_silence: must be at least the interval (10s), got 5s",
		}},
		{"sensor topics", "[device]\nid = \"a\"\n[[sensor]]\nname = \"s\"\ndriver = \"simulated\"\ntopic = \"boiler/%q\"\nmax_silence = \"1m\"\n[[sensor]]\nname = \"t\"\ndriver = \"simulated\"\ntopic = \"boiler/%q\"\n[[sensor]]\nname = \"u\"\ndriver = \"simulated\"\ntopic = \"x/+/%n/%q\"\ntimeout = \"0s\"\n", []string{
			"f.toml:7: sensor[0].max_silence: needs a deadband: without one every reading is published",
			"f.toml:11: sensor[1].topic: \"boiler/%q\" gives sensor[0]'s topics (boiler/%q)",
			"f.toml:15: sensor[2].topic: \"x/+/%n/%q\": no wildcards in a topic",
			"f.toml:16: sensor[2].timeout: must be between 1ms and the interval (10s), got 0s",
		}},
		{"sensor deadband not a table", "[device]\nid = \"a\"\n[[sensor]]\nname = \"s\"\ndriver = \"simulated\"\ndeadband = 0.5\n", []string{
			"f.toml:6: sensor.deadband: wrong type: want a table of numbers by quantity, e.g. { temperature = 0.2 }, got a TOML float",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig("f.toml", []byte(tc.src))
			if err == nil {
				t.Fatalf("got no error, want %q", tc.want)
			}
			got := strings.Split(err.Error(), "\n")
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("got\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}

func TestLoadConfigMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fieldgate.toml")
	_, err := LoadConfig(path)
	if want := path + ": open " + path + ": no such file or directory"; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
	if err := os.WriteFile(path, []byte("[device]\nid = \"x\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(path); err != nil {
		t.Errorf("got %v, want a valid config", err)
	}
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{{"256MiB", 256 << 20}, {"64 KiB", 64 << 10}, {"1GB", 1e9}, {"1.5MiB", 3 << 19}, {"4096", 4096}, {"10B", 10}} {
		if got, err := parseSize(tc.in); err != nil || got != tc.want {
			t.Errorf("parseSize(%q): got %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "MiB", "-1KiB", "12 parsecs"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q): got no error", in)
		}
	}
}

// The bme280 keys reach the driver's options as written.
func TestParseConfigBME280Options(t *testing.T) {
	c, err := ParseConfig("f.toml", []byte(`[device]
id = "a"

[[sensor]]
name = "room"
driver = "bme280"
address = 0x77
mode = "normal"
standby = "0.5ms"
filter = 16
oversampling = { temperature = 2, pressure = 16 }
`))
	if err != nil {
		t.Fatal(err)
	}
	o := c.Sensors[0].options()
	if o.Mode != "normal" || o.Standby == nil || *o.Standby != 500*time.Microsecond || o.Filter != 16 ||
		o.Oversampling["temperature"] != 2 || o.Oversampling["pressure"] != 16 || len(o.Oversampling) != 2 || c.Sensors[0].Bus != "/dev/i2c-1" {
		t.Errorf("bme280 options: got %+v", o)
	}
}

// Durations are Go's, or whole days and weeks as Mosquitto writes
// persistent_client_expiration.
func TestParseDuration(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{{"1s", time.Second}, {"36h", 36 * time.Hour}, {"7d", 7 * 24 * time.Hour}, {"2w", 14 * 24 * time.Hour}, {"0d", 0}} {
		var d Duration
		if err := d.UnmarshalText([]byte(tc.in)); err != nil || d.Duration != tc.want {
			t.Errorf("%q: got %v, %v; want %v", tc.in, d.Duration, err, tc.want)
		}
	}
	for _, in := range []string{"d", "7", "-1d", "1.5d", "7x", "1w2d"} {
		var d Duration
		if err := d.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("%q: got %v, want an error", in, d.Duration)
		}
	}
	c, err := ParseConfig("f.toml", []byte("[device]\nid = \"a\"\n[broker]\npersistent_client_expiration = \"7d\"\n"))
	if err != nil || c.Broker.PersistentClientExpiration.Duration != 7*24*time.Hour {
		t.Errorf("broker.persistent_client_expiration = \"7d\": got %+v, %v", c.Broker.PersistentClientExpiration, err)
	}
	_, err = ParseConfig("f.toml", []byte("[device]\nid = \"a\"\n[broker]\npersistent_client_expiration = \"-1h\"\n"))
	if err == nil || !strings.Contains(err.Error(), "broker.persistent_client_expiration") {
		t.Errorf("a negative expiration: got %v, want an error naming the key", err)
	}
}
