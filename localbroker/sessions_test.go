package localbroker

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"
	bolt "go.etcd.io/bbolt"

	"github.com/fieldgate/fieldgate/internal/testlog"
)

// sessionDeadline bounds every wait in these tests; nothing waits for it
// when all is well.
const sessionDeadline = 10 * time.Second

// sessionBroker is a broker on a state directory that a test stops and
// starts again, on the same address.
type sessionBroker struct {
	t    *testing.T
	dir  string
	addr string
	opts Options
	log  *testlog.Buffer
	*Broker
}

func newSessionBroker(t *testing.T, o Options) *sessionBroker {
	t.Helper()
	sb := &sessionBroker{t: t, dir: t.TempDir(), addr: "127.0.0.1:0", opts: o, log: &testlog.Buffer{}}
	sb.start()
	t.Cleanup(func() {
		if sb.Broker != nil {
			sb.Broker.Close()
		}
	})
	return sb
}

func (sb *sessionBroker) start() {
	sb.t.Helper()
	o := sb.opts
	o.Listeners = []Listener{{Address: sb.addr}}
	o.Security.AllowAnonymous = true // and the test's ACL, if any
	o.RetainedFile = filepath.Join(sb.dir, "broker.db")
	o.SessionFile = filepath.Join(sb.dir, "sessions.db")
	b, err := New(&o, slog.New(slog.NewTextHandler(sb.log, nil)))
	if err != nil {
		sb.t.Fatal(err)
	}
	sb.Broker, sb.addr = b, b.Addrs()[0]
}

// restart stops the broker, saving its state, and starts it again.
func (sb *sessionBroker) restart() {
	sb.t.Helper()
	if err := sb.Broker.Close(); err != nil {
		sb.t.Fatalf("close: %v", err)
	}
	sb.Broker = nil
	sb.start()
}

// queued waits until the broker holds n messages for client id.
func (sb *sessionBroker) queued(id string, n int) {
	sb.t.Helper()
	deadline := time.Now().Add(sessionDeadline)
	got := -1
	for time.Now().Before(deadline) {
		if cl, ok := sb.srv.Clients.Get(id); ok {
			if got = cl.State.Inflight.Len(); got == n {
				return
			}
		}
		time.Sleep(5 * time.Millisecond) // polling the broker's state, with a deadline
	}
	sb.t.Fatalf("broker holds %d messages for %s, want %d", got, id, n)
}

// gone waits until the broker has seen client id leave, keeping its
// session.
func (sb *sessionBroker) gone(id string) {
	sb.t.Helper()
	deadline := time.Now().Add(sessionDeadline)
	for time.Now().Before(deadline) {
		sb.sessions.mu.Lock()
		_, ok := sb.sessions.away[id]
		sb.sessions.mu.Unlock()
		if ok {
			return
		}
		time.Sleep(5 * time.Millisecond) // polling the broker's state, with a deadline
	}
	sb.t.Fatalf("the broker did not see %s leave", id)
}

// left waits until the broker has seen client id with a clean session
// leave.
func (sb *sessionBroker) left(id string) {
	sb.t.Helper()
	deadline := time.Now().Add(sessionDeadline)
	for time.Now().Before(deadline) {
		if _, ok := sb.srv.Clients.Get(id); !ok {
			return
		}
		time.Sleep(5 * time.Millisecond) // polling the broker's state, with a deadline
	}
	sb.t.Fatalf("the broker did not see %s leave", id)
}

// saved waits until the session store has committed every change.
func (sb *sessionBroker) saved() {
	sb.t.Helper()
	deadline := time.Now().Add(sessionDeadline)
	for time.Now().Before(deadline) {
		s := sb.sessions
		s.mu.Lock()
		done := len(s.pending) == 0 && len(s.drops) == 0 && !s.flushing
		s.mu.Unlock()
		if done {
			return
		}
		time.Sleep(5 * time.Millisecond) // polling the broker's state, with a deadline
	}
	sb.t.Fatal("the session store did not commit its changes")
}

// client311 options: paho.mqtt.golang, no reconnect, messages in order.
func sessionOpts311(addr, id string, clean bool, got chan paho.Message) *paho.ClientOptions {
	return paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetProtocolVersion(4).
		SetCleanSession(clean).SetAutoReconnect(false).SetConnectRetry(false).SetOrderMatters(true).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { got <- m })
}

func sessionConnect311(t *testing.T, o *paho.ClientOptions) (paho.Client, bool) {
	t.Helper()
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(sessionDeadline) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", o.ClientID, tok.Error())
	}
	return c, tok.(*paho.ConnectToken).SessionPresent()
}

func sessionPublish311(t *testing.T, addr string, topic string, payloads ...string) {
	t.Helper()
	c, _ := sessionConnect311(t, paho.NewClientOptions().AddBroker("tcp://"+addr).SetClientID("publisher").SetAutoReconnect(false))
	defer c.Disconnect(0)
	for _, p := range payloads {
		if tok := c.Publish(topic, 1, false, p); !tok.WaitTimeout(sessionDeadline) || tok.Error() != nil {
			t.Fatalf("publish %s: %v", p, tok.Error())
		}
	}
}

func sessionExpect(t *testing.T, got chan paho.Message, want ...string) {
	t.Helper()
	for i, w := range want {
		select {
		case m := <-got:
			if string(m.Payload()) != w {
				t.Fatalf("message %d: got %q, want %q (want %v in order)", i, m.Payload(), w, want)
			}
		case <-time.After(sessionDeadline):
			t.Fatalf("message %d: nothing, want %q", i, w)
		}
	}
}

func sessionPayloads(from, to int) []string {
	var v []string
	for i := from; i <= to; i++ {
		v = append(v, fmt.Sprintf("m%02d", i))
	}
	return v
}

// An MQTT 3.1.1 client with clean session false gets back, after the
// broker restarted, its subscription, the messages published while it was
// away (before and after the restart) in order, and a message it had not
// acknowledged.
func TestSession311SurvivesRestart(t *testing.T) {
	sb := newSessionBroker(t, Options{})
	got := make(chan paho.Message, 100)
	o := sessionOpts311(sb.addr, "plc-1", false, got).SetAutoAckDisabled(true)
	c, _ := sessionConnect311(t, o)
	if tok := c.Subscribe("site/#", 1, nil); !tok.WaitTimeout(sessionDeadline) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	sessionPublish311(t, sb.addr, "site/a", "unacked")
	sessionExpect(t, got, "unacked") // received, never acknowledged
	c.Disconnect(0)
	sb.gone("plc-1")

	sessionPublish311(t, sb.addr, "site/a", sessionPayloads(1, 12)...)
	sb.queued("plc-1", 13)
	sb.restart()
	sessionPublish311(t, sb.addr, "site/b", sessionPayloads(13, 20)...)
	sb.queued("plc-1", 21)

	c, present := sessionConnect311(t, sessionOpts311(sb.addr, "plc-1", false, got))
	defer c.Disconnect(0)
	if !present {
		t.Error("session present: got false, want true")
	}
	sessionExpect(t, got, append([]string{"unacked"}, sessionPayloads(1, 20)...)...)
	// The subscription came back too: a live message arrives.
	sessionPublish311(t, sb.addr, "site/c", "live")
	sessionExpect(t, got, "live")

	// Acknowledged now: a second restart brings nothing back.
	sb.queued("plc-1", 0)
	c.Disconnect(0)
	sb.gone("plc-1")
	sb.restart()
	c, _ = sessionConnect311(t, sessionOpts311(sb.addr, "plc-1", false, got))
	defer c.Disconnect(0)
	sessionPublish311(t, sb.addr, "site/d", "after")
	sessionExpect(t, got, "after")
}

// A clean session leaves nothing behind, and a clean connect ends a
// stored session.
func TestSessionCleanNotKept(t *testing.T) {
	sb := newSessionBroker(t, Options{})
	got := make(chan paho.Message, 100)
	c, _ := sessionConnect311(t, sessionOpts311(sb.addr, "keep", false, got))
	c.Subscribe("site/#", 1, nil).WaitTimeout(sessionDeadline)
	c.Disconnect(0)
	sb.gone("keep")
	c, _ = sessionConnect311(t, sessionOpts311(sb.addr, "clean", true, got))
	c.Subscribe("site/#", 1, nil).WaitTimeout(sessionDeadline)
	c.Disconnect(0)
	sb.restart()
	if _, ok := sb.srv.Clients.Get("clean"); ok {
		t.Error("clean session restored")
	}
	if _, ok := sb.srv.Clients.Get("keep"); !ok {
		t.Fatal("persistent session not restored")
	}
	c, present := sessionConnect311(t, sessionOpts311(sb.addr, "keep", true, got))
	if present {
		t.Error("clean connect: session present")
	}
	c.Disconnect(0)
	sb.restart()
	if _, ok := sb.srv.Clients.Get("keep"); ok {
		t.Error("session ended by a clean connect came back after a restart")
	}
}

func sessionConnect5(t *testing.T, addr, id string, clean bool, expiry uint32, got chan *paho5.Publish) (*paho5.Client, *paho5.Connack) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := paho5.NewClient(paho5.ClientConfig{Conn: conn, OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(r paho5.PublishReceived) (bool, error) { got <- r.Packet; return true, nil },
	}})
	ctx, cancel := context.WithTimeout(context.Background(), sessionDeadline)
	defer cancel()
	ca, err := c.Connect(ctx, &paho5.Connect{ClientID: id, KeepAlive: 30, CleanStart: clean,
		Properties: &paho5.ConnectProperties{SessionExpiryInterval: &expiry}})
	if err != nil {
		t.Fatalf("connect %s: %v", id, err)
	}
	return c, ca
}

func sessionExpect5(t *testing.T, got chan *paho5.Publish, want ...string) {
	t.Helper()
	for i, w := range want {
		select {
		case p := <-got:
			if string(p.Payload) != w {
				t.Fatalf("message %d: got %q, want %q (want %v in order)", i, p.Payload, w, want)
			}
		case <-time.After(sessionDeadline):
			t.Fatalf("message %d: nothing, want %q", i, w)
		}
	}
}

// An MQTT 5 client with a session expiry gets its session back after a
// restart; one whose expiry passed while the broker was stopped does not.
func TestSession5SurvivesRestart(t *testing.T) {
	var clock struct {
		sync.Mutex
		skew time.Duration
	}
	sb := newSessionBroker(t, Options{now: func() time.Time {
		clock.Lock()
		defer clock.Unlock()
		return time.Now().Add(clock.skew)
	}})
	got := make(chan *paho5.Publish, 100)
	for _, c := range []struct {
		id     string
		expiry uint32
	}{{"hmi-1", 3600}, {"hmi-short", 60}} {
		cl, _ := sessionConnect5(t, sb.addr, c.id, true, c.expiry, got)
		ctx, cancel := context.WithTimeout(context.Background(), sessionDeadline)
		if _, err := cl.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "cmd/" + c.id + "/#", QoS: 2}}}); err != nil {
			t.Fatalf("subscribe: %v", err)
		}
		cancel()
		cl.Disconnect(&paho5.Disconnect{})
		sb.gone(c.id)
	}
	for _, id := range []string{"hmi-1", "hmi-short"} {
		sessionPublish311(t, sb.addr, "cmd/"+id+"/x", sessionPayloads(1, 5)...)
		sb.queued(id, 5)
	}
	clock.Lock()
	clock.skew = 10 * time.Minute // the broker is stopped for ten minutes
	clock.Unlock()
	sb.restart()
	sessionPublish311(t, sb.addr, "cmd/hmi-1/y", sessionPayloads(6, 8)...)
	sb.queued("hmi-1", 8)

	cl, ca := sessionConnect5(t, sb.addr, "hmi-1", false, 3600, got)
	defer cl.Disconnect(&paho5.Disconnect{})
	if !ca.SessionPresent {
		t.Error("hmi-1: session present: got false, want true")
	}
	sessionExpect5(t, got, sessionPayloads(1, 8)...)

	short, ca := sessionConnect5(t, sb.addr, "hmi-short", false, 60, got)
	defer short.Disconnect(&paho5.Disconnect{})
	if ca.SessionPresent {
		t.Error("hmi-short: session present after its 60 s expiry passed")
	}
	sessionPublish311(t, sb.addr, "cmd/hmi-short/z", "not subscribed")
	sessionPublish311(t, sb.addr, "cmd/hmi-1/z", "sentinel")
	sessionExpect5(t, got, "sentinel")
}

// persistent_client_expiration ends 3.1.1 sessions whose client stays
// away, counted from when it went away, across a restart and while the
// broker runs.
func TestSessionPersistentClientExpiration(t *testing.T) {
	var clock struct {
		sync.Mutex
		skew time.Duration
	}
	now := func() time.Time {
		clock.Lock()
		defer clock.Unlock()
		return time.Now().Add(clock.skew)
	}
	sb := newSessionBroker(t, Options{PersistentClientExpiration: time.Hour, now: now})
	got := make(chan paho.Message, 10)
	for _, id := range []string{"old", "young"} {
		c, _ := sessionConnect311(t, sessionOpts311(sb.addr, id, false, got))
		c.Subscribe("site/#", 1, nil).WaitTimeout(sessionDeadline)
		c.Disconnect(0)
		sb.gone(id)
		if id == "old" {
			clock.Lock()
			clock.skew = 40 * time.Minute
			clock.Unlock()
		}
	}
	sb.restart()
	for _, id := range []string{"old", "young"} {
		if _, ok := sb.srv.Clients.Get(id); !ok {
			t.Fatalf("%s: not restored 40 minutes after it left, with a 1 h expiration", id)
		}
	}
	sb.sessions.expireAway(now().Add(30 * time.Minute)) // "old" left 70 minutes before
	if _, ok := sb.srv.Clients.Get("old"); ok {
		t.Error("old: still there 70 minutes after it left")
	}
	if _, ok := sb.srv.Clients.Get("young"); !ok {
		t.Error("young: expired 30 minutes after it left")
	}
	clock.Lock()
	clock.skew += 2 * time.Hour
	clock.Unlock()
	sb.restart()
	for _, id := range []string{"old", "young"} {
		if _, ok := sb.srv.Clients.Get(id); ok {
			t.Errorf("%s: restored 2 h after it left, with a 1 h expiration", id)
		}
	}

	// Without the option (Mosquitto's default) they are kept.
	sb2 := newSessionBroker(t, Options{now: now})
	c, _ := sessionConnect311(t, sessionOpts311(sb2.addr, "forever", false, got))
	c.Disconnect(0)
	sb2.gone("forever")
	clock.Lock()
	clock.skew += 24 * 365 * time.Hour
	clock.Unlock()
	sb2.restart()
	if _, ok := sb2.srv.Clients.Get("forever"); !ok {
		t.Error("without persistent_client_expiration, a session expired")
	}
}

// A client's stored queue holds at most max_queued_messages: the oldest
// are kept, here and when a restart lowers the limit.
func TestSessionQueueBounded(t *testing.T) {
	sb := newSessionBroker(t, Options{Limits: Limits{MaxQueued: 6}})
	got := make(chan paho.Message, 100)
	c, _ := sessionConnect311(t, sessionOpts311(sb.addr, "slow", false, got))
	c.Subscribe("site/#", 1, nil).WaitTimeout(sessionDeadline)
	c.Disconnect(0)
	sb.gone("slow")
	sessionPublish311(t, sb.addr, "site/a", sessionPayloads(1, 10)...)
	sb.queued("slow", 6)
	sb.opts.Limits.MaxQueued = 4
	sb.restart()
	if !strings.Contains(sb.log.String(), "dropped_over_max_queued=2") {
		t.Errorf("log does not say 2 messages were over the new bound:\n%s", sb.log.String())
	}
	c, _ = sessionConnect311(t, sessionOpts311(sb.addr, "slow", false, got))
	defer c.Disconnect(0)
	sessionExpect(t, got, "m01", "m02", "m03", "m04")
	// Until the client has acknowledged them, those four are all the
	// queue holds for it, and a fifth would be dropped.
	sb.queued("slow", 0)
	sessionPublish311(t, sb.addr, "site/a", "live")
	sessionExpect(t, got, "live")
}

// A sessions file that is not a bbolt file is moved aside and reported;
// the broker runs with a new one.
func TestSessionCorruptFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "sessions.db")
	if err := os.WriteFile(file, bytes.Repeat([]byte("not a database "), 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	log := &testlog.Buffer{}
	b, err := New(&Options{Listeners: []Listener{{Address: "127.0.0.1:0"}}, Security: Security{AllowAnonymous: true}, SessionFile: file},
		slog.New(slog.NewTextHandler(log, nil)))
	if err != nil {
		t.Fatalf("corrupt sessions file: %v", err)
	}
	defer b.Close()
	aside, _ := filepath.Glob(file + ".corrupt-*")
	if len(aside) != 1 {
		t.Errorf("moved aside: %v, want one sessions.db.corrupt-*", aside)
	}
	if !strings.Contains(log.String(), "level=ERROR") || !strings.Contains(log.String(), "session store is corrupt") {
		t.Errorf("not reported:\n%s", log.String())
	}
	got := make(chan paho.Message, 10)
	c, _ := sessionConnect311(t, sessionOpts311(b.Addrs()[0], "dev", false, got))
	defer c.Disconnect(0)
	c.Subscribe("t", 1, nil).WaitTimeout(sessionDeadline)
	sessionPublish311(t, b.Addrs()[0], "t", "works")
	sessionExpect(t, got, "works")
	if st, err := os.Stat(file); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("new sessions file: %v, mode %v, want 0600", err, st.Mode().Perm())
	}
}

// A device whose link died usually reconnects before the broker has
// noticed: its old connection is still open when the new one takes the
// session over. The messages in flight on the old connection come back in
// the order they were queued, though queued in the same second, and so
// they do again after a restart.
func TestSessionTakeoverKeepsOrder(t *testing.T) {
	sb := newSessionBroker(t, Options{})
	stale := make(chan paho.Message, 100)
	a, _ := sessionConnect311(t, sessionOpts311(sb.addr, "dev", false, stale).SetAutoAckDisabled(true))
	defer a.Disconnect(0)
	if tok := a.Subscribe("site/#", 1, nil); !tok.WaitTimeout(sessionDeadline) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	want := sessionPayloads(1, 20)
	sessionPublish311(t, sb.addr, "site/a", want...)
	sessionExpect(t, stale, want...) // received on the old link, never acknowledged
	sb.queued("dev", 20)

	got := make(chan paho.Message, 100)
	b, present := sessionConnect311(t, sessionOpts311(sb.addr, "dev", false, got).SetAutoAckDisabled(true))
	defer b.Disconnect(0)
	if !present {
		t.Error("session present: got false, want true")
	}
	sessionExpect(t, got, want...)

	sb.restart()
	c, _ := sessionConnect311(t, sessionOpts311(sb.addr, "dev", false, got))
	defer c.Disconnect(0)
	sessionExpect(t, got, want...)
}

// A commit that fails (a full or failing card) loses nothing: the changes
// are tried again, and once the card takes them a restart finds a session
// ended during the failure still ended and messages queued during it
// still queued. The failure is logged once, and its end.
func TestSessionFailedCommitRetried(t *testing.T) {
	sb := newSessionBroker(t, Options{})
	got := make(chan paho.Message, 100)
	for _, c := range []struct{ id, filter string }{{"ended", "other/#"}, {"dev", "site/#"}} {
		cl, _ := sessionConnect311(t, sessionOpts311(sb.addr, c.id, false, got))
		cl.Subscribe(c.filter, 1, nil).WaitTimeout(sessionDeadline)
		cl.Disconnect(0)
		sb.gone(c.id)
	}
	sb.saved()

	// Every commit fails; tried tells when one held all the changes below.
	tried := make(chan struct{})
	var once sync.Once
	sb.sessions.mu.Lock()
	sb.sessions.failCommit = func(tx *bolt.Tx) error {
		n := 0
		tx.Bucket(sessionInflight).ForEach(func(k, _ []byte) error {
			if bytes.HasPrefix(k, clientPrefix("dev")) {
				n++
			}
			return nil
		})
		if n == 3 && tx.Bucket(sessionClients).Get([]byte("ended")) == nil {
			once.Do(func() { close(tried) })
		}
		return syscall.ENOSPC
	}
	sb.sessions.mu.Unlock()
	cl, _ := sessionConnect311(t, sessionOpts311(sb.addr, "ended", true, got))
	cl.Disconnect(0)
	sessionPublish311(t, sb.addr, "site/a", sessionPayloads(1, 3)...)
	sb.queued("dev", 3)
	select {
	case <-tried:
	case <-time.After(sessionDeadline):
		t.Fatal("no commit tried with the changes")
	}

	sb.sessions.mu.Lock()
	sb.sessions.failCommit = nil
	sb.sessions.mu.Unlock()
	sb.saved()
	log := sb.log.String()
	if n := strings.Count(log, "persistent sessions not saved"); n != 1 {
		t.Errorf("failed commits logged %d times, want once:\n%s", n, log)
	}
	if !strings.Contains(log, "persistent sessions saved again") {
		t.Errorf("the end of the failure not logged:\n%s", log)
	}

	sb.restart()
	if _, ok := sb.srv.Clients.Get("ended"); ok {
		t.Error("a session ended during the failure came back after a restart")
	}
	c, present := sessionConnect311(t, sessionOpts311(sb.addr, "dev", false, got))
	defer c.Disconnect(0)
	if !present {
		t.Error("session present: got false, want true")
	}
	sessionExpect(t, got, sessionPayloads(1, 3)...)
}

// Clean sessions coming and going, and QoS 1 messages acknowledged within
// the second, leave the sessions file alone: no commit (an SD card's
// wear).
func TestSessionNoCommitWithoutChange(t *testing.T) {
	sb := newSessionBroker(t, Options{})
	commits := func() int {
		sb.sessions.mu.Lock()
		defer sb.sessions.mu.Unlock()
		return sb.sessions.commits
	}
	sb.sessions.mu.Lock()
	sb.sessions.flushEvery = time.Hour // the test flushes, once all is acknowledged
	sb.sessions.mu.Unlock()
	got := make(chan paho.Message, 100)
	live, _ := sessionConnect311(t, sessionOpts311(sb.addr, "live", false, got))
	defer live.Disconnect(0)
	live.Subscribe("site/#", 1, nil).WaitTimeout(sessionDeadline)
	before := commits()
	sb.sessions.flush()
	if commits() != before+1 {
		t.Fatal("a persistent session's subscription not committed")
	}
	before++

	got5 := make(chan *paho5.Publish, 100)
	for i := range 5 {
		c, _ := sessionConnect311(t, sessionOpts311(sb.addr, fmt.Sprint("clean-", i), true, got))
		c.Subscribe("other/#", 1, nil).WaitTimeout(sessionDeadline)
		c.Disconnect(0)
		c5, _ := sessionConnect5(t, sb.addr, fmt.Sprint("clean5-", i), true, 0, got5)
		c5.Disconnect(&paho5.Disconnect{})
	}
	sessionPublish311(t, sb.addr, "site/a", sessionPayloads(1, 20)...) // by a clean client
	sessionExpect(t, got, sessionPayloads(1, 20)...)
	sb.queued("live", 0)
	for i := range 5 {
		for _, id := range []string{fmt.Sprint("clean-", i), fmt.Sprint("clean5-", i), "publisher"} {
			sb.left(id)
		}
	}
	sb.sessions.flush()
	if n := commits() - before; n != 0 {
		t.Errorf("commits: got %d, want 0", n)
	}
}

// A session that ends while its client is away, by persistent_client_expiration,
// leaves nothing of the client in the store's memory.
func TestSessionExpiryForgetsClient(t *testing.T) {
	sb := newSessionBroker(t, Options{PersistentClientExpiration: time.Hour})
	for _, id := range []string{"a", "b", "c"} {
		c, _ := sessionConnect311(t, sessionOpts311(sb.addr, id, false, nil))
		c.Disconnect(0)
		sb.gone(id)
	}
	sb.sessions.expireAway(time.Now().Add(2 * time.Hour))
	n := 0
	sb.sessions.persists.Range(func(any, any) bool { n++; return true })
	if n != 0 {
		t.Errorf("%d clients still held after their sessions ended", n)
	}
}
