package bridge

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldgate/fieldgate/bridge/mosquittotest"
	"github.com/fieldgate/fieldgate/bridge/outbox"
	"github.com/fieldgate/fieldgate/localbroker"
	"github.com/fieldgate/fieldgate/provisioning/pkitest"

	"github.com/fieldgate/fieldgate/internal/testlog"
)

// rig is a bridge in front of a real Mosquitto, through a proxy the test
// can cut, with an observer subscribed to everything on Mosquitto.
type rig struct {
	t        *testing.T
	ca       *pkitest.CA
	srv, obs pkitest.Pair
	port     int
	central  *mosquittotest.Broker
	proxy    *mosquittotest.Proxy
	arrived  chan paho.Message
	ob       *outbox.Outbox
	b        *Bridge
	observer int         // observers connected so far, for unique client ids
	obsCl    paho.Client // the current observer, which may also publish
	conf     string      // more mosquitto.conf
	stop     func()      // stops the bridge and closes the outbox
	devTLS   *tls.Config // the bridge's
	opts     Options     // the bridge's, but Outbox
	log      *slog.Logger
}

// The rig's routes: forward sends even indices on the first, odd ones on
// the second. Message i has outbox sequence number i+1.
var rigRoutes = []Route{
	{Local: "sensors/#", Direction: Out, Prefix: "devices/EGW-RIG/", QoS: 1},
	{Local: "meters/#", Direction: Out, Prefix: "devices/EGW-RIG/", QoS: 1},
}

// rigTopics maps the rig's route IDs to the central broker's topics.
var rigTopics = map[string]string{
	rigRoutes[0].defaultID(): "devices/EGW-RIG/sensors/t",
	rigRoutes[1].defaultID(): "devices/EGW-RIG/meters/m",
}

const rigCheckpoint = "devices/EGW-RIG/checkpoint"

const centralExtra = "max_queued_messages 0\nmax_inflight_messages 0\n" // the observer must not lose anything

func newRig(t *testing.T, maxInflight int) *rig {
	t.Helper()
	return newRigWith(t, maxInflight, "", nil, discard())
}

// newRigWith is newRig with more Mosquitto configuration, a function that
// may change the bridge's options, and the bridge's log.
func newRigWith(t *testing.T, maxInflight int, centralConf string, opt func(*Options), log *slog.Logger) *rig {
	t.Helper()
	r := &rig{t: t, ca: pkitest.NewCA(t, "Central CA"), port: mosquittotest.FreePort(t), arrived: make(chan paho.Message, 200000), conf: centralConf}
	r.srv = r.ca.Server(t, "central")
	r.obs = r.ca.Client(t, "observer")
	dev := r.ca.Client(t, "EGW-RIG")
	r.devTLS = clientTLS(t, r.ca, dev)
	r.startCentral()
	r.proxy = mosquittotest.NewProxy(t, fmt.Sprintf("127.0.0.1:%d", r.port))
	r.proxy.Block() // the test says when the bridge may connect

	r.opts = Options{
		Addresses:       []string{"ssl://" + r.proxy.Addr},
		TLS:             r.devTLS,
		ClientID:        "EGW-RIG",
		Outbox:          r.ob,
		Routes:          rigRoutes,
		CheckpointTopic: rigCheckpoint,
		MaxInflight:     maxInflight,
		KeepAlive:       time.Second,
		ReconnectMin:    10 * time.Millisecond,
		ReconnectMax:    50 * time.Millisecond,
	}
	if opt != nil {
		opt(&r.opts)
	}
	r.log = log
	r.start(filepath.Join(t.TempDir(), "outbox.db"))
	return r
}

// start opens the outbox at path and runs a bridge on it, with the rig's
// options, until stop.
func (r *rig) start(path string) {
	r.t.Helper()
	var err error
	if r.ob, err = outbox.Open(path, &outbox.Options{CommitInterval: 5 * time.Millisecond}, discard()); err != nil {
		r.t.Fatal(err)
	}
	o := r.opts
	o.Outbox = r.ob
	if r.b, err = New(o, r.log); err != nil {
		r.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.b.Run(ctx) }()
	var once sync.Once
	ob := r.ob
	r.stop = func() { once.Do(func() { cancel(); <-done; ob.Close() }) }
	r.t.Cleanup(r.stop)
}

// restart stops the bridge and starts another on the same outbox file, as
// the gateway does after a restart.
func (r *rig) restart() {
	r.t.Helper()
	path := r.ob.Path()
	r.stop()
	r.start(path)
}

// clientTLS is the device side of mutual TLS with a central broker whose
// certificate ca signed for localhost.
func clientTLS(t testing.TB, ca *pkitest.CA, dev pkitest.Pair) *tls.Config {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(dev.CertFile, dev.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots, ServerName: "localhost", MinVersion: tls.VersionTLS12}
}

func (r *rig) startCentral() {
	r.central = mosquittotest.Start(r.t, mosquittotest.Options{
		CAFile: r.ca.CertFile, CertFile: r.srv.CertFile, KeyFile: r.srv.KeyFile, Port: r.port, Extra: centralExtra + r.conf,
	})
	r.observer++
	r.obsCl = r.central.Subscribe(r.t, fmt.Sprintf("observer-%d", r.observer), r.obs.CertFile, r.obs.KeyFile, r.ca.CertFile, "devices/#", r.arrived)
}

// forward stores n messages, alternating between the two routes, each
// carrying its route and index.
func (r *rig) forward(from, n int) {
	r.t.Helper()
	var last []<-chan error
	for i := from; i < from+n; i++ {
		topic := "sensors/t"
		if i%2 == 1 {
			topic = "meters/m"
		}
		stored, err := r.b.Forward(topic, []byte(strconv.Itoa(i)), 1, false)
		if err != nil {
			r.t.Fatal(err)
		}
		last = append(last, stored)
	}
	for _, s := range last {
		if err := <-s; err != nil {
			r.t.Fatal(err)
		}
	}
}

// tally checks what arrived: in order per route, each index once at least,
// and every checkpoint after all that it names.
type tally struct {
	seen        map[int]bool
	last        map[string]int
	dups        int
	total       int
	checkpoints []Checkpoint
	assumed     map[int]bool // indices the central broker is taken to hold without their arrival (a test's own checkpoint)
}

func newTally() *tally {
	return &tally{seen: map[int]bool{}, last: map[string]int{}, assumed: map[int]bool{}}
}

func (ta *tally) add(t *testing.T, m paho.Message) {
	switch m.Topic() {
	case "devices/EGW-RIG/status", rigCheckpoint + "/fence":
		return
	case rigCheckpoint:
		ta.checkpoint(t, m)
		return
	}
	i, err := strconv.Atoi(string(m.Payload()))
	if err != nil {
		t.Fatalf("%s: payload %q", m.Topic(), m.Payload())
	}
	ta.total++
	if ta.seen[i] {
		ta.dups++
		return // a resend after a cut: allowed, counted
	}
	ta.seen[i] = true
	if last, ok := ta.last[m.Topic()]; ok && i < last {
		t.Errorf("%s: %d arrived after %d: out of order", m.Topic(), i, last)
	}
	ta.last[m.Topic()] = i
}

// checkpoint checks that the central broker had, when it took the
// checkpoint, every message of each route up to the one it names: the
// observer sees them in the order Mosquitto handled them.
func (ta *tally) checkpoint(t *testing.T, m paho.Message) {
	var cp Checkpoint
	if err := json.Unmarshal(m.Payload(), &cp); err != nil {
		t.Fatalf("checkpoint %q: %v", m.Payload(), err)
	}
	for id, seq := range cp.Routes {
		topic, ok := rigTopics[id]
		if !ok {
			t.Fatalf("checkpoint %s: no route %q", m.Payload(), id)
		}
		// Message i has seq i+1; even ones are the first route's.
		parity := 0
		if id == rigRoutes[1].defaultID() {
			parity = 1
		}
		for i := parity; i < int(seq); i += 2 {
			if !ta.seen[i] && !ta.assumed[i] {
				t.Errorf("checkpoint %s names message %d of %s, but message %d had not arrived before it: the checkpoint would skip a message the central broker never had", m.Payload(), seq-1, topic, i)
				break
			}
		}
	}
	ta.checkpoints = append(ta.checkpoints, cp)
}

// until reads arrivals until every index below n has arrived.
func (r *rig) until(ta *tally, n int, timeout time.Duration) {
	r.t.Helper()
	deadline := time.After(timeout)
	for len(ta.seen) < n {
		select {
		case m := <-r.arrived:
			ta.add(r.t, m)
		case <-deadline:
			r.t.Fatalf("%d of %d messages arrived; bridge %+v", len(ta.seen), n, r.b.Status())
		}
	}
}

// TestBacklogDeliveredInOrder: 50,000 messages stored while the uplink is
// down all arrive, in order per route, once it is back.
func TestBacklogDeliveredInOrder(t *testing.T) {
	r := newRig(t, 32)
	const n = 50000
	r.forward(0, n)
	st := r.b.Status()
	if st.Queued != n || st.Connections != 0 {
		t.Fatalf("before the uplink is back: %+v, want %d queued and no connection", st, n)
	}
	r.proxy.Unblock()
	ta := newTally()
	r.until(ta, n, 2*time.Minute)
	if ta.dups != 0 {
		t.Errorf("%d duplicates without any cut", ta.dups)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if st, err := r.b.Wait(ctx, func(s Status) bool { return s.Queued == 0 }); err != nil {
		t.Errorf("outbox not emptied after delivery: %+v", st)
	}
}

// TestCutsAndCentralRestart: connections reset mid-drain and the central
// broker killed and restarted lose nothing and reorder nothing; the
// duplicates are bounded by the in-flight window per cut.
func TestCutsAndCentralRestart(t *testing.T) {
	const window = 16
	r := newRig(t, window)
	const n = 20000
	r.forward(0, n/2)
	r.proxy.Unblock()
	ta := newTally()
	cuts := 0
	for _, at := range []int{n / 20, n / 8, n / 4} { // cut while draining
		r.until(ta, at, time.Minute)
		before := r.b.Status().Connections
		r.proxy.Reset()
		cuts++
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_, err := r.b.Wait(ctx, func(s Status) bool { return s.Connections > before })
		cancel()
		if err != nil {
			t.Fatalf("no reconnection after cut %d: %+v", cuts, r.b.Status())
		}
	}
	// Kill the central broker mid-drain. The proxy is blocked and reset
	// first, and the observer catches up, so that what Mosquitto
	// acknowledged has reached the observer before Mosquitto dies.
	r.proxy.Block()
	r.proxy.Reset()
	cuts++
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := r.b.Wait(ctx, func(s Status) bool { return !s.Connected })
	if err != nil {
		t.Fatal(err)
	}
	// Every message Mosquitto acknowledged was queued for the observer.
	deadline := time.After(time.Minute)
	for ta.total < int(st.Sent) {
		select {
		case m := <-r.arrived:
			ta.add(t, m)
		case <-deadline:
			t.Fatalf("observer got %d messages, the bridge had %d acknowledged", ta.total, st.Sent)
		}
	}
	r.central.Kill()
	r.forward(n/2, n/2) // more arrive locally meanwhile
	r.startCentral()
	r.proxy.Unblock()
	r.until(ta, n, 2*time.Minute)

	st = r.b.Status()
	t.Logf("%d messages, %d cuts: %d duplicates, %d resent, %d connections", n, cuts, ta.dups, st.Resent, st.Connections)
	if ta.dups > cuts*window {
		t.Errorf("%d duplicates for %d cuts: want at most the window (%d) per cut", ta.dups, cuts, window)
	}
	if st.Connections < uint64(cuts)+1 {
		t.Errorf("%d connections, want at least %d after %d cuts", st.Connections, cuts+1, cuts)
	}
	if !strings.Contains(r.central.Log(), "u'EGW-RIG'") {
		t.Error("the bridge did not log in with its certificate's CN")
	}
}

// TestStalledLink: the connection goes quiet without closing (a dead NAT,
// a cellular link gone silent). The keepalive finds it, the bridge
// reconnects and resends what was swallowed: no loss, no reorder.
func TestStalledLink(t *testing.T) {
	r := newRig(t, 16)
	const n = 6000
	r.forward(0, n)
	r.proxy.Unblock()
	ta := newTally()
	r.until(ta, n/4, time.Minute)
	before := r.b.Status().Connections
	r.proxy.Stall()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := r.b.Wait(ctx, func(s Status) bool { return s.Connections > before }); err != nil {
		t.Fatalf("no reconnection after the stall: %+v", r.b.Status())
	}
	r.until(ta, n, time.Minute)
	t.Logf("stalled link found and left; %d duplicates, last error %q", ta.dups, r.b.Status().LastError)
	if ta.dups > 16 {
		t.Errorf("%d duplicates after one stall: want at most the window (16)", ta.dups)
	}
}

// TestFailback: with the first address down the bridge uses the second;
// once the first is back it moves there, and nothing is lost on the way.
func TestFailback(t *testing.T) {
	ca := pkitest.NewCA(t, "Central CA")
	srv, obs, dev := ca.Server(t, "central"), ca.Client(t, "observer"), ca.Client(t, "EGW-FB")
	arrived := make(chan paho.Message, 100000)
	start := func(name string) *mosquittotest.Broker {
		m := mosquittotest.Start(t, mosquittotest.Options{CAFile: ca.CertFile, CertFile: srv.CertFile, KeyFile: srv.KeyFile, Extra: centralExtra})
		m.Subscribe(t, "observer-"+name, obs.CertFile, obs.KeyFile, ca.CertFile, "devices/#", arrived)
		return m
	}
	primary, backup := start("primary"), start("backup")
	proxy := mosquittotest.NewProxy(t, primary.Addr)
	proxy.Block() // the first address is down
	ob, err := outbox.Open(filepath.Join(t.TempDir(), "outbox.db"), &outbox.Options{CommitInterval: 5 * time.Millisecond}, discard())
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Options{
		Addresses:        []string{"ssl://" + proxy.Addr, "ssl://" + backup.Addr},
		TLS:              clientTLS(t, ca, dev),
		ClientID:         "EGW-FB",
		Outbox:           ob,
		Routes:           []Route{{Local: "sensors/#", Direction: Out, Prefix: "devices/EGW-FB/", QoS: 1}},
		ReconnectMin:     10 * time.Millisecond,
		ReconnectMax:     50 * time.Millisecond,
		FailbackInterval: 100 * time.Millisecond,
	}, discard())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); b.Run(ctx) }()
	defer func() { cancel(); <-done; ob.Close() }()

	send := func(from, n int) {
		for i := from; i < from+n; i++ {
			if _, err := b.Forward("sensors/x", []byte(strconv.Itoa(i)), 1, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	send(0, 1000)
	if st, err := b.Wait(wctx, func(s Status) bool { return s.Connected && sameAddress("ssl://"+backup.Addr, s.Address) }); err != nil {
		t.Fatalf("not on the backup: %+v", st)
	}
	proxy.Unblock() // the first address is back
	if st, err := b.Wait(wctx, func(s Status) bool { return s.Connected && sameAddress("ssl://"+proxy.Addr, s.Address) }); err != nil {
		t.Fatalf("did not move back to the first address: %+v", st)
	}
	send(1000, 1000)
	seen := map[int]bool{}
	for len(seen) < 2000 {
		select {
		case m := <-arrived:
			if i, err := strconv.Atoi(string(m.Payload())); err == nil {
				seen[i] = true
			}
		case <-wctx.Done():
			t.Fatalf("%d of 2000 arrived; %+v", len(seen), b.Status())
		}
	}
	if st := b.Status(); st.Failbacks != 1 {
		t.Errorf("failbacks: got %d, want 1", st.Failbacks)
	}
}

// TestTLSReload: new TLS material that the central broker refuses leaves
// the uplink as it was; material it accepts replaces the connection.
func TestTLSReload(t *testing.T) {
	r := newRig(t, 16)
	r.proxy.Unblock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := r.b.Wait(ctx, func(s Status) bool { return s.Connected }); err != nil {
		t.Fatal(err)
	}
	stranger := pkitest.NewCA(t, "Stranger CA")
	r.b.SetTLS(clientTLS(t, r.ca, stranger.Client(t, "EGW-RIG"))) // signed by a CA the central does not know
	st, err := r.b.Wait(ctx, func(s Status) bool { return s.ReloadError != "" })
	if err != nil {
		t.Fatalf("no verdict on the refused material: %+v", st)
	}
	if !st.Connected || st.Connections != 1 {
		t.Errorf("after refused material: %+v, want still connected on the first connection", st)
	}
	r.forward(0, 100)
	ta := newTally()
	r.until(ta, 100, time.Minute) // still flowing

	r.b.SetTLS(clientTLS(t, r.ca, r.ca.Client(t, "EGW-RIG"))) // a renewed certificate
	if st, err = r.b.Wait(ctx, func(s Status) bool { return s.Reloads == 1 && s.Connected && s.Connections == 2 }); err != nil {
		t.Fatalf("renewed material not taken: %+v", st)
	}
	r.forward(100, 100)
	r.until(ta, 200, time.Minute)
}

// TestMaxRate: a backlog is sent no faster than max_rate. Only the lower
// bound on the time is checked: a slow machine cannot make it fail.
func TestMaxRate(t *testing.T) {
	r := newRig(t, 32)
	r.b.o.MaxRate = 200 // messages per second; the burst is a tenth of it
	const n = 100
	r.forward(0, n)
	start := time.Now()
	r.proxy.Unblock()
	r.until(newTally(), n, time.Minute)
	if d, least := time.Since(start), time.Duration(float64(n-20)/200*float64(time.Second)); d < least {
		t.Errorf("%d messages in %v at max_rate 200/s: want at least %v", n, d, least)
	}
}

// TestLiveNotStarved: while one route drains a backlog, a message on
// another route waits for no more than what is in flight.
func TestLiveNotStarved(t *testing.T) {
	const window = 16
	r := newRig(t, window)
	var last <-chan error
	for i := range 5000 {
		stored, err := r.b.Forward("sensors/t", []byte(strconv.Itoa(i)), 1, false)
		if err != nil {
			t.Fatal(err)
		}
		last = stored
	}
	<-last
	r.proxy.Unblock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := r.b.Wait(ctx, func(s Status) bool { return s.Sent >= 200 }); err != nil { // the drain is under way
		t.Fatal(err)
	}
	stored, err := r.b.Forward("meters/live", []byte("live"), 1, false)
	if err != nil {
		t.Fatal(err)
	}
	<-stored
	// Backlog messages acknowledged by now were sent before the live one
	// existed; those sent after it are its wait.
	before := int(r.b.Status().Sent)
	highest := -1
	for {
		select {
		case m := <-r.arrived:
			if m.Topic() == "devices/EGW-RIG/meters/live" {
				waited := highest + 1 - before
				t.Logf("the live message waited behind %d backlog messages (window %d)", waited, window)
				// At most the window, which was full when it came; one more
				// for an acknowledgement counted just after the snapshot.
				if waited > window+1 {
					t.Errorf("the live message waited behind %d backlog messages: want at most the window (%d)", waited, window)
				}
				return
			}
			if i, err := strconv.Atoi(string(m.Payload())); err == nil {
				highest = max(highest, i)
			}
		case <-ctx.Done():
			t.Fatal("the live message never arrived")
		}
	}
}

// TestCheckpoint: after a restart the bridge reads the retained checkpoint
// back and skips what it says the central broker holds; a checkpoint of
// another outbox file, or naming messages this outbox never had, is
// ignored; with none there, everything is sent.
func TestCheckpoint(t *testing.T) {
	const n = 400 // 200 per route; message i has sequence number i+1
	for _, tc := range []struct {
		name string
		cp   func(r *rig) string // "" for none
		skip int                 // of the sensors route, from its head
	}{
		{"none", func(*rig) string { return "" }, 0},
		{"ours", func(r *rig) string {
			// Message 98, the 50th of the sensors route, has seq 99.
			return fmt.Sprintf(`{"outbox":%q,"routes":{%q:99}}`, r.ob.ID(), rigRoutes[0].defaultID())
		}, 50},
		{"another outbox", func(*rig) string {
			return fmt.Sprintf(`{"outbox":"0123456789abcdef0123456789abcdef","routes":{%q:99}}`, rigRoutes[0].defaultID())
		}, 0},
		{"beyond this outbox", func(r *rig) string {
			return fmt.Sprintf(`{"outbox":%q,"routes":{%q:99,%q:%d}}`, r.ob.ID(), rigRoutes[0].defaultID(), rigRoutes[1].defaultID(), n+7)
		}, 0},
		{"not JSON", func(*rig) string { return "42" }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, 32)
			r.forward(0, n)
			r.restart() // the checkpoint is of an earlier run
			if p := tc.cp(r); p != "" {
				if tok := r.obsCl.Publish(rigCheckpoint, 1, true, p); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
					t.Fatalf("publish the checkpoint: %v", tok.Error())
				}
				<-r.arrived // the observer's copy of it
			}
			r.proxy.Unblock()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if st, err := r.b.Wait(ctx, func(s Status) bool { return s.Queued == 0 }); err != nil {
				t.Fatalf("outbox not emptied: %+v", st)
			}
			// Everything sent was acknowledged, so has reached the
			// observer's queue: read until the last of each route.
			ta := newTally()
			for i := 0; i < 2*tc.skip; i += 2 {
				ta.assumed[i] = true
			}
			for ta.last["devices/EGW-RIG/sensors/t"] != n-2 || ta.last["devices/EGW-RIG/meters/m"] != n-1 {
				select {
				case m := <-r.arrived:
					ta.add(t, m)
				case <-ctx.Done():
					t.Fatalf("the last messages never arrived: %+v", ta.last)
				}
			}
			for i := range n {
				skipped := i%2 == 0 && i/2 < tc.skip
				if ta.seen[i] == skipped {
					t.Errorf("message %d: arrived %v, want %v", i, ta.seen[i], !skipped)
				}
			}
			if ta.dups != 0 {
				t.Errorf("%d duplicates", ta.dups)
			}
			// The bridge kept a checkpoint of its own on the way: the
			// last one names messages sent on this connection.
			if len(ta.checkpoints) == 0 {
				t.Fatal("the bridge published no checkpoint")
			}
			last := ta.checkpoints[len(ta.checkpoints)-1]
			if last.Outbox != r.ob.ID() || last.Routes[rigRoutes[0].defaultID()] <= 99 || last.Routes[rigRoutes[1].defaultID()] == 0 {
				t.Errorf("the bridge's last checkpoint %+v: want outbox %s and both routes past the start", last, r.ob.ID())
			}
			t.Logf("%d messages arrived, %d checkpoints seen", len(ta.seen), len(ta.checkpoints))
		})
	}
}

// TestCheckpointNotReadable: a central broker whose ACL lets the device
// publish but not read its checkpoint (Mosquitto grants the subscription
// and drops the deliveries) costs the wait for the fence, once; then the
// outbox is sent from its head, all of it.
func TestCheckpointNotReadable(t *testing.T) {
	acl := filepath.Join(t.TempDir(), "acl")
	if err := os.WriteFile(acl, []byte("pattern write devices/%u/#\nuser observer\ntopic readwrite #\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logged testlog.Buffer
	r := newRigWith(t, 32, "acl_file "+acl+"\n", func(o *Options) { o.CheckpointWait = 100 * time.Millisecond },
		slog.New(slog.NewTextHandler(&logged, nil)))
	const n = 200
	r.forward(0, n)
	r.proxy.Unblock()
	ta := newTally()
	r.until(ta, n, time.Minute)
	if ta.dups != 0 {
		t.Errorf("%d duplicates", ta.dups)
	}
	if len(ta.checkpoints) == 0 {
		t.Error("no checkpoint published: the ACL lets the device write it")
	}
	if !strings.Contains(logged.String(), "fence did not come back") {
		t.Errorf("the missing fence was not logged:\n%s", logged.String())
	}
}

// TestCheckpointAfterCrash: a bridge whose deletions never reached the
// disk (its outbox file is a copy taken before it sent anything, as after
// kill -9 with a long commit interval) reads back the checkpoint its
// previous run kept, and sends again at most the window.
func TestCheckpointAfterCrash(t *testing.T) {
	const window, n = 32, 2000
	r := newRig(t, window)
	r.forward(0, n)
	crashCopy := filepath.Join(t.TempDir(), "outbox.db")
	copyFile(t, r.ob.Path(), crashCopy)
	r.proxy.Unblock()
	ta := newTally()
	r.until(ta, n, time.Minute)
	if len(ta.checkpoints) == 0 {
		t.Fatal("no checkpoint published")
	}
	r.stop()
	r.start(crashCopy)
	b := r.b
	if st := r.ob.Stats(); st.Messages != n {
		t.Fatalf("the crash copy holds %d messages, want %d", st.Messages, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := b.Wait(ctx, func(s Status) bool { return s.Queued == 0 })
	if err != nil {
		t.Fatalf("the restarted bridge did not empty its outbox: %+v", st)
	}
	t.Logf("the restarted bridge sent %d of %d messages again", st.Sent, n)
	if st.Sent == 0 || st.Sent > window {
		t.Errorf("the restarted bridge sent %d messages again: want between 1 and the window (%d)", st.Sent, window)
	}
	// They were acknowledged, so are on their way to the observer: all
	// are duplicates, and in order.
	for want := ta.total + int(st.Sent); ta.total < want; {
		select {
		case m := <-r.arrived:
			ta.add(t, m)
		case <-ctx.Done():
			t.Fatalf("%d of the %d resent messages reached the observer", ta.total-want+int(st.Sent), st.Sent)
		}
	}
	if ta.dups != int(st.Sent) {
		t.Errorf("%d duplicates, want the %d resent", ta.dups, st.Sent)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A local publish that a wide route would map onto the checkpoint topic is
// not forwarded: a site device cannot forge the bridge's checkpoint.
func TestCheckpointNotForgeable(t *testing.T) {
	r := newRigWith(t, 32, "", func(o *Options) {
		o.Routes = append(o.Routes, Route{Local: "#", Direction: Out, Prefix: "devices/EGW-RIG/", QoS: 1})
	}, discard())
	for _, topic := range []string{"checkpoint", "checkpoint/fence", "checkpoint/x/y"} {
		if done, err := r.b.Forward(topic, []byte(`{"outbox":"x","routes":{}}`), 1, true); done != nil || err != nil {
			t.Errorf("%s: forwarded (%v, %v)", topic, done, err)
		}
	}
	done, err := r.b.Forward("checkpoints", []byte("fine"), 1, false)
	if done == nil || err != nil {
		t.Fatalf("checkpoints: not forwarded (%v)", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st := r.ob.Stats(); st.Messages != 1 {
		t.Errorf("outbox holds %d messages, want the one on \"checkpoints\"", st.Messages)
	}
}

// TestCheckpointDroppedByBroker: a central broker that ends the connection
// of a client publishing where its ACL does not let it (here Fieldgate's
// own broker, whose rule that is for MQTT 3.1.1) must not keep the uplink
// from draining: the checkpoint read is given up, then the checkpoints,
// and every message is delivered.
func TestCheckpointDroppedByBroker(t *testing.T) {
	const data = "user EGW-RIG\ntopic write devices/EGW-RIG/sensors/#\ntopic write devices/EGW-RIG/meters/#\n"
	for _, tc := range []struct {
		name, acl, says string
	}{
		{"nothing allowed", data, "refused the subscription to the checkpoint"},
		{"read only", data + "topic read devices/EGW-RIG/checkpoint/#\n", "lost while the checkpoint was read back"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca := pkitest.NewCA(t, "Central CA")
			srv, dev := ca.Server(t, "central"), ca.Client(t, "EGW-RIG")
			cert, err := tls.LoadX509KeyPair(srv.CertFile, srv.KeyFile)
			if err != nil {
				t.Fatal(err)
			}
			pool := x509.NewCertPool()
			pool.AddCert(ca.Cert)
			acl, err := localbroker.ParseACL("acl", []byte(tc.acl))
			if err != nil {
				t.Fatal(err)
			}
			central, err := localbroker.New(&localbroker.Options{
				Listeners: []localbroker.Listener{{Address: "127.0.0.1:0", TLS: &localbroker.TLS{Certificate: cert, ClientCAs: pool, RequireCertificate: true, IdentityAsUsername: true}}},
				Security:  localbroker.Security{ACL: acl},
			}, discard())
			if err != nil {
				t.Fatal(err)
			}
			defer central.Close()
			ob, err := outbox.Open(filepath.Join(t.TempDir(), "outbox.db"), &outbox.Options{CommitInterval: 5 * time.Millisecond}, discard())
			if err != nil {
				t.Fatal(err)
			}
			defer ob.Close()
			var logged testlog.Buffer
			b, err := New(Options{Addresses: []string{"ssl://localhost:" + portOf(central.Addrs()[0])}, TLS: clientTLS(t, ca, dev), ClientID: "EGW-RIG", Outbox: ob,
				Routes: rigRoutes, CheckpointTopic: rigCheckpoint, MaxInflight: 8, ReconnectMin: 10 * time.Millisecond, ReconnectMax: 20 * time.Millisecond},
				slog.New(slog.NewTextHandler(&logged, nil)))
			if err != nil {
				t.Fatal(err)
			}
			const n = 200
			var last <-chan error
			for i := range n {
				topic := "sensors/t"
				if i%2 == 1 {
					topic = "meters/m"
				}
				if last, err = b.Forward(topic, []byte(strconv.Itoa(i)), 1, false); err != nil {
					t.Fatal(err)
				}
			}
			<-last
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			done := make(chan struct{})
			go func() { defer close(done); b.Run(ctx) }()
			defer func() { cancel(); <-done }()
			st, err := b.Wait(ctx, func(s Status) bool { return s.Sent == n && s.Queued == 0 })
			if err != nil {
				t.Fatalf("not drained: %+v\n%s", st, logged.String())
			}
			for _, want := range []string{tc.says, "checkpoints are off until the gateway restarts"} {
				if !strings.Contains(logged.String(), want) {
					t.Errorf("the log does not say %q:\n%s", want, logged.String())
				}
			}
			t.Logf("%d messages delivered over %d connections", st.Sent, st.Connections)
		})
	}
}

func portOf(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return port
}
