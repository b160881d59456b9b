package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldgate/fieldgate/bridge/mosquittotest"
	"github.com/fieldgate/fieldgate/gateway"
	"github.com/fieldgate/fieldgate/provisioning/tpmtest"

	"github.com/fieldgate/fieldgate/internal/testlog"
)

// TestFactoryFlow is a device's life with each key store: the key made on
// the device, a CSR, signed by fieldgate-factory, installed, the gateway
// connecting to a real Mosquitto that requires a certificate of this PKI,
// takes its CN as the username and checks a CRL; then the device revoked,
// the CRL republished, Mosquitto restarted on it, and the gateway refused.
func TestFactoryFlow(t *testing.T) {
	t.Run("file", func(t *testing.T) {
		factoryFlow(t, func(state string) string { return "file:" + filepath.Join(state, "device.key") })
	})
	t.Run("tpm", func(t *testing.T) {
		uri := tpmtest.Start(t)
		factoryFlow(t, func(string) string { return uri })
	})
}

var factoryBuild struct {
	once sync.Once
	path string
	err  error
}

// factoryBinary builds cmd/fieldgate-factory once per test binary.
func factoryBinary(t *testing.T) string {
	t.Helper()
	factoryBuild.once.Do(func() {
		gobin, err := exec.LookPath("go")
		if err != nil {
			gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		dir, err := os.MkdirTemp("", "fieldgate-factory-")
		if err != nil {
			factoryBuild.err = err
			return
		}
		factoryBuild.path = filepath.Join(dir, "fieldgate-factory")
		out, err := exec.Command(gobin, "build", "-o", factoryBuild.path, "../fieldgate-factory").CombinedOutput()
		if err != nil {
			factoryBuild.err = fmt.Errorf("go build ./cmd/fieldgate-factory: %v: %s", err, out)
		}
	})
	if factoryBuild.err != nil {
		t.Fatal(factoryBuild.err)
	}
	return factoryBuild.path
}

// provision runs "fieldgate provision ..." in this process.
func provision(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(append([]string{"provision"}, args...), &out, &errOut)
	return code, out.String(), errOut.String()
}

func mustProvision(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errOut := provision(t, args...)
	if code != 0 {
		t.Fatalf("fieldgate provision %s: exit %d: %s", strings.Join(args, " "), code, errOut)
	}
	return out
}

// sitePKI is a PKI made with fieldgate-factory, and a Mosquitto set up on
// it as a central broker.
type sitePKI struct {
	bin, dir, chain, crl string
	obsCert, obsKey      string
}

func newSitePKI(t *testing.T) *sitePKI {
	t.Helper()
	dir := t.TempDir()
	p := &sitePKI{bin: factoryBinary(t), dir: filepath.Join(dir, "pki"), crl: filepath.Join(dir, "site.crl")}
	p.chain = filepath.Join(p.dir, "ca-chain.crt")
	p.factory(t, "init", "--dir", p.dir, "--org", "Acme Test")
	p.obsCert, p.obsKey = filepath.Join(dir, "observer.crt"), filepath.Join(dir, "observer.key")
	p.factory(t, "client-cert", "--dir", p.dir, "--cn", "observer", "--out-cert", p.obsCert, "--out-key", p.obsKey)
	p.factory(t, "crl", "--dir", p.dir, "--out", p.crl)
	return p
}

func (p *sitePKI) factory(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(p.bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("fieldgate-factory %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// central runs a Mosquitto set up as our users set up a central broker:
// certificates of this PKI required, the CN as username, the CRL, and an
// ACL that lets a device write only under its own name. Called again with
// the same port, it restarts it.
func (p *sitePKI) central(t *testing.T, port int) *mosquittotest.Broker {
	t.Helper()
	crt, key := filepath.Join(filepath.Dir(p.dir), "central.crt"), filepath.Join(filepath.Dir(p.dir), "central.key")
	if _, err := os.Stat(key); err != nil {
		p.factory(t, "server-cert", "--dir", p.dir, "--cn", "localhost", "--dns", "localhost", "--ip", "127.0.0.1", "--out-cert", crt, "--out-key", key)
	}
	acl := filepath.Join(filepath.Dir(p.dir), "central.acl")
	os.WriteFile(acl, []byte("user observer\ntopic read devices/#\n\npattern readwrite devices/%u/#\n"), 0o600)
	return mosquittotest.Start(t, mosquittotest.Options{
		CAFile: p.chain, CertFile: crt, KeyFile: key, Port: port,
		Extra: fmt.Sprintf("crlfile %s\nacl_file %s\n", p.crl, acl),
	})
}

func factoryFlow(t *testing.T, keyURI func(state string) string) {
	const id = "EGW-FLOW-1"
	p := newSitePKI(t)
	port := mosquittotest.FreePort(t)
	central := p.central(t, port)
	arrived := make(chan paho.Message, 1000)
	central.Subscribe(t, "observer", p.obsCert, p.obsKey, p.chain, "devices/#", arrived)

	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	cfg := filepath.Join(dir, "fieldgate.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`[device]
state_dir = %q
[identity]
key = %q
cert = %q
ca = %q
[[broker.listener]]
address = "127.0.0.1:0"
[bridge]
address = [%q]
reconnect_min = "10ms"
reconnect_max = "200ms"
[[bridge.route]]
local = "sensors/#"
[[sensor]]
name = "sim"
driver = "simulated"
interval = "50ms"
`, state, keyURI(state), filepath.Join(state, "device.crt"), p.chain, central.URL)), 0o600)

	// A fresh device's configuration is good, and says it waits.
	var chk, chkErr bytes.Buffer
	if code := run([]string{"check-config", "--config", cfg}, &chk, &chkErr); code != 0 || !strings.Contains(chk.String(), "not provisioned yet") {
		t.Errorf("check-config before provisioning: exit %d %q %q", code, chk.String(), chkErr.String())
	}

	// At the factory: the device makes its key and a CSR; the station
	// signs it; the device checks and installs the certificate.
	csr, crt := filepath.Join(dir, "device.csr"), filepath.Join(dir, "device.crt")
	out := mustProvision(t, "csr", "--config", cfg, "--id", id, "--out", csr)
	if !strings.Contains(out, "a new key") {
		t.Errorf("csr: %q", out)
	}
	if out := mustProvision(t, "csr", "--config", cfg, "--id", id, "--out", csr); !strings.Contains(out, "the existing key") {
		t.Errorf("csr again: %q, want the existing key kept", out)
	}
	p.factory(t, "sign", "--dir", p.dir, "--csr", csr, "--out", crt)
	out = mustProvision(t, "install", "--config", cfg, "--cert", crt, "--chain", p.chain)
	if !strings.Contains(out, `CN "`+id+`"`) || !strings.Contains(out, "systemctl restart fieldgate") {
		t.Errorf("install: %q", out)
	}
	out = mustProvision(t, "show", "--config", cfg)
	// A PKCS#11 PIN in the key URI is never printed.
	noPIN := func(what, text string) {
		t.Helper()
		if _, pin, ok := strings.Cut(keyURI(state), "pin-value="); ok && strings.Contains(text, "pin-value="+pin) {
			t.Errorf("%s shows the PIN: %s", what, text)
		}
	}
	noPIN("provision show", out)
	for _, want := range []string{"identity     " + id, "key store    " + strings.SplitN(keyURI(state), "?", 2)[0], "certificate  CN=" + id + ",O=Acme Test", "issuer       CN=Acme Test Issuing CA"} {
		if !strings.Contains(out, want) {
			t.Errorf("show does not say %q:\n%s", want, out)
		}
	}

	cmd, stderr := startGateway(t, cfg)
	sc := bufio.NewScanner(stderr)
	waitLog(t, sc, "fieldgate starting")
	gwLines := make(chan string, 1<<16)
	go func() {
		for sc.Scan() {
			gwLines <- sc.Text()
		}
		close(gwLines)
	}()
	deadline := time.After(30 * time.Second)
	for reading := false; !reading; {
		select {
		case m := <-arrived:
			reading = strings.HasPrefix(m.Topic(), "devices/"+id+"/sensors/sim/")
		case <-deadline:
			t.Fatal("no reading reached the central broker")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := central.WaitLog(ctx, "u'"+id+"'"); err != nil {
		t.Errorf("Mosquitto did not take the CN as the username: %v", err)
	}

	// The device is revoked; the new CRL goes to Mosquitto, which is
	// restarted on it (a reload keeps open connections).
	p.factory(t, "revoke", "--dir", p.dir, "--cert", crt, "--reason", "keyCompromise")
	p.factory(t, "crl", "--dir", p.dir, "--out", p.crl)
	central.Kill()
	central = p.central(t, port)
	// The TLS alert tells the gateway why, and it says so in its log.
	for found := false; !found; {
		select {
		case l, ok := <-gwLines:
			if !ok {
				t.Fatal("the gateway exited when its certificate was refused")
			}
			noPIN("the gateway's log", l)
			found = strings.Contains(l, "uplink connect failed") && strings.Contains(l, "tls: revoked certificate")
		case <-ctx.Done():
			t.Fatal("the gateway did not log that its certificate is revoked")
		}
	}
	// Mosquitto refused it, and refused it again when it retried.
	if _, err := central.WaitLogN(ctx, "certificate verify failed", 2); err != nil {
		t.Fatalf("Mosquitto did not refuse the revoked device twice: %v", err)
	}
	if strings.Contains(central.Log(), "u'"+id+"'") {
		t.Error("the revoked device connected")
	}
	if cmd.ProcessState != nil {
		t.Error("the gateway exited when its certificate was refused")
	}
}

// The local broker takes the factory's chain as client_ca and its CRL as
// crl_file: a site device with a certificate from client-cert connects
// with the real mosquitto_pub, and once revoked it is refused.
func TestFactoryPKIOnLocalBroker(t *testing.T) {
	p := newSitePKI(t)
	dir := t.TempDir()
	srvCrt, srvKey := filepath.Join(dir, "site.crt"), filepath.Join(dir, "site.key")
	p.factory(t, "server-cert", "--dir", p.dir, "--cn", "gateway.site", "--ip", "127.0.0.1", "--out-cert", srvCrt, "--out-key", srvKey)
	for _, cn := range []string{"plc-1", "plc-2"} {
		p.factory(t, "client-cert", "--dir", p.dir, "--cn", cn, "--out-cert", filepath.Join(dir, cn+".crt"), "--out-key", filepath.Join(dir, cn+".key"))
	}
	p.factory(t, "revoke", "--dir", p.dir, "--cert", filepath.Join(dir, "plc-2.crt"), "--reason", "cessationOfOperation")
	p.factory(t, "crl", "--dir", p.dir, "--out", p.crl)

	cfgPath := filepath.Join(dir, "fieldgate.toml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`[device]
id = "EGW-SITE"
state_dir = %q
[[broker.listener]]
address = "127.0.0.1:0"
tls_cert = %q
tls_key = %q
client_ca = %q
require_certificate = true
use_identity_as_username = true
crl_file = %q
`, dir, srvCrt, srvKey, p.chain, p.crl)), 0o600)
	cfg, err := gateway.LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	logs := &testlog.Buffer{}
	written := logs.Written()
	g, err := gateway.New(cfg, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	defer func() { cancel(); <-done }()
	_, port, _ := net.SplitHostPort(g.BrokerAddrs()[0])

	pub := mosquittotest.Binary(t, "mosquitto_pub")
	for cn, ok := range map[string]bool{"plc-1": true, "plc-2": false} {
		out, err := exec.Command(pub, "-h", "127.0.0.1", "-p", port, "--cafile", p.chain,
			"--cert", filepath.Join(dir, cn+".crt"), "--key", filepath.Join(dir, cn+".key"),
			"-i", cn, "-t", "site/"+cn, "-m", "hello", "-q", "1").CombinedOutput()
		if (err == nil) != ok {
			t.Errorf("mosquitto_pub as %s: %v %s; want connected %v", cn, err, out, ok)
		}
	}
	// The refusal was for the revocation, and says so (the handshake's
	// goroutine logs it, maybe after mosquitto_pub has given up).
	deadline := time.After(10 * time.Second)
	for l := logs.String(); !strings.Contains(l, "revoked") || !strings.Contains(l, "127.0.0.1"); l = logs.String() {
		select {
		case <-written:
		case <-deadline:
			t.Fatalf("the gateway did not log the revoked certificate's refusal:\n%s", l)
		}
	}
}
