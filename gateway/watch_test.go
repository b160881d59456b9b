package gateway

import (
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fieldgate/fieldgate/bridge/mosquittotest"
	"github.com/fieldgate/fieldgate/internal/testlog"
	"github.com/fieldgate/fieldgate/localbroker"
	"github.com/fieldgate/fieldgate/provisioning/pkitest"
)

// With broker.watch_files, a changed password file is taken without a
// SIGHUP; a broken one is refused once and the running one kept; a file
// replaced by renaming (as editors and atomic writers do) counts too.
func TestWatchFiles(t *testing.T) {
	ca := pkitest.NewCA(t, "Central CA")
	cfg := siteConfig(t, "ssl://localhost:"+strconv.Itoa(mosquittotest.FreePort(t)), ca, 0)
	src, _ := os.ReadFile(cfg.Path)
	os.WriteFile(cfg.Path, []byte(strings.Replace(string(src), "[broker]\n", "[broker]\nwatch_files = true\nwatch_interval = \"100ms\"\n", 1)), 0o600)
	cfg, err := LoadConfig(cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Broker.WatchFiles || cfg.Broker.WatchInterval.Duration != 100*time.Millisecond {
		t.Fatalf("watch_files, watch_interval: got %v, %v", cfg.Broker.WatchFiles, cfg.Broker.WatchInterval)
	}
	var logs testlog.Buffer
	written := logs.Written()
	g := startGatewayLog(t, cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	// waitLog waits for the n-th line with substr.
	waitLog := func(substr string, n int) {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for strings.Count(logs.String(), substr) < n {
			select {
			case <-written:
			case <-deadline:
				t.Fatalf("no %d× %q in the log:\n%s", n, substr, logs.String())
			}
		}
	}
	login := func(user string) error { return loginAs(t, g, user) }

	passwd := cfg.Broker.PasswordFile
	hash, _ := localbroker.HashPassword([]byte("pw"), 0)
	old, _ := os.ReadFile(passwd)
	os.WriteFile(passwd, append(old, []byte("newcomer:"+hash+"\n")...), 0o600)
	waitLog(`msg=reloaded`, 1)
	if err := login("newcomer"); err != nil {
		t.Errorf("newcomer after the file changed: %v", err)
	}

	os.WriteFile(passwd, []byte("broken line\n"), 0o600)
	waitLog("reload refused", 1)
	if err := login("plc"); err != nil {
		t.Errorf("after a refused reload the running file should be kept: %v", err)
	}

	tmp := filepath.Join(filepath.Dir(passwd), "passwd.new")
	os.WriteFile(tmp, append(old, []byte("third:"+hash+"\n")...), 0o600)
	if err := os.Rename(tmp, passwd); err != nil {
		t.Fatal(err)
	}
	waitLog(`msg=reloaded`, 2)
	if err := login("third"); err != nil {
		t.Errorf("third after the file was replaced: %v", err)
	}
	if n := strings.Count(logs.String(), "watched files changed"); n != 3 {
		t.Errorf("%d reloads for three changes:\n%s", n, logs.String())
	}
}
