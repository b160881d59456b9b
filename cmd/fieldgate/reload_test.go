package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/fieldgate/fieldgate/bridge/mosquittotest"
	"github.com/fieldgate/fieldgate/localbroker"
)

// fieldgate reload asks the running gateway: it prints what was applied
// and what needs a restart (exit 0), or why the reload was refused (exit
// 1); the gateway keeps running either way.
func TestReloadCommand(t *testing.T) {
	dir := t.TempDir()
	cfg, passwd := filepath.Join(dir, "fieldgate.toml"), filepath.Join(dir, "passwd")
	hash, err := localbroker.HashPassword([]byte("pw"), 0)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(passwd, []byte("plc:"+hash+"\n"), 0o600)
	metrics := mosquittotest.FreePort(t)
	config := func(maxClients int) []byte {
		return []byte(fmt.Sprintf(`[device]
id = "EGW-RELOAD"
state_dir = %q
[broker]
password_file = %q
max_clients = %d
[[broker.listener]]
address = "127.0.0.1:0"
[metrics]
address = "127.0.0.1:%d"
`, dir, passwd, maxClients, metrics))
	}
	os.WriteFile(cfg, config(100), 0o600)
	cmd, stderr := startGateway(t, cfg)
	sc := bufio.NewScanner(stderr)
	waitLine(t, sc, "fieldgate starting")
	defer cmd.Process.Signal(syscall.SIGTERM)

	reload := func(wantCode int) string {
		t.Helper()
		var out, errOut bytes.Buffer
		if code := run([]string{"reload", "--config", cfg}, &out, &errOut); code != wantCode {
			t.Fatalf("exit %d, want %d:\n%s%s", code, wantCode, out.String(), errOut.String())
		}
		return out.String() + errOut.String()
	}
	if out := reload(0); !strings.Contains(out, "reloaded "+cfg) || !strings.Contains(out, "applied: password_file, acl_file") || strings.Contains(out, "restart") {
		t.Errorf("reload:\n%s", out)
	}
	waitLine(t, sc, "reloaded")

	os.WriteFile(cfg, config(200), 0o600)
	if out := reload(0); !strings.Contains(out, "needs a restart (systemctl restart fieldgate): broker.max_clients") {
		t.Errorf("reload with a new max_clients:\n%s", out)
	}

	os.WriteFile(passwd, []byte("broken line\n"), 0o600)
	if out := reload(1); !strings.Contains(out, "reload refused, the running configuration is kept") || !strings.Contains(out, "passwd:1: want user:hash") {
		t.Fatalf("reload of a broken password file:\n%s", out)
	}
	waitLine(t, sc, "reload refused")

	// Still running: it answers again.
	os.WriteFile(passwd, []byte("plc:"+hash+"\n"), 0o600)
	reload(0)
}

func TestLoopbackAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0.0.0.0:9411": "127.0.0.1:9411", "[::]:9411": "127.0.0.1:9411", ":9411": "127.0.0.1:9411",
		"127.0.0.1:9411": "127.0.0.1:9411", "192.0.2.7:9411": "192.0.2.7:9411", "localhost:9411": "localhost:9411",
	} {
		if got := loopbackAddr(in); got != want {
			t.Errorf("loopbackAddr(%q) = %q, want %q", in, got, want)
		}
	}
}
