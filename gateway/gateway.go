// Package gateway reads Fieldgate's configuration and wires the parts
// together: the sensors publish on the local broker, the local broker hands
// what an "out" route selects to the bridge, and the bridge carries it to
// the central broker. It is the only package that imports sensors,
// localbroker, bridge and provisioning.
package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/fieldgate/fieldgate/bridge"
	"github.com/fieldgate/fieldgate/bridge/outbox"
	"github.com/fieldgate/fieldgate/localbroker"
	"github.com/fieldgate/fieldgate/provisioning"
	"github.com/fieldgate/fieldgate/sensors"
)

// Version is the version of the running binary; cmd/fieldgate sets it.
var Version = "dev"

// Gateway is a configured Fieldgate, ready to Run.
type Gateway struct {
	cfg        *Config
	watchBase  map[string]stamp // the watched files as New found them (broker.watch_files)
	log        *slog.Logger
	started    time.Time
	certMu     sync.Mutex
	certExpiry time.Time // of the device certificate; zero without one
	certRenew  time.Time // when it is due for renewal (identity.renew_after)
	certCN     string
	// identityErr is why the identity could not be loaded at start; the
	// uplink runs without a client certificate until a reload fixes it.
	identityErr error
	metrics     *metrics  // nil without [metrics]
	tlsPrint    [32]byte  // of the uplink's TLS files, to tell whether a reload changed them
	notify      *notifier // systemd's notification socket
	reloadMu    sync.Mutex
	broker      *localbroker.Broker
	outbox      *outbox.Outbox // nil without [bridge]
	bridge      *bridge.Bridge // nil without [bridge]
	loop        *sensors.Loop  // nil without [[sensor]]
	sensorsMu   sync.Mutex
	stopLoop    func() // stops the running loop; nil when none runs
	buses       i2cBuses
	keysMu      sync.Mutex
	keyStores   map[string]provisioning.Store // by key URI
}

// New builds a gateway from a validated configuration: it loads the
// identity, binds the broker's listeners and opens the sensors. Nothing
// runs until Run.
func New(cfg *Config, log *slog.Logger) (g *Gateway, err error) {
	g = &Gateway{cfg: cfg, log: log, started: time.Now(), notify: newNotifier()}
	if cfg.Broker.WatchFiles {
		g.watchBase = stamps(watchedFiles(cfg)) // before New reads them
	}
	made := g // a failing return sets g to nil before this runs
	defer func() {
		if err != nil {
			made.close()
		}
	}()

	if err := os.MkdirAll(cfg.Device.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	var fwd func(localbroker.Message) (<-chan error, error)
	if cfg.Bridge != nil && cfg.Unprovisioned {
		log.Warn("identity: no device certificate yet: the bridge stays off until one is installed (fieldgate provision csr, then install, then systemctl restart fieldgate)",
			"cert", cfg.Identity.Cert, "key", provisioning.RedactURI(cfg.Identity.Key))
	}
	if bc := cfg.Bridge; bc != nil && !cfg.Unprovisioned {
		tlsCfg, err := g.uplinkTLS(cfg)
		switch {
		case errors.Is(err, provisioning.ErrInsecure):
			return nil, err // a key others could read: refused, as ssh does
		case err != nil:
			// An expired certificate, a TPM blob of another board, a key
			// that does not match: the site keeps its broker and sensors,
			// the outbox keeps what the routes forward, and the uplink
			// tries without a client certificate (the central broker
			// refuses it) until a reload brings a usable identity.
			log.Error("identity unusable: the bridge cannot connect until it is fixed (fieldgate provision show; then systemctl reload fieldgate); the local broker and the outbox keep running", "err", err)
			g.setIdentityErr(err)
			if tlsCfg, err = uplinkTLSWithoutIdentity(cfg); err != nil {
				return nil, err
			}
		default:
			g.setCert(tlsCfg.Certificates[0].Leaf, cfg.Identity.RenewAfter)
		}
		g.tlsPrint = tlsFingerprint(cfg)
		g.outbox, err = outbox.Open(filepath.Join(cfg.Device.StateDir, "outbox.db"), &outbox.Options{
			CommitInterval: bc.Outbox.CommitInterval.Duration,
			MaxBytes:       int64(bc.Outbox.MaxBytes),
			MaxMessages:    bc.Outbox.MaxMessages,
			MaxAge:         bc.Outbox.MaxAge.Duration,
		}, log.With("component", "outbox"))
		if err != nil {
			return nil, err
		}
		g.bridge, err = bridge.New(bridge.Options{
			Addresses:        bc.Address,
			TLS:              tlsCfg,
			ClientID:         cfg.Device.ID,
			Routes:           routes(cfg),
			Outbox:           g.outbox,
			Deliver:          g.deliver,
			StatusTopic:      bridge.ExpandPrefix(*bc.StatusTopic, cfg.Device.ID),
			CheckpointTopic:  bridge.ExpandPrefix(*bc.CheckpointTopic, cfg.Device.ID),
			SequenceField:    bc.SequenceField,
			FailbackInterval: bc.FailbackInterval.Duration,
			MaxInflight:      bc.MaxInflight,
			MaxRate:          bc.MaxRate,
			KeepAlive:        bc.KeepAlive.Duration,
			ReconnectMin:     bc.ReconnectMin.Duration,
			ReconnectMax:     bc.ReconnectMax.Duration,
		}, log.With("component", "bridge"))
		if err != nil {
			return nil, err
		}
		fwd = func(m localbroker.Message) (<-chan error, error) {
			stored, err := g.bridge.Forward(m.Topic, m.Payload, m.QoS, m.Retain)
			if errors.Is(err, bridge.ErrQueueFull) {
				return nil, fmt.Errorf("%w: %w", localbroker.ErrRejected, err)
			}
			return stored, err
		}
	}

	sec, err := security(cfg)
	if err != nil {
		return nil, err
	}
	bc := cfg.Broker
	lo := &localbroker.Options{Forward: fwd, Security: sec, RetainedFile: filepath.Join(cfg.Device.StateDir, "broker.db"), Limits: localbroker.Limits{
		MaxClients:      bc.MaxClients,
		MaxPacketSize:   uint32(bc.MaxPacketSize),
		MaxInflight:     uint16(bc.MaxInflight),
		MaxInflightOut:  uint16(bc.MaxInflightMessages),
		MaxQueued:       int32(bc.MaxQueuedMessages),
		MaxPublishRate:  bc.MaxPublishRate,
		MaxAuthFailures: bc.MaxAuthFailures,
		MaxKeepalive:    bc.MaxKeepalive.Duration,
	}}
	lo.SessionFile = filepath.Join(cfg.Device.StateDir, "sessions.db")
	lo.PersistentClientExpiration = bc.PersistentClientExpiration.Duration
	if lo.Listeners, err = brokerListeners(cfg); err != nil {
		return nil, err
	}
	g.broker, err = localbroker.New(lo, log.With("component", "broker"))
	if err != nil {
		return nil, err
	}

	if cfg.Metrics.Address != "" {
		if g.metrics, err = newMetrics(g, cfg.Metrics.Address); err != nil {
			return nil, err
		}
	}

	if g.loop, err = g.newLoop(cfg); err != nil {
		return nil, err
	}
	return g, nil
}

// newLoop opens cfg's sensors; nil without any.
func (g *Gateway) newLoop(cfg *Config) (*sensors.Loop, error) {
	if len(cfg.Sensors) == 0 {
		return nil, nil
	}
	var entries []sensors.Entry
	for _, s := range cfg.Sensors {
		entries = append(entries, sensors.Entry{
			Name:       s.Name,
			Sensor:     g.openSensor(s),
			Interval:   s.Interval.Duration,
			Timeout:    s.Timeout.Duration,
			QoS:        byte(s.QoS),
			Retain:     s.Retain,
			Topic:      s.Topic,
			Deadband:   s.Deadband,
			MaxSilence: s.MaxSilence.Duration,
		})
	}
	return sensors.NewLoop(sensors.LoopOptions{
		DeviceID:  cfg.Device.ID,
		Publisher: brokerPublisher{g.broker},
		Entries:   entries,
	}, g.log.With("component", "sensors")), nil
}

// openSensor opens s on its bus. A chip that is missing or a bus that will
// not open does not stop the gateway: the sensor shows as absent or
// failing (the loop logs it once), and each read tries to open it again.
func (g *Gateway) openSensor(s SensorConfig) sensors.Sensor {
	dev, err := g.open(s)
	if err != nil {
		return &unopened{open: func() (sensors.Sensor, error) { return g.open(s) }}
	}
	return dev
}

// open opens s. A bus that does not open is an absent chip.
func (g *Gateway) open(s SensorConfig) (sensors.Sensor, error) {
	sc := sensors.Config{Name: s.Name, Address: uint16(s.Address), Device: s.Device, Options: s.options()}
	if sensors.UsesI2C(s.Driver) {
		bus, err := g.buses.get(s.Bus)
		if err != nil {
			return nil, sensors.Absent(err)
		}
		sc.Bus = bus
	}
	if sensors.UsesGPIO(s.Driver) {
		pin, err := openPin(s.Pin)
		if err != nil {
			return nil, sensors.Absent(err)
		}
		sc.Pin = pin
	}
	return sensors.Open(s.Driver, sc)
}

// startSensors runs loop until stopSensors; nil runs nothing.
func (g *Gateway) startSensors(loop *sensors.Loop) {
	g.sensorsMu.Lock()
	defer g.sensorsMu.Unlock()
	g.loop = loop
	if loop == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); loop.Run(ctx) }()
	g.stopLoop = func() { cancel(); <-done }
}

// sensorLoop is the running poll loop, for its sensors' status and
// counts; nil without sensors.
func (g *Gateway) sensorLoop() *sensors.Loop {
	g.sensorsMu.Lock()
	defer g.sensorsMu.Unlock()
	return g.loop
}

// stopSensors stops the running loop and halts its sensors.
func (g *Gateway) stopSensors() {
	g.sensorsMu.Lock()
	defer g.sensorsMu.Unlock()
	if g.stopLoop != nil {
		g.stopLoop()
		g.stopLoop = nil
	}
}

// BrokerAddrs returns the addresses the local broker listens on.
func (g *Gateway) BrokerAddrs() []string { return g.broker.Addrs() }

// MetricsAddr returns the address the metrics server listens on, or ""
// without [metrics].
func (g *Gateway) MetricsAddr() string {
	if g.metrics == nil {
		return ""
	}
	return g.metrics.addr()
}

// Bridge returns the uplink, or nil when none is configured.
func (g *Gateway) Bridge() *bridge.Bridge { return g.bridge }

// Subscribe calls fn for every local message on topics matching filter.
func (g *Gateway) Subscribe(filter string, id int, fn func(localbroker.Message)) error {
	return g.broker.Subscribe(filter, id, fn)
}

// Run runs the gateway until ctx ends, then shuts down in order: sensors
// first, then the bridge (it waits briefly for the acknowledgements of
// what is in flight, and disconnects), then the broker, then the outbox
// (which commits what is pending).
func (g *Gateway) Run(ctx context.Context) error {
	g.logStart()
	g.warnRenewal()

	bridgeCtx, stopBridge := context.WithCancel(context.Background())
	var bridgeDone, metricsDone sync.WaitGroup
	metricsCtx, stopMetrics := context.WithCancel(context.Background())
	if g.metrics != nil {
		metricsDone.Go(func() { g.metrics.run(metricsCtx, g.log) })
	}
	g.startSensors(g.loop)
	if g.bridge != nil {
		bridgeDone.Go(func() { g.bridge.Run(bridgeCtx) })
	}

	notify := g.notify
	defer notify.close()
	watchdogCtx, stopWatchdog := context.WithCancel(context.Background())
	var watchdogDone sync.WaitGroup
	watchdogDone.Go(func() { g.runWatchdog(watchdogCtx, notify) })
	watchdogDone.Go(func() { g.remindRenewal(watchdogCtx) })
	watchdogDone.Go(func() { g.retryIdentity(watchdogCtx) })
	if g.cfg.Broker.WatchFiles {
		watchdogDone.Go(func() { g.watchFiles(watchdogCtx, g.cfg.Broker.WatchInterval.Duration, g.watchBase) })
	}
	notify.send("READY=1")

	<-ctx.Done()
	notify.send("STOPPING=1")
	stopWatchdog()
	watchdogDone.Wait()
	g.log.Info("shutting down")
	g.stopSensors()
	stopBridge()
	bridgeDone.Wait()
	stopMetrics()
	metricsDone.Wait()
	err := g.close()
	g.log.Info("stopped")
	return err
}

func (g *Gateway) close() error {
	var errs []error
	g.buses.close()
	if g.metrics != nil {
		g.metrics.ln.Close() // Run's Shutdown closes it too; this is for New's failures
	}
	if g.broker != nil {
		errs = append(errs, g.broker.Close())
	}
	if g.outbox != nil {
		errs = append(errs, g.outbox.Close())
	}
	for _, st := range g.keyStores {
		errs = append(errs, st.Close())
	}
	return errors.Join(errs...)
}

// remindRenewal repeats the renewal warning daily until ctx ends (Run
// gives the first one at start).
func (g *Gateway) remindRenewal(ctx context.Context) {
	t := time.NewTicker(24 * time.Hour)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			g.warnRenewal()
		}
	}
}

func (g *Gateway) setCert(leaf *x509.Certificate, renewAfter float64) {
	g.certMu.Lock()
	defer g.certMu.Unlock()
	g.certExpiry = leaf.NotAfter
	g.certRenew = provisioning.RenewAt(leaf, renewAfter)
	g.certCN = leaf.Subject.CommonName
}

// warnRenewal logs, once per call, that the device certificate is due for
// renewal; Run calls it at start and then daily.
func (g *Gateway) warnRenewal() {
	expiry, renew, cn := g.cert()
	if renew.IsZero() || time.Now().Before(renew) {
		return
	}
	g.log.Warn("identity: the device certificate is due for renewal: run \"fieldgate provision renew\" and have the new CSR signed",
		"cn", cn, "expires", expiry.UTC().Format(time.RFC3339), "due_since", renew.UTC().Format(time.RFC3339))
}

// cert returns the device certificate's expiry, renewal time and CN.
func (g *Gateway) cert() (expiry, renew time.Time, cn string) {
	g.certMu.Lock()
	defer g.certMu.Unlock()
	return g.certExpiry, g.certRenew, g.certCN
}

func (g *Gateway) logStart() {
	attrs := []any{"device", g.cfg.Device.ID, "listeners", g.broker.Addrs(), "sensors", len(g.cfg.Sensors)}
	if g.bridge != nil {
		st := g.outbox.Stats()
		attrs = append(attrs, "bridge", g.cfg.Bridge.Address, "routes", len(g.cfg.Bridge.Routes),
			"outbox", filepath.Join(g.cfg.Device.StateDir, "outbox.db"), "outbox_messages", st.Messages)
	} else {
		attrs = append(attrs, "bridge", "none")
	}
	if g.metrics != nil {
		attrs = append(attrs, "metrics", "http://"+g.metrics.addr()+"/metrics")
	}
	g.log.Info("fieldgate starting", attrs...)
	b := g.cfg.Broker
	for _, l := range b.Listeners {
		if !l.isTLS() && checkPlainAddress(l.Address) != nil {
			g.log.Warn("plain TCP listener on a non-loopback address (allow_insecure_remote): passwords cross the network in clear text", "address", l.Address)
		}
	}
	switch {
	case b.AllowAnonymous:
		g.log.Warn("allow_anonymous is on: clients without a username may connect")
	case b.PasswordFile == "" && len(b.Listeners) > 0:
		g.log.Info("no password_file: network clients cannot log in")
	}
	if b.PasswordFile != "" && b.ACLFile == "" {
		g.log.Warn("no acl_file: every client that logs in may publish and subscribe to every topic")
	}
}

// deliver publishes a message from the central broker locally.
func (g *Gateway) deliver(topic string, payload []byte, qos byte, retain bool) error {
	return g.broker.PublishLocal(localbroker.Message{Topic: topic, Payload: payload, QoS: qos, Retain: retain})
}

// Reload reads the configuration file again and applies what can change
// without a restart: the broker's password and ACL files, the listeners'
// TLS material, the sensors, the bridge's routes, and the uplink's
// certificate, key and CA (the bridge moves to new TLS material or new
// inbound subscriptions only once a connection with them succeeds). A
// configuration that does not load is refused and the running one kept.
// Other changes need a restart, and are logged so.
func (g *Gateway) Reload() error {
	_, err := g.ReloadReport()
	return err
}

// ReloadResult says what a reload applied, and which changes it saw that
// need a restart.
type ReloadResult struct {
	Applied     []string `json:"applied"`
	NeedRestart []string `json:"need_restart,omitempty"`
}

// ReloadReport is Reload, saying what it did.
func (g *Gateway) ReloadReport() (ReloadResult, error) {
	g.reloadMu.Lock()
	defer g.reloadMu.Unlock()
	g.notify.send("RELOADING=1")
	defer g.notify.send("READY=1")
	cfg, err := LoadConfig(g.cfg.Path)
	if err != nil {
		g.log.Error("reload refused: the running configuration is kept", "err", err)
		return ReloadResult{}, err
	}
	sec, err := security(cfg)
	if err != nil {
		g.log.Error("reload refused: the running configuration is kept", "err", err)
		return ReloadResult{}, err
	}
	var tlsCfg *tls.Config
	fp := g.tlsPrint
	if cfg.Bridge != nil && g.bridge != nil {
		degraded := g.identityError() != nil
		// A degraded identity is tried again even when its files did not
		// change: a TPM or a token that was not ready at boot may be now.
		if fp = tlsFingerprint(cfg); fp != g.tlsPrint || degraded {
			if tlsCfg, err = g.uplinkTLS(cfg); err != nil {
				if !degraded {
					g.log.Error("reload refused: the running configuration is kept", "err", err)
					return ReloadResult{}, err
				}
				g.log.Warn("reload: the identity is still unusable; the rest is applied", "err", err)
				tlsCfg, fp = nil, g.tlsPrint
			}
		}
	}
	var restart []string
	var lts []*localbroker.TLS
	for i, l := range cfg.Broker.Listeners {
		if i >= len(g.cfg.Broker.Listeners) || g.cfg.Broker.Listeners[i].Address != l.Address || g.cfg.Broker.Listeners[i].isTLS() != l.isTLS() {
			g.log.Warn("reload: listeners were added, removed or moved; that needs a restart", "address", l.Address)
			restart = append(restart, "broker.listener")
			break
		}
		if l.isTLS() {
			t, err := listenerTLS(&l)
			if err != nil {
				g.log.Error("reload refused: the running configuration is kept", "listener", l.Address, "err", err)
				return ReloadResult{}, err
			}
			lts = append(lts, t)
		} else {
			lts = append(lts, nil)
		}
	}
	var newLoop *sensors.Loop
	sensorsChanged := !reflect.DeepEqual(cfg.Sensors, g.cfg.Sensors)
	if sensorsChanged {
		if newLoop, err = g.newLoop(cfg); err != nil {
			g.log.Error("reload refused: the running configuration is kept", "err", err)
			return ReloadResult{}, err
		}
	}
	var newRoutes []bridge.Route
	switch {
	case (cfg.Bridge == nil) != (g.cfg.Bridge == nil):
		g.log.Warn("reload: the bridge was added or removed; that needs a restart")
		restart = append(restart, "bridge")
	case cfg.Bridge != nil:
		if keys := bridgeRestartChanges(g.cfg, cfg); len(keys) > 0 {
			g.log.Warn("reload: these bridge settings changed and need a restart", "keys", keys)
			restart = append(restart, keys...)
		}
		if g.bridge != nil && !reflect.DeepEqual(cfg.Bridge.Routes, g.cfg.Bridge.Routes) {
			rc := *cfg
			rc.Device.ID = g.cfg.Device.ID // %d stays the running id
			newRoutes = routes(&rc)
		}
	}
	if g.cfg.Unprovisioned && !cfg.Unprovisioned && cfg.Bridge != nil {
		g.log.Warn("reload: the device certificate is installed now; the bridge starts with a restart (systemctl restart fieldgate)")
		restart = append(restart, "identity.cert (the bridge starts)")
	}
	if keys := brokerRestartChanges(&g.cfg.Broker, &cfg.Broker); len(keys) > 0 {
		g.log.Warn("reload: these broker settings changed and need a restart", "keys", keys)
		restart = append(restart, keys...)
	}
	g.broker.SetSecurity(sec)
	changed := []string{"password_file", "acl_file"}
	if sensorsChanged {
		g.stopSensors()
		g.clearSensorStatus(g.cfg.Sensors, cfg.Sensors)
		g.startSensors(newLoop)
		g.cfg.Sensors = cfg.Sensors
		changed = append(changed, fmt.Sprintf("sensors (%d)", len(cfg.Sensors)))
	}
	for i, t := range lts {
		if t != nil {
			g.broker.SetListenerTLS(i, t)
			changed = append(changed, "listener "+cfg.Broker.Listeners[i].Address)
		}
	}
	if newRoutes != nil {
		if err := g.bridge.SetRoutes(newRoutes); err != nil {
			g.log.Error("reload: routes not applied", "err", err)
		} else {
			g.cfg.Bridge.Routes = cfg.Bridge.Routes
			changed = append(changed, fmt.Sprintf("routes (%d)", len(newRoutes)))
		}
	}
	if tlsCfg != nil {
		g.setIdentityErr(nil)
		g.bridge.SetTLS(tlsCfg)
		g.tlsPrint = fp
		g.setCert(tlsCfg.Certificates[0].Leaf, cfg.Identity.RenewAfter)
		g.warnRenewal()
		changed = append(changed, "identity")
	}
	g.log.Info("reloaded", "applied", changed)
	return ReloadResult{Applied: changed, NeedRestart: restart}, nil
}

// brokerRestartChanges names the [broker] limits that differ between the
// running configuration and a new one: the broker takes them only at
// start.
func brokerRestartChanges(old, cfg *BrokerConfig) []string {
	var keys []string
	a, b := reflect.ValueOf(*old), reflect.ValueOf(*cfg)
	for i := range a.NumField() {
		f := a.Type().Field(i)
		if (strings.HasPrefix(f.Name, "Max") || strings.HasPrefix(f.Name, "Watch") || f.Name == "PersistentClientExpiration") && !reflect.DeepEqual(a.Field(i).Interface(), b.Field(i).Interface()) {
			keys = append(keys, "broker."+f.Tag.Get("toml"))
		}
	}
	return keys
}

// bridgeRestartChanges names the [bridge] keys, other than the routes,
// that differ between the running configuration and a new one, and the
// device id: the uplink takes those only at start.
func bridgeRestartChanges(old, cfg *Config) []string {
	var keys []string
	if old.Device.ID != cfg.Device.ID {
		keys = append(keys, "device.id")
	}
	a, b := reflect.ValueOf(*old.Bridge), reflect.ValueOf(*cfg.Bridge)
	for i := range a.NumField() {
		f := a.Type().Field(i)
		if f.Name == "Routes" {
			continue
		}
		if !reflect.DeepEqual(a.Field(i).Interface(), b.Field(i).Interface()) {
			keys = append(keys, "bridge."+strings.Split(f.Tag.Get("toml"), ",")[0])
		}
	}
	return keys
}

// tlsFingerprint hashes the files the uplink's TLS is made of.
func tlsFingerprint(cfg *Config) [32]byte {
	h := sha256.New()
	files := []string{cfg.Identity.Cert, cfg.Identity.CA}
	if path, ok := strings.CutPrefix(cfg.Identity.Key, "file:"); ok {
		files = append(files, path)
	}
	h.Write([]byte(cfg.Identity.Key))
	for _, p := range files {
		data, _ := os.ReadFile(p)
		h.Write([]byte(p))
		h.Write(data)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

// brokerListeners builds the broker's listeners, loading their TLS
// material.
func brokerListeners(cfg *Config) ([]localbroker.Listener, error) {
	var ls []localbroker.Listener
	for _, l := range cfg.Broker.Listeners {
		bl := localbroker.Listener{Address: l.Address, WebSocket: l.WebSocket}
		if l.isTLS() {
			t, err := listenerTLS(&l)
			if err != nil {
				return nil, fmt.Errorf("listener %s: %w", l.Address, err)
			}
			bl.TLS = t
		}
		ls = append(ls, bl)
	}
	return ls, nil
}

func listenerTLS(l *ListenerConfig) (*localbroker.TLS, error) {
	cert, err := tls.LoadX509KeyPair(l.TLSCert, l.TLSKey)
	if err != nil {
		return nil, err
	}
	t := &localbroker.TLS{
		Certificate:        cert,
		RequireCertificate: l.RequireCertificate,
		IdentityAsUsername: l.UseIdentityAsUsername,
		SubjectAsUsername:  l.UseSubjectAsUsername,
		BindClientID:       l.BindClientID,
		MinVersion:         tls.VersionTLS12,
	}
	if l.TLSMinVersion == "1.3" {
		t.MinVersion = tls.VersionTLS13
	}
	if l.ClientCA != "" {
		if t.ClientCAs, err = provisioning.CertPool(l.ClientCA); err != nil {
			return nil, err
		}
	}
	if l.CRLFile != "" {
		if t.CRL, err = localbroker.LoadCRL(l.CRLFile, l.ClientCA); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// security loads the broker's password and ACL files.
func security(cfg *Config) (localbroker.Security, error) {
	sec := localbroker.Security{AllowAnonymous: cfg.Broker.AllowAnonymous, ClientIDPrefixes: cfg.Broker.ClientIDPrefixes}
	var err error
	if p := cfg.Broker.PasswordFile; p != "" {
		if sec.Passwords, err = localbroker.LoadPasswordFile(p); err != nil {
			return sec, err
		}
	}
	if p := cfg.Broker.ACLFile; p != "" {
		if sec.ACL, err = localbroker.LoadACL(p); err != nil {
			return sec, err
		}
	}
	return sec, nil
}

type brokerPublisher struct{ b *localbroker.Broker }

func (p brokerPublisher) Publish(topic string, payload []byte, qos byte, retain bool) error {
	return p.b.Publish(localbroker.Message{Topic: topic, Payload: payload, QoS: qos, Retain: retain})
}

func routes(cfg *Config) []bridge.Route {
	var rs []bridge.Route
	for _, r := range cfg.Bridge.Routes {
		dir, _ := bridge.ParseDirection(r.Direction) // validated
		policy, _ := outbox.ParsePolicy(r.Overflow)
		rs = append(rs, bridge.Route{
			Local:           r.Local,
			Direction:       dir,
			LocalPrefix:     r.LocalPrefix,
			Prefix:          bridge.ExpandPrefix(r.RemotePrefix, cfg.Device.ID),
			QoS:             byte(r.QoS),
			Policy:          policy,
			DropQoS0Offline: r.QoS0Offline == "drop",
		})
	}
	return rs
}

// uplinkTLS is the client side of the uplink's mutual TLS: the device's
// certificate and the key in its store, and only the configured CA as a
// root of trust.
func (g *Gateway) uplinkTLS(cfg *Config) (*tls.Config, error) {
	st, err := g.keyStore(cfg)
	if err != nil {
		return nil, err
	}
	cert, err := provisioning.LoadIdentity(st, cfg.Identity.Cert)
	if err != nil {
		return nil, err
	}
	if time.Now().After(cert.Leaf.NotAfter) {
		return nil, fmt.Errorf("identity: certificate %s expired on %s", cfg.Identity.Cert, cert.Leaf.NotAfter.Format(time.RFC3339))
	}
	roots, err := provisioning.CertPool(cfg.Identity.CA)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      roots,
		ServerName:   cfg.Bridge.ServerName, // empty: the host of each address
		NextProtos:   cfg.Bridge.ALPN,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// identityRetry is how often a gateway whose identity could not be used
// tries it again by itself (a TPM or token not ready at boot), at first;
// the wait doubles up to identityRetryMax.
var identityRetry, identityRetryMax = 30 * time.Second, 30 * time.Minute

// retryIdentity tries an unusable identity again until it works or ctx
// ends, as a reload would.
func (g *Gateway) retryIdentity(ctx context.Context) {
	wait := identityRetry
	for g.identityError() != nil {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, identityRetryMax)
		g.reloadMu.Lock()
		if g.identityError() != nil {
			if tlsCfg, err := g.uplinkTLS(g.cfg); err == nil {
				g.setIdentityErr(nil)
				g.bridge.SetTLS(tlsCfg)
				g.tlsPrint = tlsFingerprint(g.cfg)
				g.setCert(tlsCfg.Certificates[0].Leaf, g.cfg.Identity.RenewAfter)
				g.log.Info("identity usable again: the uplink connects with it")
			}
		}
		g.reloadMu.Unlock()
	}
}

// uplinkTLSWithoutIdentity is the uplink's TLS with the central CA and no
// client certificate, for a gateway whose identity cannot be used.
func uplinkTLSWithoutIdentity(cfg *Config) (*tls.Config, error) {
	roots, err := provisioning.CertPool(cfg.Identity.CA)
	if err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: roots, ServerName: cfg.Bridge.ServerName, NextProtos: cfg.Bridge.ALPN, MinVersion: tls.VersionTLS12}, nil
}

func (g *Gateway) setIdentityErr(err error) {
	g.certMu.Lock()
	defer g.certMu.Unlock()
	g.identityErr = err
}

// identityError is why the identity cannot be used; nil when it can.
func (g *Gateway) identityError() error {
	g.certMu.Lock()
	defer g.certMu.Unlock()
	return g.identityErr
}

// keyStore opens the key store of cfg once: a TPM or a token keeps its
// session (and its loaded key) for the life of the gateway, and a reload
// with the same key URI reuses it.
func (g *Gateway) keyStore(cfg *Config) (provisioning.Store, error) {
	g.keysMu.Lock()
	defer g.keysMu.Unlock()
	if st, ok := g.keyStores[cfg.Identity.Key]; ok {
		return st, nil
	}
	st, err := provisioning.Open(cfg.Identity.Key, provisioning.Options{StateDir: cfg.Device.StateDir})
	if err != nil {
		return nil, err
	}
	if g.keyStores == nil {
		g.keyStores = map[string]provisioning.Store{}
	}
	g.keyStores[cfg.Identity.Key] = st
	return st, nil
}
