package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fieldgate/fieldgate/bridge/mosquittotest"
	"github.com/fieldgate/fieldgate/bridge/outbox"
	"github.com/fieldgate/fieldgate/provisioning/pkitest"
)

func TestQueue(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "fieldgate.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[device]\nid = \"EGW-Q\"\nstate_dir = %q\n", dir)), 0o600)
	queue := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := run(append([]string{"queue"}, append(args, "--config", cfg)...), &out, &errOut)
		return code, out.String(), errOut.String()
	}
	if code, _, errOut := queue("stats"); code != 1 || !strings.Contains(errOut, "outbox.db: no such file or directory") {
		t.Errorf("no outbox yet: exit %d, %q", code, errOut)
	}

	ob, err := outbox.Open(filepath.Join(dir, "outbox.db"), &outbox.Options{CommitInterval: time.Millisecond}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range []string{"sensors/# devices/EGW-Q/", "alarms/# devices/EGW-Q/", "sensors/# devices/EGW-Q/"} {
		done, err := ob.Append(outbox.Message{Route: r, Topic: fmt.Sprintf("t/%d", i), Payload: []byte("p"), QoS: 1}, outbox.DropOldest)
		if err != nil {
			t.Fatal(err)
		}
		<-done
	}
	// While a gateway holds it, the command says so.
	if code, _, errOut := queue("stats"); code != 1 || !strings.Contains(errOut, "held by a running fieldgate") {
		t.Errorf("held outbox: exit %d, %q", code, errOut)
	}
	ob.Close()

	code, out, errOut := queue("stats")
	if code != 0 || !strings.Contains(out, "messages 3\n") || !strings.Contains(out, "\"sensors/# devices/EGW-Q/\"") {
		t.Errorf("stats: exit %d, %q %q", code, out, errOut)
	}
	code, out, _ = queue("peek", "-n", "1")
	if code != 0 || !strings.Contains(out, "#2 ") || !strings.Contains(out, "#1 ") || strings.Contains(out, "#3 ") {
		t.Errorf("peek -n 1: want the head of each route (#1 and #2), got %q", out)
	}
	if code, _, _ := queue("purge"); code != 2 {
		t.Errorf("purge without --route or --all: exit %d, want 2", code)
	}
	code, out, _ = queue("purge", "--route", "sensors/# devices/EGW-Q/")
	if code != 0 || out != "purged 2 messages\n" {
		t.Errorf("purge: exit %d, %q", code, out)
	}
	if _, out, _ = queue("stats"); !strings.Contains(out, "messages 1\n") {
		t.Errorf("stats after purge: %q", out)
	}
}

// Against a running gateway, queue stats asks it (over /status) instead of
// opening the file it holds.
func TestQueueStatsOfRunningGateway(t *testing.T) {
	dir := t.TempDir()
	ca := pkitest.NewCA(t, "CA")
	dev := ca.Client(t, "EGW-Q2")
	cfg := filepath.Join(dir, "fieldgate.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`[device]
state_dir = %q
[identity]
key = "file:%s"
cert = %q
ca = %q
[bridge]
address = ["ssl://localhost:%d"]
[[bridge.route]]
local = "sensors/#"
[[sensor]]
name = "sim"
driver = "simulated"
interval = "10ms"
[metrics]
address = "127.0.0.1:%d"
`, dir, dev.KeyFile, dev.CertFile, ca.CertFile, mosquittotest.FreePort(t), mosquittotest.FreePort(t))), 0o600)
	cmd, stderr := startGateway(t, cfg)
	waitLog(t, bufio.NewScanner(stderr), "fieldgate starting")
	defer cmd.Process.Signal(syscall.SIGTERM)
	var out, errOut bytes.Buffer
	if code := run([]string{"queue", "stats", "--config", cfg}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "uplink       down") || !strings.Contains(out.String(), "outbox       ") {
		t.Errorf("queue stats of a running gateway:\n%s", out.String())
	}
}

func TestSensorsRead(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "fieldgate.toml")
	os.WriteFile(cfg, []byte("[device]\nid = \"EGW-S\"\nstate_dir = \""+dir+"\"\n"+
		"[[sensor]]\nname = \"sim\"\ndriver = \"simulated\"\n"+
		"[[sensor]]\nname = \"room\"\ndriver = \"sht3x\"\nbus = \"/dev/i2c-99\"\n"), 0o600)
	var out, errOut bytes.Buffer
	code := run([]string{"sensors", "read", "--config", cfg}, &out, &errOut)
	if code != 1 {
		t.Errorf("exit %d, want 1 (one sensor failed)", code)
	}
	for _, want := range []string{"sim          simulated  temperature  ", " Cel\n", "room         sht3x      FAILED: open /dev/i2c-99"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output has no %q:\n%s", want, out.String())
		}
	}
}
