package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldgate/fieldgate/bridge"
	"github.com/fieldgate/fieldgate/provisioning"
	"github.com/fieldgate/fieldgate/provisioning/pkitest"
)

// chanHandler sends the message of every record to ch, and passes the
// record on to next.
type chanHandler struct {
	slog.Handler
	ch chan<- string
}

func (h chanHandler) Handle(ctx context.Context, r slog.Record) error {
	select {
	case h.ch <- r.Message:
	default:
	}
	return h.Handler.Handle(ctx, r)
}

func (h chanHandler) WithAttrs(a []slog.Attr) slog.Handler {
	return chanHandler{h.Handler.WithAttrs(a), h.ch}
}

func (h chanHandler) WithGroup(n string) slog.Handler {
	return chanHandler{h.Handler.WithGroup(n), h.ch}
}

// The device certificate (valid from an hour ago for 25 hours) is due for
// renewal after 2 % of its life, not after 50 %: the log and the metrics
// say which.
func TestRenewalWarning(t *testing.T) {
	c := startCentral(t)
	for _, tc := range []struct {
		renewAfter float64
		due        bool
	}{{0.02, true}, {0.5, false}} {
		cfg := writeConfig(t, c, c.ca.CertFile)
		cfg.Identity.RenewAfter = tc.renewAfter
		msgs := make(chan string, 1000)
		g, err := New(cfg, slog.New(chanHandler{testLogger(t).Handler(), msgs}))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- g.Run(ctx) }()

		// The warning comes, if at all, at start: before the uplink connects.
		warned := false
		deadline := time.After(20 * time.Second)
		for connected := false; !connected; {
			select {
			case m := <-msgs:
				warned = warned || strings.Contains(m, "due for renewal")
				connected = strings.Contains(m, "uplink connected")
			case <-deadline:
				t.Fatal("the uplink did not connect")
			}
		}
		if warned != tc.due {
			t.Errorf("renew_after %v: warned %v, want %v", tc.renewAfter, warned, tc.due)
		}
		_, text := get(t, "http://"+g.MetricsAddr()+"/metrics")
		want := 0.0
		if tc.due {
			want = 1
		}
		if got := metricValue(t, text, "fieldgate_certificate_renewal_due"); got != want {
			t.Errorf("renew_after %v: fieldgate_certificate_renewal_due %v, want %v", tc.renewAfter, got, want)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

// A fresh device, before provisioning: the configuration names a key and
// a certificate that are not there yet. The gateway runs as a local broker
// and says why its bridge is off; a key that is there but loose is still
// refused.
func TestUnprovisioned(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.crt")
	os.WriteFile(ca, pkiCA(t), 0o644)
	path := filepath.Join(dir, "fieldgate.toml")
	os.WriteFile(path, []byte(fmt.Sprintf(`[device]
state_dir = %q
[identity]
key = "file:%s/device.key"
cert = "%s/device.crt"
ca = %q
[[broker.listener]]
address = "127.0.0.1:0"
[bridge]
address = ["ssl://localhost:1"]
[[bridge.route]]
local = "sensors/#"
[metrics]
address = "127.0.0.1:0"
`, dir, dir, dir, ca)), 0o600)
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatalf("an unprovisioned device's configuration: %v", err)
	}
	if !cfg.Unprovisioned || cfg.Device.ID != UnprovisionedID {
		t.Errorf("Unprovisioned %v, device id %q", cfg.Unprovisioned, cfg.Device.ID)
	}
	msgs := make(chan string, 100)
	g, err := New(cfg, slog.New(chanHandler{testLogger(t).Handler(), msgs}))
	if err != nil {
		t.Fatal(err)
	}
	if g.Bridge() != nil {
		t.Error("the bridge was made without a certificate")
	}
	if m := <-msgs; !strings.Contains(m, "no device certificate yet") {
		t.Errorf("first log line %q, want the bridge's absence explained", m)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	code, body := get(t, "http://"+g.MetricsAddr()+"/healthz")
	if code != 503 || !strings.Contains(body, "not provisioned") {
		t.Errorf("/healthz: %d %q, want 503 and not provisioned", code, body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// A key that is there must be private, provisioned or not.
	os.WriteFile(filepath.Join(dir, "device.key"), []byte("x"), 0o644)
	if _, err := LoadConfig(path); err == nil || !strings.Contains(err.Error(), "mode 0644") {
		t.Errorf("loose key before provisioning: %v", err)
	}
}

func pkiCA(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile(pkitest.NewCA(t, "Central CA").CertFile)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// A device whose identity cannot be used (here the key no longer matches
// the certificate, as after a mistaken csr --force; an expired certificate
// or a TPM blob of another board go the same way) keeps the site running:
// the gateway starts, says why in /healthz, the outbox keeps the readings,
// and once the key is back a reload connects and delivers them.
func TestUnusableIdentityDegrades(t *testing.T) {
	c := startCentral(t)
	_, arrived := c.observe(t, "devices/#")
	cfg := writeConfig(t, c, c.ca.CertFile)
	keyPath := strings.TrimPrefix(cfg.Identity.Key, "file:")
	good, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	other, err := os.ReadFile(c.ca.Client(t, "someone-else").KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(keyPath, other, 0o600)

	g := startGateway(t, cfg)
	code, body := get(t, "http://"+g.MetricsAddr()+"/healthz")
	if code != 503 || !strings.Contains(body, "identity unusable") || !strings.Contains(body, "does not match the device key") {
		t.Errorf("/healthz: %d %q, want 503 naming the identity problem", code, body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := g.Bridge().Wait(ctx, func(st bridge.Status) bool { return st.Queued >= 3 && st.Attempts >= 1 }); err != nil {
		t.Fatalf("the outbox did not keep the readings: %v (%+v)", err, g.Bridge().Status())
	}

	os.WriteFile(keyPath, good, 0o600)
	if err := g.Reload(); err != nil {
		t.Fatal(err)
	}
	for reading := false; !reading; {
		select {
		case m := <-arrived:
			reading = strings.HasPrefix(m.Topic(), "devices/EGW-E2E-1/sensors/")
		case <-ctx.Done():
			t.Fatalf("nothing arrived after the key was restored; %+v", g.Bridge().Status())
		}
	}
	if code, body := get(t, "http://"+g.MetricsAddr()+"/healthz"); code != 200 {
		t.Errorf("/healthz after the reload: %d %q", code, body)
	}

	// A key others can read is still refused at start (New itself, not
	// only LoadConfig, which refuses it before).
	os.Chmod(keyPath, 0o644)
	if _, err := New(cfg, testLogger(t)); err == nil || !errors.Is(err, provisioning.ErrInsecure) {
		t.Errorf("a 0644 key: %v, want a refusal", err)
	}
}

// An identity that was unusable at start is tried again by itself: a TPM
// or a token not ready at boot needs no restart and no reload.
func TestUnusableIdentityRetried(t *testing.T) {
	old, oldMax := identityRetry, identityRetryMax
	identityRetry, identityRetryMax = 20*time.Millisecond, 50*time.Millisecond
	t.Cleanup(func() { identityRetry, identityRetryMax = old, oldMax })
	c := startCentral(t)
	_, arrived := c.observe(t, "devices/#")
	cfg := writeConfig(t, c, c.ca.CertFile)
	keyPath := strings.TrimPrefix(cfg.Identity.Key, "file:")
	good, _ := os.ReadFile(keyPath)
	os.Remove(keyPath) // not there at boot
	g := startGateway(t, cfg)
	if g.identityError() == nil {
		t.Fatal("started with a usable identity")
	}
	os.WriteFile(keyPath, good, 0o600) // the store is ready now
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for reading := false; !reading; {
		select {
		case m := <-arrived:
			reading = strings.HasPrefix(m.Topic(), "devices/EGW-E2E-1/sensors/")
		case <-ctx.Done():
			t.Fatalf("the identity was not tried again; %+v", g.Bridge().Status())
		}
	}
	if g.identityError() != nil {
		t.Errorf("still degraded: %v", g.identityError())
	}
}
