package main

// Whole-process benchmarks for make bench: fieldgate run as a child
// process, side by side with a Mosquitto bridge set up by hand for the same
// job, against a real Mosquitto as the central broker. They print figures
// and never fail on one.

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldgate/fieldgate/bridge/mosquittotest"
	"github.com/fieldgate/fieldgate/localbroker"
	"github.com/fieldgate/fieldgate/provisioning/pkitest"
)

var payload64 = []byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")

// edge is a site gateway under test: Fieldgate or a Mosquitto bridge.
type edge struct {
	addr     string // local listener, host:port
	user, pw string // for site devices; empty for Mosquitto's anonymous listener
	pid      func() int
	kill     func() // SIGKILL and wait
	restart  func() // start again on the same state
	prefix   string // remote prefix of the sensors route
	central  int    // port the central broker must listen on
	ca       *pkitest.CA
	dev      pkitest.Pair
}

func fieldgateEdge(b *testing.B) *edge {
	ca := pkitest.NewCA(b, "Central CA")
	dev := ca.Client(b, "EGW-BENCH")
	dir := b.TempDir()
	hash, _ := localbroker.HashPassword([]byte("pw"), 0)
	os.WriteFile(filepath.Join(dir, "passwd"), []byte("site:"+hash+"\n"), 0o600)
	port, central := mosquittotest.FreePort(b), mosquittotest.FreePort(b)
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
address = ["ssl://localhost:%d"]
reconnect_min = "100ms"
reconnect_max = "1s"
max_inflight = %d
[bridge.outbox]
max_bytes = "1GiB"
commit_interval = "%s"
[[bridge.route]]
local = "sensors/#"
`, filepath.Join(dir, "state"), dev.KeyFile, dev.CertFile, ca.CertFile, filepath.Join(dir, "passwd"), port, central, benchInflight(), benchCommit())), 0o600)
	e := &edge{addr: fmt.Sprintf("127.0.0.1:%d", port), user: "site", pw: "pw", prefix: "devices/EGW-BENCH/", central: central, ca: ca, dev: dev}
	var cur *exec.Cmd
	var curDone chan struct{}
	e.restart = func() {
		cmd, stderr := startGateway(b, cfg)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() && !strings.Contains(sc.Text(), "fieldgate starting") {
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			for sc.Scan() {
			}
		}()
		cur, curDone = cmd, done
	}
	e.pid = func() int { return cur.Process.Pid }
	e.kill = func() { cur.Process.Kill(); cur.Wait(); <-curDone }
	e.restart()
	b.Cleanup(func() { cur.Process.Signal(syscall.SIGTERM); cur.Wait() })
	return e
}

func mosquittoEdge(b *testing.B) *edge {
	ca := pkitest.NewCA(b, "Central CA")
	dev := ca.Client(b, "EGW-MOSQ")
	o := mosquittotest.BridgeOptions{CAFile: ca.CertFile, CertFile: dev.CertFile, KeyFile: dev.KeyFile,
		CentralPort: mosquittotest.FreePort(b), Topic: `sensors/# out 1 "" devices/EGW-MOSQ/`, Port: mosquittotest.FreePort(b), Dir: b.TempDir()}
	m := mosquittotest.StartBridge(b, o)
	e := &edge{addr: m.Addr, prefix: "devices/EGW-MOSQ/", central: o.CentralPort, ca: ca, dev: dev}
	e.pid = func() int { return m.PID() }
	e.kill = func() { m.Kill() }
	e.restart = func() { m = mosquittotest.StartBridge(b, o) }
	return e
}

// startCentral starts the central broker for e, subscribes to e's prefix
// and waits until e's bridge has connected.
func (e *edge) startCentral(b *testing.B) chan paho.Message {
	srv, obs := e.ca.Server(b, "central"), e.ca.Client(b, "observer")
	c := mosquittotest.Start(b, mosquittotest.Options{CAFile: e.ca.CertFile, CertFile: srv.CertFile, KeyFile: srv.KeyFile, Port: e.central, Extra: "max_queued_messages 0\n"})
	arrived := make(chan paho.Message, 1<<21)
	c.SubscribeQoS(b, "observer", obs.CertFile, obs.KeyFile, e.ca.CertFile, e.prefix+"#", 0, arrived)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.WaitLog(ctx, "u'"+e.dev.Cert.Subject.CommonName+"'"); err != nil {
		b.Fatal(err)
	}
	return arrived
}

// inflightPerDevice is how many QoS 1 messages a site device keeps
// unacknowledged: a gateway that acknowledges once the message is on disk
// (Fieldgate) needs the device to keep more in flight than one that
// acknowledges from memory (Mosquitto).
const inflightPerDevice = 1000

// publish sends n 64-byte QoS 1 messages from each of p site devices, the
// payload carrying a unique number, and returns the acknowledged numbers.
func (e *edge) publish(b *testing.B, p, n int) map[int]bool {
	var mu sync.Mutex
	acked := map[int]bool{}
	var wg sync.WaitGroup
	for d := range p {
		wg.Go(func() {
			o := paho.NewClientOptions().AddBroker("tcp://" + e.addr).SetClientID(fmt.Sprintf("device-%d", d)).SetAutoReconnect(false)
			if e.user != "" {
				o.SetUsername(e.user).SetPassword(e.pw)
			}
			cl := paho.NewClient(o)
			if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				b.Errorf("connect: %v", tok.Error())
				return
			}
			defer cl.Disconnect(0)
			type sent struct {
				id  int
				tok paho.Token
			}
			toks := make(chan sent, inflightPerDevice)
			go func() {
				defer close(toks)
				for i := range n {
					id := d*n + i
					payload := append(strconv.AppendInt(nil, int64(id), 10), ' ')
					payload = append(payload, payload64[len(payload):]...)
					toks <- sent{id, cl.Publish("sensors/t", 1, false, payload)}
				}
			}()
			for s := range toks {
				if s.tok.WaitTimeout(time.Minute) && s.tok.Error() == nil {
					mu.Lock()
					acked[s.id] = true
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return acked
}

// await counts distinct arrivals of acked messages until all arrived or the
// arrivals stop for quiet.
func await(arrived chan paho.Message, acked map[int]bool, quiet time.Duration) (got int, last time.Time) {
	seen := map[int]bool{}
	for got < len(acked) {
		select {
		case m := <-arrived:
			f, _, _ := strings.Cut(string(m.Payload()), " ")
			id, err := strconv.Atoi(f)
			if err != nil || seen[id] || !acked[id] {
				continue
			}
			seen[id] = true
			got++
			last = time.Now()
		case <-time.After(quiet):
			return got, last
		}
	}
	return got, last
}

func edges() map[string]func(*testing.B) *edge {
	return map[string]func(*testing.B) *edge{"fieldgate": fieldgateEdge, "mosquitto": mosquittoEdge}
}

// BenchmarkForwardRate: 10 site devices publish 64-byte QoS 1 messages as
// fast as their PUBACKs come back; the figure is messages per second from
// the first publish to the last arrival at the central broker, with every
// acknowledged message arriving. 200,000 messages, a few seconds' worth:
// the gateway's first and last messages wait up to a commit interval for
// the disk, which a run of one second mixes into the rate.
func BenchmarkForwardRate(b *testing.B) {
	const devices, per = 10, 20000
	for _, name := range []string{"fieldgate", "mosquitto"} {
		b.Run(name, func(b *testing.B) {
			for range b.N {
				e := edges()[name](b)
				arrived := e.startCentral(b)
				cpu0 := cpuTime(e.pid())
				start := time.Now()
				acked := e.publish(b, devices, per)
				got, last := await(arrived, acked, 30*time.Second)
				if got != len(acked) {
					b.Errorf("%d of %d acknowledged messages arrived", got, len(acked))
				}
				b.ReportMetric(float64(got)/last.Sub(start).Seconds(), "msg/s")
				b.ReportMetric(float64(len(acked)-got), "lost")
				// The edge's own CPU per forwarded message: on a machine it
				// shares with the load, what the rate costs it.
				b.ReportMetric(float64((cpuTime(e.pid())-cpu0).Microseconds())/float64(got), "edge-cpu-µs/msg")
			}
		})
	}
}

// BenchmarkBacklog: the central broker is away while site devices publish
// a backlog (FIELDGATE_BENCH_BACKLOG messages, default 1,000,000); the
// figures are the gateway's resident memory while it holds the backlog, and
// how many acknowledged messages reach the central broker after the
// gateway is killed with SIGKILL and started again.
func BenchmarkBacklog(b *testing.B) {
	n := 1000000
	if v, err := strconv.Atoi(os.Getenv("FIELDGATE_BENCH_BACKLOG")); err == nil && v > 0 {
		n = v
	}
	for _, name := range []string{"fieldgate", "mosquitto"} {
		b.Run(name, func(b *testing.B) {
			for range b.N {
				e := edges()[name](b)
				acked := e.publish(b, 10, n/10)
				b.ReportMetric(float64(rssKB(e.pid()))/1024, "RSS-MB")
				e.kill()
				e.restart()
				arrived := e.startCentral(b)
				got, _ := await(arrived, acked, 20*time.Second)
				b.ReportMetric(float64(got)/float64(len(acked))*100, "%survived-kill9")
			}
		})
	}
}

// rssKB reads VmRSS of a process from /proc.
// cpuTime is the user and system CPU time process pid has used.
func cpuTime(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command (which may hold spaces), from field 3 on:
	// utime and stime are fields 14 and 15, in clock ticks (100 a second
	// on Linux).
	_, rest, _ := strings.Cut(string(data), ") ")
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * 10 * time.Millisecond
}

func rssKB(pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.Fields(v)[0])
			return kb
		}
	}
	return -1
}

// benchInflight is the bridge's max_inflight in these benchmarks: 1024,
// since the Mosquitto bridge it is compared with has no limit
// (max_inflight_messages 0). FIELDGATE_BENCH_INFLIGHT=32 measures the
// default.
func benchInflight() int {
	if v, err := strconv.Atoi(os.Getenv("FIELDGATE_BENCH_INFLIGHT")); err == nil && v > 0 {
		return v
	}
	return 1024
}

func benchCommit() string {
	if v := os.Getenv("FIELDGATE_BENCH_COMMIT"); v != "" {
		return v
	}
	return "50ms"
}
