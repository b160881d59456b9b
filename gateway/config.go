package gateway

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"

	"github.com/fieldgate/fieldgate/bridge"
	"github.com/fieldgate/fieldgate/bridge/outbox"
	"github.com/fieldgate/fieldgate/localbroker"
	"github.com/fieldgate/fieldgate/provisioning"
	"github.com/fieldgate/fieldgate/sensors"
)

// DefaultConfigPath is where the Buildroot image installs the configuration.
const DefaultConfigPath = "/etc/fieldgate/fieldgate.toml"

// Config is the whole of /etc/fieldgate/fieldgate.toml. Every section but
// [device] is optional: without [bridge] the gateway is a local broker only,
// without [[sensor]] it reads no sensors of its own.
type Config struct {
	Device   DeviceConfig   `toml:"device"`
	Identity IdentityConfig `toml:"identity"`
	Broker   BrokerConfig   `toml:"broker"`
	Bridge   *BridgeConfig  `toml:"bridge"`
	Sensors  []SensorConfig `toml:"sensor"`
	Metrics  MetricsConfig  `toml:"metrics"`

	// Path is the file the configuration was read from.
	Path string `toml:"-"`
	// Unprovisioned says that identity.cert names a file that does not
	// exist yet: a fresh device, before "fieldgate provision install". The
	// gateway then runs without its bridge.
	Unprovisioned bool `toml:"-"`
	// forProvisioning relaxes the checks a device that has no key or
	// certificate yet cannot pass (see LoadConfigForProvisioning).
	forProvisioning bool
	// lines maps a key path ("bridge.route[0].qos", "sensor[1]") to the
	// line it was written on, so that validation errors can name it.
	lines map[string]int
}

// DeviceConfig is the [device] section.
type DeviceConfig struct {
	// ID names the gateway: it is the MQTT client id on the uplink and
	// replaces %d in remote prefixes. Default: the CN of the certificate.
	ID       string `toml:"id"`
	StateDir string `toml:"state_dir"`
}

// IdentityConfig is the [identity] section: the device's key, the
// certificate the factory signed for it, and the CA that signed the central
// broker's certificate.
type IdentityConfig struct {
	// Key is the key store URI: file:PATH, tpm:/dev/tpmrm0,
	// tpm:tcp://HOST:PORT or pkcs11:… (see provisioning.Open).
	Key string `toml:"key"`
	// Cert is the device's certificate, then the chain up to (not
	// including) the root: what the uplink presents.
	Cert string `toml:"cert"`
	// CA verifies the central broker.
	CA string `toml:"ca"`
	// RenewAfter is the fraction of the certificate's lifetime after which
	// the gateway warns that it is due for renewal. Default 0.75.
	RenewAfter float64 `toml:"renew_after"`
}

// BrokerConfig is the [broker] section.
type BrokerConfig struct {
	AllowAnonymous bool   `toml:"allow_anonymous"`
	PasswordFile   string `toml:"password_file"`
	ACLFile        string `toml:"acl_file"`
	// ClientIDPrefixes: client ids must start with one of these.
	ClientIDPrefixes []string         `toml:"clientid_prefixes"`
	Listeners        []ListenerConfig `toml:"listener"`

	// Limits; 0 means the default.
	MaxClients    int  `toml:"max_clients"`
	MaxPacketSize Size `toml:"max_packet_size"`
	MaxInflight   int  `toml:"max_inflight"`
	// MaxInflightMessages, as Mosquitto's max_inflight_messages, bounds
	// what the broker has unacknowledged at a client; 0: no bound but
	// an MQTT 5 client's own receive maximum.
	MaxInflightMessages int      `toml:"max_inflight_messages"`
	MaxQueuedMessages   int      `toml:"max_queued_messages"`
	MaxPublishRate      float64  `toml:"max_publish_rate"`
	MaxAuthFailures     int      `toml:"max_auth_failures"`
	MaxKeepalive        Duration `toml:"max_keepalive"`
	// PersistentClientExpiration, as Mosquitto's, ends the persistent
	// sessions that set no expiry of their own (3.1.1, or MQTT 5 asking
	// for none) once the client has been away this long; 0: never.
	PersistentClientExpiration Duration `toml:"persistent_client_expiration"`
	// WatchFiles reloads, as SIGHUP does, when one of the files a reload
	// reads changes, looked at every WatchInterval (default 2s).
	WatchFiles    bool     `toml:"watch_files"`
	WatchInterval Duration `toml:"watch_interval"`
}

// ListenerConfig is one [[broker.listener]].
type ListenerConfig struct {
	Address string `toml:"address"`
	// A plain listener on a non-loopback address must say so.
	AllowInsecureRemote bool `toml:"allow_insecure_remote"`
	// WebSocket serves MQTT over WebSocket: ws, or wss with tls_cert and
	// the TLS keys of any TLS listener.
	WebSocket bool `toml:"websocket"`

	// TLS, with Mosquitto's option names.
	TLSCert               string `toml:"tls_cert"`
	TLSKey                string `toml:"tls_key"`
	ClientCA              string `toml:"client_ca"`
	RequireCertificate    bool   `toml:"require_certificate"`
	UseIdentityAsUsername bool   `toml:"use_identity_as_username"`
	UseSubjectAsUsername  bool   `toml:"use_subject_as_username"`
	BindClientID          bool   `toml:"bind_client_id"`
	CRLFile               string `toml:"crl_file"`
	TLSMinVersion         string `toml:"tls_min_version"`
}

// isTLS reports whether the listener is a TLS one.
func (l *ListenerConfig) isTLS() bool { return l.TLSCert != "" || l.TLSKey != "" }

// BridgeConfig is the [bridge] section.
type BridgeConfig struct {
	Address          []string      `toml:"address"`
	ServerName       string        `toml:"server_name"`
	ALPN             []string      `toml:"alpn"`
	KeepAlive        Duration      `toml:"keepalive"`
	ReconnectMin     Duration      `toml:"reconnect_min"`
	ReconnectMax     Duration      `toml:"reconnect_max"`
	FailbackInterval Duration      `toml:"failback_interval"`
	MaxInflight      int           `toml:"max_inflight"`
	MaxRate          float64       `toml:"max_rate"`
	StatusTopic      *string       `toml:"status_topic"`
	CheckpointTopic  *string       `toml:"checkpoint_topic"`
	SequenceField    string        `toml:"sequence_field"`
	Outbox           OutboxConfig  `toml:"outbox"`
	Routes           []RouteConfig `toml:"route"`
}

// OutboxConfig is [bridge.outbox]. The file is outbox.db in the state
// directory.
type OutboxConfig struct {
	CommitInterval Duration `toml:"commit_interval"`
	MaxBytes       Size     `toml:"max_bytes"`
	MaxMessages    int      `toml:"max_messages"`
	MaxAge         Duration `toml:"max_age"`
}

// RouteConfig is one [[bridge.route]].
type RouteConfig struct {
	Local        string `toml:"local"`
	Direction    string `toml:"direction"`
	LocalPrefix  string `toml:"local_prefix"`
	RemotePrefix string `toml:"remote_prefix"`
	QoS          int    `toml:"qos"`
	Overflow     string `toml:"overflow"`
	QoS0Offline  string `toml:"qos0_offline"`
}

// MetricsConfig is [metrics]: Prometheus metrics on /metrics and the
// uplink's health on /healthz.
type MetricsConfig struct {
	// Address is host:port to serve on, e.g. "127.0.0.1:9411"; empty:
	// no metrics server.
	Address string `toml:"address"`
}

// SensorConfig is one [[sensor]].
type SensorConfig struct {
	Name     string   `toml:"name"`
	Driver   string   `toml:"driver"`
	Interval Duration `toml:"interval"`
	// Bus and Address place an I²C chip: "/dev/i2c-1" (the default for
	// I²C drivers) and e.g. 0x76 (0: the driver's default).
	Bus     string `toml:"bus"`
	Address int    `toml:"address"`
	// Device names a 1-Wire probe ("28-0000075b1234"); empty: the only one.
	Device string `toml:"device"`
	// Pin is the GPIO of the gpio and pulse drivers, as periph names it:
	// "GPIO17" (header pin 11).
	Pin string `toml:"pin"`

	// Driver options. Each driver declares the ones it takes
	// (sensors.RegisterOptions); any other set is an error.
	Channel  string    `toml:"channel"`   // ads1115: "ain0"…"ain3", "ain0-ain1", "ain0-ain3", "ain1-ain3", "ain2-ain3"
	Gain     any       `toml:"gain"`      // ads1115: full-scale range, "4.096V" or 4.096
	DataRate int       `toml:"data_rate"` // ads1115: samples per second
	Scale    []float64 `toml:"scale"`     // ads1115: [in_lo, in_hi, out_lo, out_hi], volts to unit
	Unit     string    `toml:"unit"`      // ads1115: SenML unit of the scaled value
	Quantity string    `toml:"quantity"`  // ads1115, gpio: the measurement's name
	Pull     string    `toml:"pull"`      // gpio, pulse: "up", "down" or "none"
	Edge     string    `toml:"edge"`      // gpio: "both" or "none"; pulse: "falling", "rising" or "both"
	Debounce *Duration `toml:"debounce"`  // gpio, pulse
	Invert   bool      `toml:"invert"`    // gpio, pulse: the input is active low
	Mode     string    `toml:"mode"`      // bme280: "forced" (default) or "normal"
	Standby  *Duration `toml:"standby"`   // bme280, normal mode: t_sb, "0.5ms"…"1s"
	Filter   int       `toml:"filter"`    // bme280: IIR filter coefficient, 0 (off), 2, 4, 8 or 16
	// bme280: samples per measurement by quantity, 1, 2, 4, 8 or 16.
	Oversampling map[string]int `toml:"oversampling"`

	// How the poll loop reads and publishes it (sensorloop.go).
	Timeout Duration `toml:"timeout"` // of one read; 0: 5s, or the interval if shorter
	QoS     int      `toml:"qos"`     // of the readings; default 1
	Retain  bool     `toml:"retain"`  // the readings
	Topic   string   `toml:"topic"`   // template: %n name, %q quantity, %d device id
	// Deadband, by quantity: publish only when the value moved by more
	// than this since the value last published.
	Deadband   map[string]float64 `toml:"deadband"`
	MaxSilence Duration           `toml:"max_silence"` // publish anyway after this long
}

// driverOptionKeys are the keys of SensorConfig that belong to drivers.
var driverOptionKeys = []string{"channel", "gain", "data_rate", "scale", "unit", "quantity", "pull", "edge", "debounce", "invert",
	"mode", "standby", "filter", "oversampling"}

// options are s's driver options as the driver gets them.
func (s *SensorConfig) options() sensors.Options {
	o := sensors.Options{Channel: s.Channel, DataRate: s.DataRate, Scale: s.Scale, Unit: s.Unit, Quantity: s.Quantity,
		Pull: s.Pull, Edge: s.Edge, Invert: s.Invert, Mode: s.Mode, Filter: s.Filter, Oversampling: s.Oversampling}
	switch g := s.Gain.(type) {
	case string:
		o.Gain = g
	case float64:
		o.Gain = strconv.FormatFloat(g, 'f', -1, 64)
	case int64:
		o.Gain = strconv.FormatInt(g, 10)
	}
	if s.Debounce != nil {
		o.Debounce = &s.Debounce.Duration
	}
	if s.Standby != nil {
		o.Standby = &s.Standby.Duration
	}
	return o
}

// Duration is a time.Duration written as a Go duration string ("1s",
// "2m"), or a whole number of days or weeks ("7d", "2w") as Mosquitto
// writes its expirations.
type Duration struct{ time.Duration }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if s := string(b); err != nil && len(s) > 1 && strings.IndexByte("dw", s[len(s)-1]) >= 0 {
		if n, nerr := strconv.ParseUint(s[:len(s)-1], 10, 16); nerr == nil {
			v, err = time.Duration(n)*24*time.Hour, nil
			if s[len(s)-1] == 'w' {
				v *= 7
			}
		}
	}
	if err != nil {
		return fmt.Errorf("not a duration (want e.g. \"1s\", \"500ms\"): %q", b)
	}
	d.Duration = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Size is a number of bytes written as a string with a unit: "256MiB",
// "64 KiB", "1GB", or a bare number of bytes.
type Size int64

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *Size) UnmarshalText(b []byte) error {
	v, err := parseSize(string(b))
	if err != nil {
		return err
	}
	*s = Size(v)
	return nil
}

func parseSize(str string) (int64, error) {
	t := strings.TrimSpace(str)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.TrimSpace(t[i:])
	}
	mult, ok := map[string]float64{"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[unit]
	v, err := strconv.ParseFloat(num, 64)
	if !ok || err != nil || v < 0 {
		return 0, fmt.Errorf("not a size (want e.g. \"256MiB\", \"64KiB\", \"1GB\"): %q", str)
	}
	return int64(v * mult), nil
}

// Defaults.
const (
	DefaultStateDir = "/var/lib/fieldgate"
	// UnprovisionedID is the device id before a certificate names it.
	UnprovisionedID       = "unprovisioned"
	DefaultSensorInterval = 10 * time.Second
	DefaultRemotePrefix   = "devices/%d/"
	DefaultStatusTopic    = "devices/%d/status"
	DefaultCheckpoint     = "devices/%d/checkpoint"
)

// ConfigError is one problem in a configuration file. It prints as
// FILE:LINE: key: reason, the form editors and CI logs can jump to.
type ConfigError struct {
	File   string
	Line   int // 0 when the key is absent from the file
	Key    string
	Reason string
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":" + strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Reason)
	return b.String()
}

// LoadConfig reads, decodes strictly and validates the configuration at
// path. The error, if any, joins one *ConfigError per problem found.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &ConfigError{File: path, Reason: err.Error()}
	}
	return ParseConfig(path, data)
}

// LoadConfigForProvisioning is LoadConfig for the provision commands,
// which run on a device that may not have its key, its certificate or its
// id yet: their absence is not an error, anything else still is.
func LoadConfigForProvisioning(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &ConfigError{File: path, Reason: err.Error()}
	}
	return parseConfig(path, data, true)
}

// ParseConfig is LoadConfig for data already read from path.
func ParseConfig(path string, data []byte) (*Config, error) {
	return parseConfig(path, data, false)
}

func parseConfig(path string, data []byte, forProvisioning bool) (*Config, error) {
	lines, err := keyLines(path, data)
	if err != nil {
		return nil, err
	}
	c := &Config{Path: path, lines: lines, forProvisioning: forProvisioning}
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return nil, decodeError(path, err)
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// decodeError turns go-toml's errors into ConfigErrors.
func decodeError(path string, err error) error {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		var errs []error
		for i := range strict.Errors {
			de := &strict.Errors[i]
			line, _ := de.Position()
			errs = append(errs, &ConfigError{File: path, Line: line, Key: strings.Join(de.Key(), "."), Reason: "unknown key"})
		}
		return errors.Join(errs...)
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		line, _ := de.Position()
		return &ConfigError{File: path, Line: line, Key: strings.Join(de.Key(), "."), Reason: typeReason(strings.TrimPrefix(de.Error(), "toml: "))}
	}
	return &ConfigError{File: path, Reason: err.Error()}
}

// nameRE is what a device id or sensor name may be: the characters RFC
// 8428 allows in a SenML name, less '/', which separates topic levels.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]*$`)

var typeMismatch = regexp.MustCompile(`^cannot decode TOML (.+) into .* of type (\S+)$`)

// typeReason rewrites go-toml's type mismatch message, which names Go
// struct fields, in the words of the configuration file.
func typeReason(msg string) string {
	m := typeMismatch.FindStringSubmatch(msg)
	if m == nil {
		return msg
	}
	want := map[string]string{
		"string":           "a string",
		"int":              "an integer",
		"bool":             "true or false",
		"[]string":         "an array of strings",
		"gateway.Duration": "a duration such as \"1s\"",
		"gateway.Size":     "a size such as \"256MiB\"",
		"float64":          "a number",
		// sensor.deadband
		"map[string]float64": "a table of numbers by quantity, e.g. { temperature = 0.2 }",
		// sensor.oversampling
		"map[string]int": "a table of integers by quantity, e.g. { pressure = 16 }",
	}[m[2]]
	if want == "" {
		want = m[2]
	}
	return fmt.Sprintf("wrong type: want %s, got a TOML %s", want, m[1])
}

// keyLines maps every key path in the document to its line. Arrays of
// tables are indexed: the second [[sensor]]'s interval is
// "sensor[1].interval", and its header is "sensor[1]".
func keyLines(path string, data []byte) (map[string]int, error) {
	lines := map[string]int{}
	counts := map[string]int{}
	var p unstable.Parser
	p.Reset(data)
	prefix := ""
	for p.NextExpression() {
		n := p.Expression()
		switch n.Kind {
		case unstable.Table, unstable.ArrayTable:
			path, line := nodeKey(&p, n)
			parts := strings.Split(path, ".")
			base := resolveArrays(parts[:len(parts)-1], counts)
			if base != "" {
				base += "."
			}
			base += parts[len(parts)-1]
			if n.Kind == unstable.ArrayTable {
				idx := counts[base]
				counts[base]++
				base += "[" + strconv.Itoa(idx) + "]"
			}
			prefix = base
			lines[prefix] = line
		case unstable.KeyValue:
			key, line := nodeKey(&p, n)
			if prefix != "" {
				key = prefix + "." + key
			}
			lines[key] = line
		}
	}
	if err := p.Error(); err != nil {
		ce := &ConfigError{File: path, Reason: err.Error()}
		var pe *unstable.ParserError
		if errors.As(err, &pe) {
			ce.Reason = pe.Message
			if len(pe.Highlight) > 0 {
				ce.Line = p.Shape(p.Range(pe.Highlight)).Start.Line
			}
		}
		return nil, ce
	}
	return lines, nil
}

// resolveArrays joins the components of a table path, giving every
// component that names an array of tables the index of its latest element:
// after two [[a]], the parent path "a" of [a.b] is "a[1]".
func resolveArrays(parts []string, counts map[string]int) string {
	out := ""
	for i, part := range parts {
		if i > 0 {
			out += "."
		}
		out += part
		if n, ok := counts[out]; ok {
			out += "[" + strconv.Itoa(n-1) + "]"
		}
	}
	return out
}

func nodeKey(p *unstable.Parser, n *unstable.Node) (string, int) {
	var parts []string
	line := 0
	it := n.Key()
	for it.Next() {
		k := it.Node()
		parts = append(parts, string(k.Data))
		if line == 0 {
			if k.Raw.Length > 0 {
				line = p.Shape(k.Raw).Start.Line
			} else if n.Raw.Length > 0 {
				line = p.Shape(n.Raw).Start.Line
			}
		}
	}
	return strings.Join(parts, "."), line
}

// lineOf returns the line of key, or of the closest enclosing table that is
// in the file, or 0.
func (c *Config) lineOf(key string) int {
	for k := key; k != ""; {
		if l, ok := c.lines[k]; ok {
			return l
		}
		i := strings.LastIndexAny(k, ".[")
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return 0
}

// errorf records a problem with key.
func (c *Config) errorf(errs *[]error, key, format string, args ...any) {
	*errs = append(*errs, &ConfigError{File: c.Path, Line: c.lineOf(key), Key: key, Reason: fmt.Sprintf(format, args...)})
}

// validate fills in defaults and checks everything that can be checked
// without starting anything: values, files, and how sections fit together.
func (c *Config) validate() error {
	var errs []error
	if _, ok := c.lines["device"]; !ok {
		c.errorf(&errs, "device", "missing section [device]")
	}
	if c.Device.StateDir == "" {
		c.Device.StateDir = DefaultStateDir
	}

	// Identity: what the files say is checked here, so that check-config
	// catches a missing or unreadable file before the service starts.
	var certCN string
	if c.Identity.Cert != "" {
		if cert, err := readCert(c.Identity.Cert); err == nil {
			certCN = cert.Subject.CommonName
		} else if errors.Is(err, fs.ErrNotExist) {
			c.Unprovisioned = true
		} else {
			c.errorf(&errs, "identity.cert", "%v", err)
		}
	}
	if c.Identity.Key != "" {
		if err := provisioning.CheckURI(c.Identity.Key); err != nil {
			c.errorf(&errs, "identity.key", "%v", err)
		} else if path, ok := strings.CutPrefix(c.Identity.Key, "file:"); ok && !c.forProvisioning {
			// Before provisioning there may be no key yet; a key that is
			// there must be private all the same.
			if err := provisioning.CheckPrivate(path); err != nil && !(c.Unprovisioned && errors.Is(err, provisioning.ErrNoKey)) {
				c.errorf(&errs, "identity.key", "%s", strings.TrimPrefix(err.Error(), "provisioning: "))
			}
		}
	}
	if !c.has("identity.renew_after") {
		c.Identity.RenewAfter = 0.75
	} else if r := c.Identity.RenewAfter; r <= 0 || r >= 1 {
		c.errorf(&errs, "identity.renew_after", "%v: want a fraction of the certificate's lifetime, between 0 and 1 (e.g. 0.75)", r)
	}
	if c.Identity.CA != "" {
		if data, err := os.ReadFile(c.Identity.CA); err != nil {
			c.errorf(&errs, "identity.ca", "%v", pathError(err))
		} else if !x509.NewCertPool().AppendCertsFromPEM(data) {
			c.errorf(&errs, "identity.ca", "%s: no PEM certificate found", c.Identity.CA)
		}
	}
	if c.Device.ID == "" {
		c.Device.ID = certCN
	}
	if c.Device.ID == "" && c.forProvisioning {
		// A fresh device: provision csr names it with --id.
	} else if c.Device.ID == "" && c.Unprovisioned {
		c.Device.ID = UnprovisionedID
	} else if c.Device.ID == "" {
		c.errorf(&errs, "device.id", "missing: set it, or set identity.cert so the certificate's CN is used")
	} else if !nameRE.MatchString(c.Device.ID) {
		c.errorf(&errs, "device.id", "%q: want letters, digits and '-._:', starting with a letter or digit (it is used in topics and SenML names)", c.Device.ID)
	}

	if p := c.Broker.PasswordFile; p != "" {
		if _, err := localbroker.LoadPasswordFile(p); err != nil {
			c.errorf(&errs, "broker.password_file", "%v", strings.TrimPrefix(pathError(err).Error(), "localbroker: "))
		}
	}
	if p := c.Broker.ACLFile; p != "" {
		if _, err := localbroker.LoadACL(p); err != nil {
			c.errorf(&errs, "broker.acl_file", "%v", strings.TrimPrefix(pathError(err).Error(), "localbroker: "))
		}
	}
	for i := range c.Broker.Listeners {
		c.validateListener(&errs, i)
	}
	for _, l := range []struct {
		key   string
		v     float64
		least float64
		most  float64
	}{
		{"max_clients", float64(c.Broker.MaxClients), 0, 1 << 20},
		{"max_packet_size", float64(c.Broker.MaxPacketSize), 0, 256 << 20},
		{"max_inflight", float64(c.Broker.MaxInflight), 0, 65535},
		{"max_inflight_messages", float64(c.Broker.MaxInflightMessages), 0, 65535},
		{"max_queued_messages", float64(c.Broker.MaxQueuedMessages), 0, 1 << 24},
		{"max_publish_rate", c.Broker.MaxPublishRate, 0, 1e9},
		{"max_auth_failures", float64(c.Broker.MaxAuthFailures), 0, 1e6},
		{"max_keepalive", c.Broker.MaxKeepalive.Seconds(), 0, 65535},
		{"persistent_client_expiration", c.Broker.PersistentClientExpiration.Seconds(), 0, 100 * 365 * 86400},
	} {
		if l.v < l.least || l.v > l.most {
			c.errorf(&errs, "broker."+l.key, "must be between %v and %v, got %v", l.least, l.most, l.v)
		}
	}
	c.durationDefault(&errs, "broker.watch_interval", &c.Broker.WatchInterval, 2*time.Second, 100*time.Millisecond)

	if b := c.Bridge; b != nil {
		if len(b.Address) == 0 {
			c.errorf(&errs, "bridge.address", "missing: at least one ssl://host:port")
		}
		for i, a := range b.Address {
			if err := checkBridgeAddress(a); err != nil {
				c.errorf(&errs, fmt.Sprintf("bridge.address[%d]", i), "%v", err)
			}
		}
		for _, k := range []struct{ key, val string }{{"identity.key", c.Identity.Key}, {"identity.cert", c.Identity.Cert}, {"identity.ca", c.Identity.CA}} {
			if k.val == "" {
				c.errorf(&errs, k.key, "missing: the bridge authenticates with mutual TLS")
			}
		}
		if len(b.Routes) == 0 {
			c.errorf(&errs, "bridge.route", "missing: a bridge with no [[bridge.route]] forwards nothing")
		}
		c.durationDefault(&errs, "bridge.keepalive", &b.KeepAlive, 30*time.Second, time.Second)
		c.durationDefault(&errs, "bridge.reconnect_min", &b.ReconnectMin, time.Second, 10*time.Millisecond)
		c.durationDefault(&errs, "bridge.reconnect_max", &b.ReconnectMax, 2*time.Minute, 10*time.Millisecond)
		if b.ReconnectMax.Duration < b.ReconnectMin.Duration {
			c.errorf(&errs, "bridge.reconnect_max", "%s is less than reconnect_min (%s)", b.ReconnectMax, b.ReconnectMin)
		}
		c.durationDefault(&errs, "bridge.failback_interval", &b.FailbackInterval, 5*time.Minute, time.Second)
		if !c.has("bridge.max_inflight") {
			b.MaxInflight = 32
		}
		if b.MaxInflight < 1 || b.MaxInflight > bridge.MaxWindow-1 {
			c.errorf(&errs, "bridge.max_inflight", "must be between 1 and %d, got %d", bridge.MaxWindow-1, b.MaxInflight)
		}
		if b.MaxRate < 0 {
			c.errorf(&errs, "bridge.max_rate", "must be 0 (unlimited) or more, got %v", b.MaxRate)
		}
		if b.StatusTopic == nil {
			t := DefaultStatusTopic
			b.StatusTopic = &t
		} else if strings.ContainsAny(*b.StatusTopic, "+#") {
			c.errorf(&errs, "bridge.status_topic", "%q: no wildcards in a topic", *b.StatusTopic)
		}
		if b.CheckpointTopic == nil {
			t := DefaultCheckpoint
			b.CheckpointTopic = &t
		} else if strings.ContainsAny(*b.CheckpointTopic, "+#") {
			c.errorf(&errs, "bridge.checkpoint_topic", "%q: no wildcards in a topic", *b.CheckpointTopic)
		}
		ob := &b.Outbox
		c.durationDefault(&errs, "bridge.outbox.commit_interval", &ob.CommitInterval, 50*time.Millisecond, time.Millisecond)
		c.durationDefault(&errs, "bridge.outbox.max_age", &ob.MaxAge, 168*time.Hour, time.Minute)
		if !c.has("bridge.outbox.max_bytes") {
			ob.MaxBytes = 256 << 20
		}
		if ob.MaxBytes < 64<<10 {
			c.errorf(&errs, "bridge.outbox.max_bytes", "must be at least 64KiB, got %d bytes", ob.MaxBytes)
		}
		if ob.MaxMessages < 0 {
			c.errorf(&errs, "bridge.outbox.max_messages", "must be 0 (no limit) or more, got %d", ob.MaxMessages)
		}
		for i := range b.Routes {
			r := &b.Routes[i]
			key := fmt.Sprintf("bridge.route[%d]", i)
			if r.Direction == "" {
				r.Direction = "out"
			}
			if _, err := bridge.ParseDirection(r.Direction); err != nil {
				c.errorf(&errs, key+".direction", "%v", err)
			}
			if err := bridge.ValidateFilter(r.Local); err != nil {
				c.errorf(&errs, key+".local", "%v", err)
			}
			if !c.has(key + ".remote_prefix") {
				r.RemotePrefix = DefaultRemotePrefix
			}
			if err := bridge.ValidatePrefix(r.RemotePrefix); err != nil {
				c.errorf(&errs, key+".remote_prefix", "%v", err)
			}
			if !c.has(key + ".qos") {
				r.QoS = 1
			}
			if r.QoS != 0 && r.QoS != 1 {
				c.errorf(&errs, key+".qos", "must be 0 or 1, got %d", r.QoS)
			}
			if r.LocalPrefix != "" {
				if err := bridge.ValidatePrefix(r.LocalPrefix); err != nil {
					c.errorf(&errs, key+".local_prefix", "%v", err)
				}
			}
			if r.Overflow == "" {
				r.Overflow = "drop-oldest"
			}
			if _, err := outbox.ParsePolicy(r.Overflow); err != nil {
				c.errorf(&errs, key+".overflow", "%v", err)
			}
			switch r.QoS0Offline {
			case "":
				r.QoS0Offline = "keep"
			case "keep", "drop":
			default:
				c.errorf(&errs, key+".qos0_offline", "want keep or drop, got %q", r.QoS0Offline)
			}
		}
	}

	if a := c.Metrics.Address; a != "" {
		if _, port, err := net.SplitHostPort(a); err != nil {
			c.errorf(&errs, "metrics.address", "want host:port, got %q", a)
		} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			c.errorf(&errs, "metrics.address", "bad port %q", port)
		}
	}

	seen := map[string]int{}
	pins := map[string]int{}
	for i := range c.Sensors {
		s := &c.Sensors[i]
		key := fmt.Sprintf("sensor[%d]", i)
		switch {
		case s.Name == "":
			c.errorf(&errs, key+".name", "missing")
		case !nameRE.MatchString(s.Name):
			c.errorf(&errs, key+".name", "%q: want letters, digits and '-._:', starting with a letter or digit (it is a topic level and a SenML name)", s.Name)
		default:
			if j, dup := seen[s.Name]; dup {
				c.errorf(&errs, key+".name", "%q is already the name of sensor[%d]", s.Name, j)
			}
			seen[s.Name] = i
		}
		if s.Driver == "" {
			c.errorf(&errs, key+".driver", "missing (known drivers: %s)", strings.Join(sensors.Drivers(), ", "))
		} else if !sensors.Known(s.Driver) {
			c.errorf(&errs, key+".driver", "unknown driver %q (known drivers: %s)", s.Driver, strings.Join(sensors.Drivers(), ", "))
		}
		if sensors.UsesI2C(s.Driver) && s.Bus == "" {
			s.Bus = "/dev/i2c-1"
		}
		if s.Address < 0 || s.Address > 0x7f {
			c.errorf(&errs, key+".address", "%#x is not a 7-bit I²C address", s.Address)
		}
		if !c.has(key + ".interval") {
			s.Interval.Duration = DefaultSensorInterval
		}
		if s.Interval.Duration < 10*time.Millisecond {
			c.errorf(&errs, key+".interval", "must be at least 10ms, got %s", s.Interval)
		}
		c.validateSensorLoop(&errs, key, s)
		if sensors.Known(s.Driver) {
			c.validateSensorOptions(&errs, i, s, pins)
		}
	}
	sort.SliceStable(errs, func(i, j int) bool {
		return errs[i].(*ConfigError).Line < errs[j].(*ConfigError).Line
	})
	return errors.Join(errs...)
}

// validateSensorOptions checks the pin and the driver options of s, the
// i-th [[sensor]]; pins maps the pins taken so far to their sensor.
func (c *Config) validateSensorOptions(errs *[]error, i int, s *SensorConfig, pins map[string]int) {
	key := fmt.Sprintf("sensor[%d]", i)
	takes := sensors.OptionKeys(s.Driver)
	for _, k := range driverOptionKeys {
		if c.has(key+"."+k) && !slices.Contains(takes, k) {
			its := "none"
			if len(takes) > 0 {
				its = strings.Join(takes, ", ")
			}
			c.errorf(errs, key+"."+k, "not an option of driver %s (its options: %s)", s.Driver, its)
		}
	}
	switch {
	case sensors.UsesGPIO(s.Driver) && s.Pin == "":
		c.errorf(errs, key+".pin", "missing: the GPIO the input is wired to, e.g. \"GPIO17\"")
	case sensors.UsesGPIO(s.Driver):
		if j, dup := pins[s.Pin]; dup {
			c.errorf(errs, key+".pin", "%q is already the pin of sensor[%d]", s.Pin, j)
		} else {
			pins[s.Pin] = i
		}
	case c.has(key + ".pin"):
		c.errorf(errs, key+".pin", "not an option of driver %s: only GPIO drivers take a pin", s.Driver)
	}
	switch s.Gain.(type) {
	case nil, string, float64, int64:
	default:
		c.errorf(errs, key+".gain", "wrong type: want a full-scale range such as \"4.096V\" or 4.096")
	}
	if s.Quantity != "" && !nameRE.MatchString(s.Quantity) {
		c.errorf(errs, key+".quantity", "%q: want letters, digits and '-._:', starting with a letter or digit (it is a topic level and a SenML name)", s.Quantity)
	}
	for _, e := range sensors.CheckOptions(s.Driver, s.options()) {
		k := key
		if e.Key != "" {
			k += "." + e.Key
		}
		c.errorf(errs, k, "%s", e.Reason)
	}
}

func (c *Config) validateListener(errs *[]error, i int) {
	l := &c.Broker.Listeners[i]
	key := fmt.Sprintf("broker.listener[%d]", i)
	_, port, err := net.SplitHostPort(l.Address)
	if err != nil {
		c.errorf(errs, key+".address", "want host:port, got %q", l.Address)
		return
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		c.errorf(errs, key+".address", "bad port %q", port)
	}
	if !l.isTLS() {
		if err := checkPlainAddress(l.Address); err != nil && !l.AllowInsecureRemote {
			c.errorf(errs, key+".address", "%v, or set allow_insecure_remote = true", err)
		}
		for _, k := range []struct {
			name string
			set  bool
		}{{"client_ca", l.ClientCA != ""}, {"require_certificate", l.RequireCertificate}, {"use_identity_as_username", l.UseIdentityAsUsername},
			{"use_subject_as_username", l.UseSubjectAsUsername}, {"bind_client_id", l.BindClientID}, {"crl_file", l.CRLFile != ""}, {"tls_min_version", l.TLSMinVersion != ""}} {
			if k.set {
				c.errorf(errs, key+"."+k.name, "needs tls_cert and tls_key")
			}
		}
		return
	}
	if l.TLSCert == "" || l.TLSKey == "" {
		c.errorf(errs, key+".tls_cert", "tls_cert and tls_key go together")
		return
	}
	if _, err := tls.LoadX509KeyPair(l.TLSCert, l.TLSKey); err != nil {
		c.errorf(errs, key+".tls_cert", "%v", pathError(err))
	}
	if l.ClientCA != "" {
		c.checkFile(errs, key+".client_ca", l.ClientCA)
	} else if l.RequireCertificate || l.UseIdentityAsUsername || l.UseSubjectAsUsername || l.CRLFile != "" {
		c.errorf(errs, key+".client_ca", "missing: client certificates need the CA that signs them")
	}
	if l.CRLFile != "" && l.ClientCA != "" {
		if _, err := localbroker.LoadCRL(l.CRLFile, l.ClientCA); err != nil {
			c.errorf(errs, key+".crl_file", "%v", strings.TrimPrefix(pathError(err).Error(), "localbroker: "))
		}
	}
	if l.BindClientID && !l.UseIdentityAsUsername {
		c.errorf(errs, key+".bind_client_id", "needs use_identity_as_username")
	}
	switch l.TLSMinVersion {
	case "", "1.2", "1.3":
	case "1.0", "1.1":
		c.errorf(errs, key+".tls_min_version", "TLS %s is refused: 1.2 is the minimum", l.TLSMinVersion)
	default:
		c.errorf(errs, key+".tls_min_version", "want \"1.2\" or \"1.3\", got %q", l.TLSMinVersion)
	}
}

// has reports whether key is written in the file.
func (c *Config) has(key string) bool {
	_, ok := c.lines[key]
	return ok
}

// durationDefault sets d to def when key is absent, and checks it is at
// least least.
func (c *Config) durationDefault(errs *[]error, key string, d *Duration, def, least time.Duration) {
	if !c.has(key) {
		d.Duration = def
	}
	if d.Duration < least {
		c.errorf(errs, key, "must be at least %s, got %s", least, d)
	}
}

func (c *Config) checkFile(errs *[]error, key, path string) {
	if path == "" {
		c.errorf(errs, key, "empty path")
		return
	}
	f, err := os.Open(path)
	if err != nil {
		c.errorf(errs, key, "%v", pathError(err))
		return
	}
	f.Close()
}

// pathError drops the "open " prefix that os adds, so that messages read
// "identity.cert: /x/y: no such file or directory".
func pathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Path, pe.Err)
	}
	return err
}

func readCert(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, pathError(err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no PEM certificate found", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return cert, nil
}

// checkPlainAddress accepts host:port for a plain-TCP listener only on a
// loopback address: plain MQTT carries passwords in clear text.
func checkPlainAddress(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("want host:port, got %q", addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("bad port %q", port)
	}
	if host == "localhost" {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("want an IP address or localhost, got %q", host)
	}
	if !ip.IsLoopback() {
		return fmt.Errorf("plain TCP is refused on non-loopback address %s: use 127.0.0.1 or ::1", host)
	}
	return nil
}

func checkBridgeAddress(addr string) error {
	u, err := url.Parse(addr)
	if err != nil {
		return fmt.Errorf("want ssl://host:port, got %q", addr)
	}
	switch u.Scheme {
	case "ssl", "tls", "mqtts":
	case "tcp", "mqtt", "ws":
		return fmt.Errorf("%q: the uplink must use TLS (ssl://host:port)", addr)
	default:
		return fmt.Errorf("want ssl://host:port, got %q", addr)
	}
	if u.Hostname() == "" || u.Port() == "" {
		return fmt.Errorf("want ssl://host:port, got %q", addr)
	}
	return nil
}
