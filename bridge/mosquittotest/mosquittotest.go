// Package mosquittotest runs a real Mosquitto broker for tests, the way a
// central broker is set up in the field: TLS on loopback, client
// certificates required, the certificate's CN as the username.
package mosquittotest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Options describe the broker's one TLS listener.
type Options struct {
	CAFile, CertFile, KeyFile string
	// Optional makes client certificates optional; by default Mosquitto
	// refuses a client without one (require_certificate true).
	Optional bool
	// Extra is appended to mosquitto.conf.
	Extra string
	// Port to listen on; 0 picks a free one.
	Port int
}

// Broker is a running Mosquitto.
type Broker struct {
	// Addr is host:port of the TLS listener, on 127.0.0.1.
	Addr string
	// URL is ssl://localhost:port, for clients that verify the name.
	URL string

	cmd     *exec.Cmd
	done    chan struct{} // closed when the log reader has stopped
	mu      sync.Mutex
	log     []string
	exited  bool
	changed chan struct{}
}

// Required reports whether tests must not skip when Mosquitto is missing:
// make test and CI set FIELDGATE_REQUIRE_PEERS=1 after installing it.
func Required() bool { return os.Getenv("FIELDGATE_REQUIRE_PEERS") == "1" }

// Start runs Mosquitto until the test ends. It skips the test if Mosquitto
// is not installed, unless Required.
func Start(t testing.TB, o Options) *Broker {
	t.Helper()
	port := o.Port
	if port == 0 {
		port = FreePort(t)
	}
	require := "true"
	if o.Optional {
		require = "false"
	}
	conf := fmt.Sprintf(`per_listener_settings false
allow_anonymous false
persistence false
log_type all
connection_messages true
listener %d 127.0.0.1
cafile %s
certfile %s
keyfile %s
require_certificate %s
use_identity_as_username true
%s
`, port, o.CAFile, o.CertFile, o.KeyFile, require, o.Extra)
	return StartConf(t, port, conf)
}

// Binary returns the path of mosquitto, or skips the test (fails it when
// Required) if it is not installed.
func Binary(t testing.TB, name string) string {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		for _, dir := range []string{"/usr/sbin", "/usr/local/sbin"} {
			if _, err2 := os.Stat(filepath.Join(dir, name)); err2 == nil {
				return filepath.Join(dir, name)
			}
		}
		if Required() {
			t.Fatalf("%s is not installed (run .ci/deps): %v", name, err)
		}
		t.Skipf("%s is not installed; run .ci/deps or make test", name)
	}
	return bin
}

// StartConf runs Mosquitto with conf, whose listener is on port, until the
// test ends. It adds the lines that let the test read Mosquitto's log and
// its temporary files.
func StartConf(t testing.TB, port int, conf string) *Broker {
	t.Helper()
	bin := Binary(t, "mosquitto")
	// Mosquitto started as root switches to the user "mosquitto", which
	// cannot read the test's temporary files; it runs as whoever runs the
	// tests instead.
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	confPath := filepath.Join(t.TempDir(), "mosquitto.conf")
	if err := os.WriteFile(confPath, []byte("user "+u.Username+"\nlog_dest stderr\n"+conf), 0o600); err != nil {
		t.Fatal(err)
	}

	b := &Broker{
		Addr:    fmt.Sprintf("127.0.0.1:%d", port),
		URL:     fmt.Sprintf("ssl://localhost:%d", port),
		changed: make(chan struct{}),
	}
	cmd := exec.Command(bin, "-c", confPath)
	// stderr, because Mosquitto's stdout is block-buffered on a pipe.
	out, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start mosquitto: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			b.mu.Lock()
			b.log = append(b.log, sc.Text())
			close(b.changed)
			b.changed = make(chan struct{})
			b.mu.Unlock()
		}
		b.mu.Lock()
		b.exited = true
		close(b.changed)
		b.mu.Unlock()
	}()
	b.cmd, b.done = cmd, done
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		<-done
		cmd.Wait()
		if t.Failed() {
			t.Logf("mosquitto log:\n%s", b.Log())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := b.WaitLog(ctx, " running"); err != nil {
		t.Fatalf("mosquitto did not start: %v\n%s", err, b.Log())
	}
	return b
}

// Kill kills Mosquitto with SIGKILL, as a crash or power cut would, and
// waits for it to be gone. Start it again with the same Port to restart it.
func (b *Broker) Kill() {
	b.cmd.Process.Kill()
	<-b.done
	b.cmd.Wait()
}

// Log returns what Mosquitto has logged so far.
func (b *Broker) Log() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.log, "\n")
}

// WaitLog waits until Mosquitto logs a line containing substr and returns
// that line.
func (b *Broker) WaitLog(ctx context.Context, substr string) (string, error) {
	return b.WaitLogN(ctx, substr, 1)
}

// WaitLogN waits until Mosquitto has logged n lines containing substr and
// returns the nth.
func (b *Broker) WaitLogN(ctx context.Context, substr string, n int) (string, error) {
	seen, found := 0, 0
	for {
		b.mu.Lock()
		lines, ch, exited := b.log[seen:], b.changed, b.exited
		seen = len(b.log)
		b.mu.Unlock()
		for _, l := range lines {
			if strings.Contains(l, substr) {
				if found++; found == n {
					return l, nil
				}
			}
		}
		if exited {
			return "", fmt.Errorf("mosquitto exited without logging a line containing %q", substr)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return "", fmt.Errorf("mosquitto logged no line containing %q: %w", substr, ctx.Err())
		}
	}
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// BridgeOptions describe a Mosquitto set up as a site gateway by hand: a
// local listener for anonymous site devices, persistence on, no queue
// limit, and a bridge over mutual TLS to a central broker on localhost.
type BridgeOptions struct {
	CAFile, CertFile, KeyFile string // the bridge's trust and identity
	CentralPort               int
	Topic                     string // a "topic" line's arguments, e.g. `sensors/# out 1 "" devices/X/`
	Port                      int    // local listener; 0 picks a free one
	Dir                       string // persistence location; "" makes one
}

// StartBridge runs Mosquitto as a bridging site gateway (see
// BridgeOptions), retrying the central broker every second.
func StartBridge(t testing.TB, o BridgeOptions) *Broker {
	t.Helper()
	if o.Port == 0 {
		o.Port = FreePort(t)
	}
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	conf := fmt.Sprintf(`listener %d 127.0.0.1
allow_anonymous true
persistence true
persistence_location %s/
autosave_interval 1800
max_queued_messages 0
max_inflight_messages 0

connection central
address localhost:%d
bridge_cafile %s
bridge_certfile %s
bridge_keyfile %s
cleansession false
restart_timeout 1 1
topic %s
`, o.Port, o.Dir, o.CentralPort, o.CAFile, o.CertFile, o.KeyFile, o.Topic)
	return StartConf(t, o.Port, conf)
}

// PID is the process id of the running Mosquitto.
func (b *Broker) PID() int { return b.cmd.Process.Pid }
