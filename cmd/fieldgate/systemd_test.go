package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fieldgate/fieldgate/bridge/mosquittotest"
	"github.com/fieldgate/fieldgate/provisioning/pkitest"
)

// The unit passes systemd-analyze verify, and its exposure score is at
// most 1.5 (Debian's mosquitto.service scores 9.6).
func TestSystemdUnit(t *testing.T) {
	sa := mosquittotest.Binary(t, "systemd-analyze")
	unit, err := os.ReadFile("../../systemd/fieldgate.service")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "fieldgate")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	path := filepath.Join(dir, "fieldgate.service")
	os.WriteFile(path, bytes.ReplaceAll(unit, []byte("/usr/bin/fieldgate"), []byte(bin)), 0o644)

	if out, err := exec.Command(sa, "verify", path).CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, _ := exec.Command(sa, "security", "--offline=yes", path).CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for fieldgate.service: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	score, _ := strconv.ParseFloat(string(m[1]), 64)
	t.Logf("systemd-analyze security: exposure %.1f", score)
	if score > 1.5 {
		t.Errorf("exposure %.1f, want at most 1.5:\n%s", score, out)
	}
}

// The daemon speaks sd_notify: READY=1 once it runs, WATCHDOG=1 while its
// loops answer (here with an uplink that cannot connect: the bridge loop is
// alive, backing off), STATUS= lines, STOPPING=1 at SIGTERM.
func TestSdNotify(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ca := pkitest.NewCA(t, "CA")
	dev := ca.Client(t, "EGW-N")
	cfg := filepath.Join(dir, "fieldgate.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`[device]
state_dir = %q
[identity]
key = "file:%s"
cert = %q
ca = %q
[bridge]
address = ["ssl://localhost:%d"]
reconnect_min = "2s"
reconnect_max = "5s"
[[bridge.route]]
local = "sensors/#"
`, dir, dev.KeyFile, dev.CertFile, ca.CertFile, mosquittotest.FreePort(t))), 0o600)

	cmd := exec.Command(os.Args[0], "run", "--config", cfg)
	cmd.Env = append(os.Environ(), "FIELDGATE_TEST_MAIN=1", "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=400000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()

	got := map[string]int{}
	var status string
	buf := make([]byte, 4096)
	ln.SetReadDeadline(time.Now().Add(30 * time.Second))
	for got["WATCHDOG=1"] < 3 || got["READY=1"] == 0 {
		n, err := ln.Read(buf)
		if err != nil {
			t.Fatalf("notifications so far %v: %v", got, err)
		}
		msg := string(buf[:n])
		if s, ok := strings.CutPrefix(msg, "STATUS="); ok {
			status = s
			msg = "STATUS"
		}
		got[msg]++
	}
	if !strings.HasPrefix(status, "uplink down") {
		t.Errorf("STATUS=%q, want it to say the uplink is down", status)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	for {
		n, err := ln.Read(buf)
		if err != nil {
			t.Fatalf("no STOPPING=1 after SIGTERM: %v", err)
		}
		if string(buf[:n]) == "STOPPING=1" {
			break
		}
	}
}

// fieldgate status asks the running gateway.
func TestStatusCommand(t *testing.T) {
	dir := t.TempDir()
	port := mosquittotest.FreePort(t)
	cfg := filepath.Join(dir, "fieldgate.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`[device]
id = "EGW-ST"
state_dir = %q
[[sensor]]
name = "sim"
driver = "simulated"
interval = "20ms"
[metrics]
address = "127.0.0.1:%d"
`, dir, port)), 0o600)
	var out, errOut bytes.Buffer
	if code := run([]string{"status", "--config", cfg}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "is the gateway running?") {
		t.Errorf("nothing running: exit %d, %q", code, errOut.String())
	}
	cmd, stderr := startGateway(t, cfg)
	waitLog(t, bufio.NewScanner(stderr), "fieldgate starting")
	defer cmd.Process.Signal(syscall.SIGTERM)
	out.Reset()
	if code := run([]string{"status", "--config", cfg}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"device       EGW-ST", "uplink       none configured", "clients      0 connected", "sensor       sim: "} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status output has no %q:\n%s", want, out.String())
		}
	}
}
