package main

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldgate/fieldgate/bridge/mosquittotest"
	"github.com/fieldgate/fieldgate/localbroker"
	"github.com/fieldgate/fieldgate/provisioning/pkitest"
)

// TestKill9 kills the gateway with SIGKILL at random moments while a site
// device publishes to it and it drains to a real Mosquitto, 20 times over.
// Every message the gateway acknowledged (PUBACK) must reach the central
// broker; duplicates are counted, and bounded by the in-flight window per
// kill: the checkpoint the bridge keeps on the central broker tells the
// restarted gateway what not to send again.
func TestKill9(t *testing.T) {
	const kills, window, commitInterval = 20, 32, 20 * time.Millisecond
	ca := pkitest.NewCA(t, "Central CA")
	srv, obs, dev := ca.Server(t, "central"), ca.Client(t, "observer"), ca.Client(t, "EGW-KILL")
	central := mosquittotest.Start(t, mosquittotest.Options{CAFile: ca.CertFile, CertFile: srv.CertFile, KeyFile: srv.KeyFile, Extra: "max_queued_messages 0\n"})
	arrived := make(chan paho.Message, 1<<20)
	central.Subscribe(t, "observer", obs.CertFile, obs.KeyFile, ca.CertFile, "devices/#", arrived)

	dir := t.TempDir()
	hash, err := localbroker.HashPassword([]byte("pw"), 0)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "passwd"), []byte("site:"+hash+"\n"), 0o600)
	port := mosquittotest.FreePort(t)
	cfg := filepath.Join(dir, "fieldgate.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`[device]
state_dir = %q
[identity]
key = "file:%s"
cert = %q
ca = %q
[broker]
password_file = %q
[[broker.listener]]
address = "127.0.0.1:%d"
[bridge]
address = [%q]
max_inflight = %d
reconnect_min = "10ms"
reconnect_max = "100ms"
[bridge.outbox]
commit_interval = "%s"
[[bridge.route]]
local = "sensors/#"
`, filepath.Join(dir, "state"), dev.KeyFile, dev.CertFile, ca.CertFile, filepath.Join(dir, "passwd"), port, central.URL, window, commitInterval)), 0o600)

	acked := map[int]bool{}
	next := 0
	var publishing time.Duration
	for k := 0; k <= kills; k++ {
		cmd, stderr := startGateway(t, cfg)
		lines := bufio.NewScanner(stderr)
		waitLog(t, lines, "fieldgate starting")
		go func() { // keep reading, so the child never blocks on its log
			for lines.Scan() {
			}
		}()
		if k == kills {
			// The last run is not killed: it drains what is left.
			defer func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }()
			break
		}
		// Publish until a random number of acknowledgements, then kill.
		target := 50 + rand.IntN(400)
		got, took := publishUntilKilled(t, port, &next, target, cmd)
		publishing += took
		for _, s := range got {
			acked[s] = true
		}
	}
	t.Logf("%d kills, %d messages published, %d acknowledged", kills, next, len(acked))

	seen := map[int]int{}
	wills := 0 // "offline" on the status topic: Mosquitto sent the will of a killed gateway
	checkpoints := 0
	deadline := time.After(2 * time.Minute)
	missing := func() int {
		n := 0
		for s := range acked {
			if seen[s] == 0 {
				n++
			}
		}
		return n
	}
	for missing() > 0 {
		select {
		case m := <-arrived:
			if strings.HasSuffix(m.Topic(), "/status") {
				if string(m.Payload()) == "offline" {
					wills++
				}
				continue
			}
			if strings.Contains(m.Topic(), "/checkpoint") {
				checkpoints++
				continue
			}
			s, err := strconv.Atoi(string(m.Payload()))
			if err != nil {
				t.Fatalf("payload %q", m.Payload())
			}
			seen[s]++
		case <-deadline:
			t.Fatalf("%d acknowledged messages never reached the central broker", missing())
		}
	}
	if wills == 0 {
		t.Error("no last will (\"offline\") from any of the killed gateways")
	}
	dups := 0
	for _, n := range seen {
		dups += n - 1
	}
	t.Logf("all %d acknowledged messages arrived; %d duplicates, %d unacknowledged ones arrived too; %d checkpoints, %.0f msg/s while publishing",
		len(acked), dups, len(seen)-len(acked), checkpoints, float64(len(acked))/publishing.Seconds())
	if checkpoints == 0 {
		t.Error("the gateway kept no checkpoint on the central broker")
	}
	// A kill resends what the central broker got after the last checkpoint
	// it holds: at most the window.
	if dups > kills*window {
		t.Errorf("%d duplicates after %d kills: want at most the window (%d) per kill", dups, kills, window)
	}
}

// startGateway runs "fieldgate run" on cfg in a child process until the
// test ends, and returns its stderr.
func startGateway(t testing.TB, cfg string) (*exec.Cmd, *os.File) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "run", "--config", cfg)
	cmd.Env = append(os.Environ(), "FIELDGATE_TEST_MAIN=1")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); r.Close() })
	return cmd, r
}

func waitLog(t *testing.T, sc *bufio.Scanner, substr string) {
	t.Helper()
	for sc.Scan() {
		if strings.Contains(sc.Text(), substr) {
			return
		}
	}
	t.Fatalf("the gateway exited without logging %q", substr)
}

// publishUntilKilled publishes sequence numbers from *next on, QoS 1, as a
// site device would, and kills the gateway with SIGKILL once target of
// them are acknowledged. It returns the acknowledged ones, and how long it
// published until the kill.
func publishUntilKilled(t *testing.T, port int, next *int, target int, cmd *exec.Cmd) ([]int, time.Duration) {
	t.Helper()
	cl := paho.NewClient(paho.NewClientOptions().AddBroker(fmt.Sprintf("tcp://127.0.0.1:%d", port)).
		SetClientID("site-device").SetUsername("site").SetPassword("pw").SetAutoReconnect(false).SetConnectRetry(false))
	if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect to the gateway: %v", tok.Error())
	}
	defer cl.Disconnect(0)
	type sent struct {
		seq int
		tok paho.Token
	}
	inflight := make(chan sent, 64)
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(inflight)
		for ctx.Err() == nil {
			s := *next
			*next++
			inflight <- sent{s, cl.Publish("sensors/seq", 1, false, strconv.Itoa(s))}
		}
	})
	var acked []int
	start := time.Now()
	var took time.Duration
	killed := false
	for s := range inflight {
		if !killed { // after the kill, only what was already acknowledged counts
			s.tok.WaitTimeout(10 * time.Second)
		}
		if isDone(s.tok) && s.tok.Error() == nil {
			acked = append(acked, s.seq)
		}
		if len(acked) >= target && !killed {
			cmd.Process.Kill()
			cmd.Wait()
			killed, took = true, time.Since(start)
			stop()
		}
	}
	stop()
	wg.Wait()
	return acked, took
}

func isDone(t paho.Token) bool {
	select {
	case <-t.Done():
		return true
	default:
		return false
	}
}
