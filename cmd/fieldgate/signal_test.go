package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain lets a test run this binary's main in a child process.
func TestMain(m *testing.M) {
	if os.Getenv("FIELDGATE_TEST_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// startChild runs "fieldgate run" in a child process and waits until it
// has started.
func startChild(t *testing.T) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "fieldgate.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`[device]
id = "EGW-SIG"
state_dir = %q
[[broker.listener]]
address = "127.0.0.1:0"
[[sensor]]
name = "sim"
driver = "simulated"
interval = "20ms"
`, dir)), 0o600)
	cmd, stderr := startGateway(t, cfg)
	sc := bufio.NewScanner(stderr)
	waitLine(t, sc, "fieldgate starting")
	return cmd, sc
}

func waitLine(t *testing.T, sc *bufio.Scanner, substr string) string {
	t.Helper()
	for sc.Scan() {
		if strings.Contains(sc.Text(), substr) {
			return sc.Text()
		}
	}
	t.Fatalf("the gateway exited without logging %q", substr)
	return ""
}

func TestSIGTERMShutsDownCleanly(t *testing.T) {
	cmd, sc := startChild(t)
	cmd.Process.Signal(syscall.SIGTERM)
	waitLine(t, sc, "stopped")
	for sc.Scan() { // drain until the child closes stderr
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() { <-ctx.Done(); cmd.Process.Kill() }()
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit after SIGTERM: %v, want status 0", err)
	}
}

// SIGHUP reloads; the gateway keeps running.
func TestSIGHUPReloads(t *testing.T) {
	cmd, sc := startChild(t)
	cmd.Process.Signal(syscall.SIGHUP)
	waitLine(t, sc, "reloaded")
	cmd.Process.Signal(syscall.SIGTERM)
	waitLine(t, sc, "stopped")
}
