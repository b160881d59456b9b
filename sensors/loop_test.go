package sensors

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a Clock that moves only when a test advances it. Every
// timer the loop makes is handed to the test on made, in order, so that
// a test knows where the loop is: the loop makes its next sleep timer only
// once it has published what the read before gave.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
	made   chan *fakeTimer
}

type fakeTimer struct {
	c  *fakeClock
	d  time.Duration
	at time.Time
	ch chan time.Time
}

func newFakeClock(at time.Time) *fakeClock {
	return &fakeClock{now: at, made: make(chan *fakeTimer, 1000)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	t := &fakeTimer{c: c, d: d, at: c.now.Add(d), ch: make(chan time.Time, 1)}
	if d <= 0 {
		t.ch <- c.now
	} else {
		c.timers = append(c.timers, t)
	}
	c.mu.Unlock()
	c.made <- t
	return t
}

// Advance moves the clock by d and fires the timers due by then.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, t := range c.timers {
		if t.at.After(c.now) {
			kept = append(kept, t)
			continue
		}
		t.ch <- c.now
	}
	c.timers = kept
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	for i, x := range t.c.timers {
		if x == t {
			t.c.timers = append(t.c.timers[:i], t.c.timers[i+1:]...)
			return true
		}
	}
	return false
}

// next returns the next timer the loop makes.
func (c *fakeClock) next(t *testing.T) *fakeTimer {
	t.Helper()
	select {
	case tm := <-c.made:
		return tm
	case <-time.After(10 * time.Second):
		t.Fatal("the loop made no timer within 10s")
		return nil
	}
}

// nextSleep returns the next timer the loop makes that is not a read's
// timeout (tests give reads a timeout no wait has).
func (c *fakeClock) nextSleep(t *testing.T, timeout time.Duration) *fakeTimer {
	t.Helper()
	for {
		if tm := c.next(t); tm.d != timeout {
			return tm
		}
	}
}

// script is a sensor that answers from a list, then repeats its last answer.
type script struct {
	mu     sync.Mutex
	steps  []step
	ranges map[string]Range
	reads  int
	halted bool
}

type step struct {
	ms  []Measurement
	err error
}

func (s *script) Sense(ctx context.Context) ([]Measurement, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reads++
	st := s.steps[0]
	if len(s.steps) > 1 {
		s.steps = s.steps[1:]
	}
	return st.ms, st.err
}

func (s *script) Halt() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.halted = true
	return nil
}

// ranged is a script that declares its chip's ranges.
type ranged struct{ *script }

func (r ranged) Ranges() map[string]Range { return r.ranges }

type published struct {
	topic   string
	payload string
	qos     byte
	retain  bool
}

// list is what goroutines add to and a test takes.
type list[T any] struct {
	mu    sync.Mutex
	items []T
}

func (l *list[T]) add(v T) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.items = append(l.items, v)
}

// take returns what was added since the last take.
func (l *list[T]) take() []T {
	l.mu.Lock()
	defer l.mu.Unlock()
	items := l.items
	l.items = nil
	return items
}

// recorder is a Publisher that keeps what it is given.
type recorder struct{ list[published] }

func (r *recorder) Publish(topic string, payload []byte, qos byte, retain bool) error {
	r.add(published{topic, string(payload), qos, retain})
	return nil
}

// logRecorder is a slog.Handler that keeps "LEVEL message" lines.
type logRecorder struct{ list[string] }

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logRecorder) WithGroup(string) slog.Handler            { return h }
func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	h.add(r.Level.String() + " " + r.Message)
	return nil
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

type harness struct {
	loop    *Loop
	clk     *fakeClock
	pub     *recorder
	logs    *logRecorder
	stop    func()
	timeout time.Duration // of the first entry's reads
	wait    *fakeTimer    // the loop's pending wait, once seen
}

// read checks that the loop waits want, lets the wait pass and returns
// once the read after it is over and published: when the loop has made
// its next wait.
func (h *harness) read(t *testing.T, want time.Duration) {
	t.Helper()
	if h.wait == nil {
		h.wait = h.clk.nextSleep(t, h.timeout)
	}
	if h.wait.d != want {
		t.Fatalf("wait: got %v, want %v", h.wait.d, want)
	}
	h.clk.Advance(want)
	h.wait = h.clk.nextSleep(t, h.timeout)
}

// start runs a loop on a fake clock; its stop ends it and fails the test
// if Run does not return.
func start(t *testing.T, o LoopOptions) *harness {
	t.Helper()
	h := &harness{clk: newFakeClock(t0), pub: &recorder{}, logs: &logRecorder{}, timeout: o.Entries[0].Timeout}
	if c, ok := o.Clock.(*fakeClock); ok {
		h.clk = c
	}
	o.Clock, o.Publisher = h.clk, h.pub
	if o.DeviceID == "" {
		o.DeviceID = "EGW-1"
	}
	h.loop = NewLoop(o, slog.New(h.logs))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.loop.Run(ctx) }()
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("Run did not return within 10s of its context ending")
			}
		})
	}
	t.Cleanup(h.stop)
	return h
}

func temp(v float64) []Measurement {
	return []Measurement{{Quantity: "temperature", Unit: "Cel", Value: v}}
}

func TestLoopPublishesAndSurvivesFailures(t *testing.T) {
	good := &script{steps: []step{{ms: []Measurement{{Quantity: "temperature", Unit: "Cel", Value: 20}, {Quantity: "humidity", Unit: "%RH", Value: 40}}}}}
	missing := &script{steps: []step{{err: Absent(errors.New("i2c: nack"))}}}
	const timeout = 777 * time.Millisecond
	h := start(t, LoopOptions{Jitter: -1, Entries: []Entry{
		{Name: "good", Sensor: good, Interval: 10 * time.Second, Timeout: timeout, QoS: 1},
		{Name: "missing", Sensor: missing, Interval: 10 * time.Second, Timeout: timeout},
	}})
	// Both start at once (no jitter), then wait: the good one its
	// interval, the missing one its first retry.
	waits := map[time.Duration]int{}
	for range 4 {
		waits[h.clk.nextSleep(t, timeout).d]++
	}
	if want := map[time.Duration]int{0: 2, time.Second: 1, 10 * time.Second: 1}; fmt.Sprint(waits) != fmt.Sprint(want) {
		t.Errorf("waits: got %v, want %v", waits, want)
	}
	got := map[string]published{}
	for _, p := range h.pub.take() {
		got[p.topic] = p
	}
	want := map[string]published{
		"sensors/good/temperature": {"sensors/good/temperature", `[{"bn":"EGW-1/","bt":1772366400,"n":"good/temperature","u":"Cel","v":20}]`, 1, false},
		"sensors/good/humidity":    {"sensors/good/humidity", `[{"bn":"EGW-1/","bt":1772366400,"n":"good/humidity","u":"%RH","v":40}]`, 1, false},
		"sensors/good/status":      {"sensors/good/status", `{"state":"ok","since":"2026-03-01T12:00:00Z"}`, 1, true},
		"sensors/missing/status":   {"sensors/missing/status", `{"state":"absent","error":"i2c: nack","since":"2026-03-01T12:00:00Z"}`, 1, true},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("published\n got %v\nwant %v", got, want)
	}
	st := h.loop.Status()
	if st["good"].State != StateOK || st["missing"].State != StateAbsent || st["missing"].Error != "i2c: nack" {
		t.Errorf("status: got %+v, want good ok, missing absent with its error", st)
	}
	h.stop()
	if !good.halted || !missing.halted {
		t.Error("sensors not halted when the loop stopped")
	}
}

func TestLoopJitterStaysWithinBounds(t *testing.T) {
	const interval, timeout = 10 * time.Second, 777 * time.Millisecond
	r := rand.New(rand.NewPCG(1, 2))
	h := start(t, LoopOptions{Jitter: 0.1, Rand: r.Float64, Entries: []Entry{
		{Name: "s", Sensor: &script{steps: []step{{ms: temp(20)}}}, Interval: interval, Timeout: timeout},
	}})
	first := h.clk.nextSleep(t, timeout)
	if first.d < 0 || first.d > interval/10 {
		t.Errorf("first wait: got %v, want within [0, %v]", first.d, interval/10)
	}
	h.clk.Advance(first.d)
	seen := map[time.Duration]bool{}
	lo, hi := time.Duration(math.MaxInt64), time.Duration(0)
	for range 200 {
		tm := h.clk.nextSleep(t, timeout)
		if tm.d < interval-interval/10 || tm.d > interval+interval/10 {
			t.Fatalf("wait: got %v, want within %v ± 10%%", tm.d, interval)
		}
		seen[tm.d] = true
		lo, hi = min(lo, tm.d), max(hi, tm.d)
		h.clk.Advance(tm.d)
	}
	// Spread over the band, not stuck at one value or one side of it.
	if len(seen) < 150 || lo > interval-interval/20 || hi < interval+interval/20 {
		t.Errorf("waits: %d distinct in [%v, %v], want spread over %v ± 1s", len(seen), lo, hi, interval)
	}
}

func TestLoopBackoffDoublesToItsCapAndResets(t *testing.T) {
	nack := Absent(errors.New("nack"))
	for _, tc := range []struct {
		name     string
		interval time.Duration
		retryMax time.Duration
		want     []time.Duration // the waits before each read of the script
	}{
		{"capped by retry_max", 10 * time.Second, 4 * time.Second, []time.Duration{0, time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second, 10 * time.Second}},
		{"capped by the interval", 3 * time.Second, time.Hour, []time.Duration{0, time.Second, 2 * time.Second, 3 * time.Second, 3 * time.Second, 3 * time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Four failures, a good read, a failure.
			s := &script{steps: []step{{err: nack}, {err: nack}, {err: nack}, {err: nack}, {ms: temp(20)}, {err: nack}}}
			h := start(t, LoopOptions{Jitter: -1, RetryMin: time.Second, RetryMax: tc.retryMax, Entries: []Entry{
				{Name: "s", Sensor: s, Interval: tc.interval, Timeout: 777 * time.Millisecond},
			}})
			for _, w := range tc.want {
				h.read(t, w)
			}
			// The good read reset the backoff: the failure after it waits
			// the first retry again.
			if h.wait.d != time.Second {
				t.Errorf("wait after a failure that follows a good read: got %v, want 1s", h.wait.d)
			}
		})
	}
}

// hang is a sensor whose reads block until released; obedient ones also
// return when their context ends.
type hang struct {
	obedient bool
	release  chan struct{}
	started  chan struct{} // a read began
	mu       sync.Mutex
	reads    int
	canceled int
}

func (s *hang) Sense(ctx context.Context) ([]Measurement, error) {
	s.mu.Lock()
	s.reads++
	s.mu.Unlock()
	s.started <- struct{}{}
	done := ctx.Done()
	if !s.obedient {
		done = nil
	}
	select {
	case <-s.release:
		return temp(21), nil
	case <-done:
		s.mu.Lock()
		s.canceled++
		s.mu.Unlock()
		return nil, ctx.Err()
	}
}

func (s *hang) Halt() error { return nil }

func (s *hang) counts() (reads, canceled int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reads, s.canceled
}

const hangTimeout = 1500 * time.Millisecond

// startHanging starts a loop on s and lets its first read time out.
func startHanging(t *testing.T, s *hang) *harness {
	t.Helper()
	s.started = make(chan struct{}, 100)
	h := start(t, LoopOptions{Jitter: -1, Entries: []Entry{{Name: "s", Sensor: s, Interval: 10 * time.Second, Timeout: hangTimeout}}})
	h.nextTimer(t, 0)
	h.nextTimer(t, hangTimeout) // the read's
	select {
	case <-s.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the first read did not start")
	}
	h.clk.Advance(hangTimeout)
	return h
}

// nextTimer checks that the next timer the loop makes lasts d, and
// returns it.
func (h *harness) nextTimer(t *testing.T, d time.Duration) *fakeTimer {
	t.Helper()
	tm := h.clk.next(t)
	if tm.d != d {
		t.Fatalf("timer: got %v, want %v", tm.d, d)
	}
	return tm
}

func TestLoopTimesOutAHangingRead(t *testing.T) {
	s := &hang{release: make(chan struct{})}
	h := startHanging(t, s)
	h.nextTimer(t, time.Second) // the first retry
	st := h.loop.Status()["s"]
	if st.State != StateFailing || st.Error != "sensors: read timed out after 1.5s" || !st.Since.Equal(t0) {
		t.Errorf("status after the timeout: got %+v, want failing since %v, timed out after 1.5s", st, t0)
	}
	h.clk.Advance(time.Second)
	// That read still hangs: the retry waits a timeout for it, and does
	// not talk to the chip meanwhile.
	h.nextTimer(t, hangTimeout)
	h.clk.Advance(hangTimeout)
	h.nextTimer(t, 2*time.Second) // the second retry
	if reads, _ := s.counts(); reads != 1 {
		t.Errorf("reads while the first one hangs: got %d, want 1", reads)
	}
	if e := h.loop.Status()["s"].Error; e != "sensors: read timed out: the read before, which timed out, has not returned yet" {
		t.Errorf("error while the read hangs: got %q", e)
	}
	close(s.release) // it returns at last; the next read succeeds
	h.clk.Advance(2 * time.Second)
	h.nextTimer(t, hangTimeout) // waiting for the hung read, which returns
	h.nextTimer(t, hangTimeout) // the new read
	h.nextTimer(t, 10*time.Second)
	if st := h.loop.Status()["s"]; st.State != StateOK {
		t.Errorf("status after the hang ended: got %+v, want ok", st)
	}
	if reads, _ := s.counts(); reads != 2 {
		t.Errorf("reads: got %d, want 2", reads)
	}
}

func TestLoopCancelsATimedOutRead(t *testing.T) {
	s := &hang{obedient: true}
	h := startHanging(t, s)
	// An obedient driver returns when the timeout cancels its context, so
	// the retry waits for nothing and reads again; that read times out
	// too.
	for _, retry := range []time.Duration{time.Second, 2 * time.Second} {
		h.nextTimer(t, retry)
		h.clk.Advance(retry)
		h.nextTimer(t, hangTimeout) // the wait for the canceled read, which is over
		h.nextTimer(t, hangTimeout) // the new read
		h.clk.Advance(hangTimeout)
	}
	h.nextTimer(t, 4*time.Second)
	h.clk.Advance(4 * time.Second)
	h.nextTimer(t, hangTimeout) // the wait for the third read
	h.nextTimer(t, hangTimeout) // the fourth: so the third has returned
	if reads, canceled := s.counts(); reads < 3 || canceled != 3 {
		t.Errorf("got %d reads, %d canceled; want three reads at least, each canceled by its timeout", reads, canceled)
	}
}

// status decodes the payload of a status message.
func status(t *testing.T, p published) Status {
	t.Helper()
	var s Status
	if err := json.Unmarshal([]byte(p.payload), &s); err != nil {
		t.Fatalf("%s: %q: %v", p.topic, p.payload, err)
	}
	return s
}

func TestLoopStateTransitionsPublishOneRetainedStatusEach(t *testing.T) {
	nack := Absent(errors.New("bme280: read chip id at 0x76: sysfs-i2c: remote I/O error"))
	crc := errors.New("sht3x: CRC mismatch")
	s := &script{steps: []step{{ms: temp(20)}, {ms: temp(20)}, {err: nack}, {err: nack}, {err: crc}, {err: crc}, {ms: temp(21)}, {ms: temp(21)}}}
	h := start(t, LoopOptions{Jitter: -1, RetryMin: time.Second, Entries: []Entry{{Name: "room", Sensor: s, Interval: 10 * time.Second, Timeout: 777 * time.Millisecond}}})
	at := t0
	for i, c := range []struct {
		wait  time.Duration // before the read
		state State         // published after it; "" for none
		err   string
	}{
		{0, StateOK, ""},
		{10 * time.Second, "", ""},
		{10 * time.Second, StateAbsent, nack.Error()},
		{time.Second, "", ""},
		{2 * time.Second, StateFailing, crc.Error()},
		{4 * time.Second, "", ""},
		{8 * time.Second, StateOK, ""}, // the backoff went on doubling while it failed
		{10 * time.Second, "", ""},
	} {
		h.read(t, c.wait)
		at = at.Add(c.wait)
		var statuses []published
		for _, p := range h.pub.take() {
			if strings.HasSuffix(p.topic, "/status") {
				statuses = append(statuses, p)
			}
		}
		switch {
		case c.state == "":
			if len(statuses) != 0 {
				t.Errorf("read %d: no change of state, but published %v", i, statuses)
			}
		case len(statuses) != 1:
			t.Errorf("read %d: got %d status messages %v, want one", i, len(statuses), statuses)
		default:
			p := statuses[0]
			if p.topic != "sensors/room/status" || !p.retain || p.qos != 1 {
				t.Errorf("read %d: status on %s qos %d retain %v, want sensors/room/status, qos 1, retained", i, p.topic, p.qos, p.retain)
			}
			if got := status(t, p); got.State != c.state || got.Error != c.err || !got.Since.Equal(at) {
				t.Errorf("read %d: status %+v, want %s since %v, error %q", i, got, c.state, at, c.err)
			}
		}
	}
	want := []string{
		"WARN sensor absent: the chip does not answer",
		"WARN sensor failing",
		"INFO sensor recovered",
	}
	if got := h.logs.take(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("logs:\n got %q\nwant %q", got, want)
	}
	c := h.loop.Counts()["room"]
	if c.Reads != 8 || c.ReadErrors != 4 || c.Published != 4 {
		t.Errorf("counts: got %+v, want 8 reads, 4 errors, 4 published", c)
	}
}

// values returns the values of the SenML packs in msgs published on topic.
func values(t *testing.T, msgs []published, topic string) []float64 {
	t.Helper()
	var vs []float64
	for _, p := range msgs {
		if p.topic != topic {
			continue
		}
		var pack []Record
		if err := json.Unmarshal([]byte(p.payload), &pack); err != nil || len(pack) != 1 {
			t.Fatalf("%s: %q is not a one-record SenML pack (%v)", topic, p.payload, err)
		}
		vs = append(vs, pack[0].Value)
	}
	return vs
}

func TestLoopDeadbandAndMaxSilence(t *testing.T) {
	th := func(temp, rh float64) step {
		return step{ms: []Measurement{{Quantity: "temperature", Unit: "Cel", Value: temp}, {Quantity: "humidity", Unit: "%RH", Value: rh}}}
	}
	s := &script{steps: []step{
		th(20.0, 40), // published: the first value
		th(20.3, 40), // within 0.5 of 20.0
		th(20.5, 41), // 0.5 is not more than 0.5
		th(19.4, 41), // moved 0.6: published
		th(19.4, 41), // 10s of silence
		th(19.4, 41), // 20s
		th(19.4, 41), // 30s: max_silence, published anyway
		{err: errors.New("sht3x: CRC mismatch")},
		th(19.4, 41), // the first value after a failure: published
	}}
	h := start(t, LoopOptions{Jitter: -1, RetryMin: time.Second, Entries: []Entry{{
		Name: "room", Sensor: s, Interval: 10 * time.Second, Timeout: 777 * time.Millisecond,
		Deadband: map[string]float64{"temperature": 0.5}, MaxSilence: 30 * time.Second,
	}}})
	var temps, hums []float64
	for _, w := range []time.Duration{0, 10, 10, 10, 10, 10, 10, 10, 1} {
		h.read(t, w*time.Second)
		got := h.pub.take()
		temps = append(temps, values(t, got, "sensors/room/temperature")...)
		hums = append(hums, values(t, got, "sensors/room/humidity")...)
	}
	if want := []float64{20.0, 19.4, 19.4, 19.4}; fmt.Sprint(temps) != fmt.Sprint(want) {
		t.Errorf("temperatures published: got %v, want %v", temps, want)
	}
	// Humidity has no deadband: every read is published.
	if len(hums) != 8 {
		t.Errorf("humidities published: got %v, want all 8", hums)
	}
	if c := h.loop.Counts()["room"]; c.Suppressed != 4 || c.Published != 12 {
		t.Errorf("counts: got %+v, want 4 suppressed, 12 published", c)
	}
}

func TestLoopDropsAndCountsOutOfRange(t *testing.T) {
	tp := func(temp, pa float64) step {
		return step{ms: []Measurement{{Quantity: "temperature", Unit: "Cel", Value: temp}, {Quantity: "pressure", Unit: "Pa", Value: pa}}}
	}
	s := ranged{&script{
		ranges: map[string]Range{"temperature": {-40, 85}, "pressure": {30000, 110000}},
		steps: []step{
			tp(20, 101325),
			tp(21, 150000),      // pressure dropped, temperature published
			tp(22, 160000),      // again: logged once only
			tp(130, math.NaN()), // nothing left: failing
			tp(-40, 30000),      // the limits are in range
		},
	}}
	h := start(t, LoopOptions{Jitter: -1, RetryMin: time.Second, Entries: []Entry{{Name: "room", Sensor: s, Interval: 10 * time.Second, Timeout: 777 * time.Millisecond}}})
	type want struct {
		temps, pressures []float64
		state            State
	}
	for i, tc := range []struct {
		wait time.Duration
		want want
	}{
		{0, want{[]float64{20}, []float64{101325}, StateOK}},
		{10 * time.Second, want{[]float64{21}, nil, StateOK}},
		{10 * time.Second, want{[]float64{22}, nil, StateOK}},
		{10 * time.Second, want{nil, nil, StateFailing}},
		{time.Second, want{[]float64{-40}, []float64{30000}, StateOK}},
	} {
		h.read(t, tc.wait)
		got := h.pub.take()
		temps := values(t, got, "sensors/room/temperature")
		pressures := values(t, got, "sensors/room/pressure")
		st := h.loop.Status()["room"]
		if fmt.Sprint(temps, pressures, st.State) != fmt.Sprint(tc.want.temps, tc.want.pressures, tc.want.state) {
			t.Errorf("read %d: published temperatures %v, pressures %v, state %s; want %v, %v, %s", i, temps, pressures, st.State, tc.want.temps, tc.want.pressures, tc.want.state)
		}
		if i == 3 && st.Error != "sensors: no value in the chip's range: temperature 130 Cel (range -40…85), pressure NaN Pa" {
			t.Errorf("error with nothing in range: got %q", st.Error)
		}
	}
	c := h.loop.Counts()["room"]
	if c.Dropped[DropRange] != 3 || c.Dropped[DropNotFinite] != 1 || c.ReadErrors != 1 {
		t.Errorf("counts: got %+v, want 3 out of range, 1 not finite, 1 read error", c)
	}
	var dropped, back int
	for _, l := range h.logs.take() {
		switch {
		case strings.Contains(l, "sensor value dropped"):
			dropped++
		case strings.Contains(l, "sensor value back"):
			back++
		}
	}
	// Once as pressure leaves its range, once as temperature does, once
	// as each comes back.
	if dropped != 2 || back != 2 {
		t.Errorf("got %d logs of dropped values and %d of values back in range, want 2 and 2", dropped, back)
	}
}

// slow is a sensor whose read takes a while on the loop's clock, as a
// conversion does.
type slow struct {
	clk  *fakeClock
	took time.Duration
	at   time.Time // a time of acquisition the driver knows, or zero
}

func (s *slow) Sense(context.Context) ([]Measurement, error) {
	s.clk.Advance(s.took)
	return []Measurement{{Quantity: "temperature", Unit: "Cel", Value: 20, At: s.at}}, nil
}

func (s *slow) Halt() error { return nil }

func TestLoopTopicQoSRetainAndTimeOfAcquisition(t *testing.T) {
	clk := newFakeClock(t0)
	room := &slow{clk: clk, took: 700 * time.Millisecond}
	door := &slow{clk: clk, at: t0.Add(-3 * time.Second)}
	h := start(t, LoopOptions{Clock: clk, Jitter: -1, DeviceID: "EGW-7", Entries: []Entry{
		{Name: "room", Sensor: room, Interval: 10 * time.Second, Timeout: 2 * time.Second, Topic: "site/%d/%n/%q", Retain: true},
		{Name: "door", Sensor: door, Interval: 10 * time.Second, Timeout: 2 * time.Second, QoS: 1},
	}})
	for range 2 {
		h.clk.nextSleep(t, 2*time.Second) // the first waits
	}
	for range 2 {
		h.clk.nextSleep(t, 2*time.Second) // the waits after the first reads
	}
	got := map[string]published{}
	for _, p := range h.pub.take() {
		got[p.topic] = p
	}
	// The room's bt is when its read started, not 700ms later when the
	// value was published; the door's is the time its driver gave.
	want := map[string]published{
		"site/EGW-7/room/temperature": {"site/EGW-7/room/temperature", `[{"bn":"EGW-7/","bt":1772366400,"n":"room/temperature","u":"Cel","v":20}]`, 0, true},
		"site/EGW-7/room/status":      {"site/EGW-7/room/status", `{"state":"ok","since":"2026-03-01T12:00:00Z"}`, 1, true},
		"sensors/door/temperature":    {"sensors/door/temperature", `[{"bn":"EGW-7/","bt":1772366397,"n":"door/temperature","u":"Cel","v":20}]`, 1, false},
	}
	delete(got, "sensors/door/status")
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("published\n got %v\nwant %v", got, want)
	}
}

func TestAbsentKeepsTheMessage(t *testing.T) {
	inner := errors.New("bme280: read chip id at 0x76: sysfs-i2c: remote I/O error")
	err := fmt.Errorf("wrapped: %w", Absent(inner))
	if !errors.Is(err, ErrAbsent) || !errors.Is(err, inner) {
		t.Errorf("errors.Is(%v, ErrAbsent), (…, inner): want both true", err)
	}
	if err.Error() != "wrapped: "+inner.Error() {
		t.Errorf("message: got %q", err)
	}
	if Absent(nil) != nil {
		t.Error("Absent(nil) is not nil")
	}
	if errors.Is(errors.New("sht3x: CRC mismatch"), ErrAbsent) {
		t.Error("a plain error is absent")
	}
}

// door is a script that is also a Notifier.
type door struct {
	*script
	changed chan struct{}
}

func (d door) Changed() <-chan struct{} { return d.changed }

func TestLoopReadsANotifierWhenItChanges(t *testing.T) {
	d := door{&script{steps: []step{
		{ms: []Measurement{{Quantity: "open", Unit: "", Value: 0}}},
		{ms: []Measurement{{Quantity: "open", Unit: "", Value: 1, At: t0.Add(3 * time.Second)}}},
	}}, make(chan struct{})}
	h := start(t, LoopOptions{Jitter: -1, Entries: []Entry{{Name: "door", Sensor: d, Interval: time.Minute, Timeout: 777 * time.Millisecond}}})
	h.read(t, 0)
	h.clk.Advance(5 * time.Second)
	d.changed <- struct{}{} // well before the minute is up
	tm := h.clk.nextSleep(t, h.timeout)
	if tm.d != time.Minute {
		t.Errorf("wait after the read on change: got %v, want the interval from that read", tm.d)
	}
	want := []string{
		`[{"bn":"EGW-1/","bt":1772366400,"n":"door/open","v":0}]`,
		`[{"bn":"EGW-1/","bt":1772366403,"n":"door/open","v":1}]`, // the time the driver saw the change
	}
	var got []string
	for _, p := range h.pub.take() {
		if p.topic == "sensors/door/open" {
			got = append(got, p.payload)
		}
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("published\n got %q\nwant %q", got, want)
	}
}
