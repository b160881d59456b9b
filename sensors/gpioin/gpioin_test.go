package gpioin

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpiotest"

	"github.com/fieldgate/fieldgate/sensors"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// clock moves only when a test advances it.
type clock struct {
	mu     sync.Mutex
	now    time.Time
	timers []timer
}

type timer struct {
	at time.Time
	c  chan time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
	} else {
		c.timers = append(c.timers, timer{c.now.Add(d), ch})
	}
	return ch
}

// Advance moves the clock and fires the timers that are due.
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, t := range c.timers {
		if t.at.After(c.now) {
			kept = append(kept, t)
		} else {
			t.c <- t.at
		}
	}
	c.timers = kept
}

// rig is a gpiotest pin, a clock, and what the watcher reports it did.
type rig struct {
	t      *testing.T
	pin    *gpiotest.Pin
	clk    *clock
	events chan string
}

func newRig(t *testing.T) *rig {
	return &rig{t: t, pin: &gpiotest.Pin{N: "GPIO17", Num: 17, EdgesChan: make(chan gpio.Level)},
		clk: &clock{now: t0}, events: make(chan string, 100)}
}

func (r *rig) opts(o Opts) *Opts {
	o.Now, o.After = r.clk.Now, r.clk.After
	return &o
}

// follow makes w report to r; Halt is left to the test's cleanup.
func (r *rig) follow(w *watcher, halt func() error) {
	w.idle = 20 * time.Millisecond // on gpiotest, how long Halt may wait
	w.trace = func(event string, _ time.Time) { r.events <- event }
	r.t.Cleanup(func() {
		if err := halt(); err != nil {
			r.t.Error(err)
		}
	})
}

// edge makes the line go to l and waits until the watcher has handled it.
func (r *rig) edge(l gpio.Level) {
	r.t.Helper()
	select {
	case r.pin.EdgesChan <- l:
	case <-time.After(5 * time.Second):
		r.t.Fatal("the watcher did not wait for an edge")
	}
	r.waitFor("edge")
}

// waitFor waits until the watcher reports event, skipping others.
func (r *rig) waitFor(event string) {
	r.t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case e := <-r.events:
			if e == event {
				return
			}
		case <-deadline:
			r.t.Fatalf("no %s from the watcher", event)
		}
	}
}

func sense(t *testing.T, s sensors.Sensor) []sensors.Measurement {
	t.Helper()
	ms, err := s.Sense(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

func newInput(t *testing.T, r *rig, o Opts) *Input {
	t.Helper()
	in, err := NewInput(r.pin, "door", true, r.opts(o))
	if err != nil {
		t.Fatal(err)
	}
	r.follow(in.w, in.Halt)
	return in
}

func changed(in *Input) bool {
	select {
	case <-in.Changed():
		return true
	default:
		return false
	}
}

func checkStates(t *testing.T, got []sensors.Measurement, want ...sensors.Measurement) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range got {
		if got[i].Quantity != want[i].Quantity || got[i].Value != want[i].Value || !got[i].At.Equal(want[i].At) || got[i].Unit != want[i].Unit {
			t.Errorf("measurement %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestInputDebounce(t *testing.T) {
	r := newRig(t)
	in := newInput(t, r, Opts{Debounce: 50 * time.Millisecond})
	// Pulled up, the open contact reads high: 1.
	checkStates(t, sense(t, in), sensors.Measurement{Quantity: "door", Value: 1})
	if r.pin.P != gpio.PullUp {
		t.Errorf("pull %s, want PullUp", r.pin.P)
	}
	// The contact closes, bouncing for 20 ms.
	r.edge(gpio.Low)
	r.clk.Advance(10 * time.Millisecond)
	r.edge(gpio.High)
	r.clk.Advance(10 * time.Millisecond)
	r.edge(gpio.Low)
	r.clk.Advance(49 * time.Millisecond) // 49 ms after the last edge: not settled
	if changed(in) {
		t.Fatal("a change was announced before the line settled")
	}
	r.clk.Advance(time.Millisecond)
	r.waitFor("settled")
	if !changed(in) {
		t.Fatal("the change was not announced")
	}
	// Stamped with the edge that ended it.
	checkStates(t, sense(t, in), sensors.Measurement{Quantity: "door", Value: 0, At: t0.Add(20 * time.Millisecond)})
	// Read again: the state as it is, stamped by the loop.
	checkStates(t, sense(t, in), sensors.Measurement{Quantity: "door", Value: 0})
	if changed(in) {
		t.Error("Changed delivers with nothing new")
	}
}

func TestInputGlitchIsNoChange(t *testing.T) {
	r := newRig(t)
	in := newInput(t, r, Opts{Debounce: 50 * time.Millisecond})
	sense(t, in)
	r.edge(gpio.Low)
	r.clk.Advance(5 * time.Millisecond)
	r.edge(gpio.High)
	r.clk.Advance(50 * time.Millisecond)
	r.waitFor("settled")
	if changed(in) {
		t.Error("a 5 ms glitch was announced as a change")
	}
	checkStates(t, sense(t, in), sensors.Measurement{Quantity: "door", Value: 1})
}

func TestInputKeepsEveryChange(t *testing.T) {
	r := newRig(t)
	in := newInput(t, r, Opts{Debounce: 50 * time.Millisecond, Invert: true})
	checkStates(t, sense(t, in), sensors.Measurement{Quantity: "door", Value: 0}) // inverted: high is 0
	r.edge(gpio.Low)
	r.clk.Advance(time.Second)
	r.waitFor("settled")
	r.edge(gpio.High)
	r.clk.Advance(time.Second)
	r.waitFor("settled")
	// Both changes, in order, though the loop read only after the second.
	checkStates(t, sense(t, in),
		sensors.Measurement{Quantity: "door", Value: 1, At: t0},
		sensors.Measurement{Quantity: "door", Value: 0, At: t0.Add(time.Second)})
}

func TestInputWithoutDebounce(t *testing.T) {
	r := newRig(t)
	in := newInput(t, r, Opts{Pull: gpio.PullDown})
	checkStates(t, sense(t, in), sensors.Measurement{Quantity: "door", Value: 0})
	if r.pin.P != gpio.PullDown {
		t.Errorf("pull %s, want PullDown", r.pin.P)
	}
	r.clk.Advance(time.Second)
	r.edge(gpio.High)
	if !changed(in) {
		t.Fatal("the change was not announced at once")
	}
	checkStates(t, sense(t, in), sensors.Measurement{Quantity: "door", Value: 1, At: t0.Add(time.Second)})
}

func TestInputPollOnly(t *testing.T) {
	pin := &gpiotest.Pin{N: "GPIO22", Num: 22} // no EdgesChan: In with an edge would fail
	in, err := NewInput(pin, "", false, &Opts{Pull: gpio.Float})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Halt()
	pin.Out(gpio.High)
	checkStates(t, sense(t, in), sensors.Measurement{Quantity: "state", Value: 1})
	pin.Out(gpio.Low)
	checkStates(t, sense(t, in), sensors.Measurement{Quantity: "state", Value: 0})
}

func TestHalt(t *testing.T) {
	r := newRig(t)
	in, err := NewInput(r.pin, "", true, r.opts(Opts{}))
	if err != nil {
		t.Fatal(err)
	}
	in.w.idle = 20 * time.Millisecond
	sense(t, in)
	done := make(chan error)
	go func() { done <- in.Halt() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Halt did not return")
	}
	if _, err := in.Sense(context.Background()); err == nil || !strings.Contains(err.Error(), "halted") {
		t.Errorf("Sense after Halt: got %v, want an error", err)
	}
	if _, err := NewInput(nil, "", true, nil); err == nil {
		t.Error("a nil pin was accepted")
	}
}

func newCounter(t *testing.T, r *rig, e Edge, o Opts) *Counter {
	t.Helper()
	c, err := NewCounter(r.pin, e, r.opts(o))
	if err != nil {
		t.Fatal(err)
	}
	r.follow(c.w, c.Halt)
	return c
}

func TestCounterCountsEdges(t *testing.T) {
	r := newRig(t)
	c := newCounter(t, r, Falling, Opts{})
	if c.w.kernel != gpio.FallingEdge {
		t.Errorf("the pin reports %s, want FallingEdge", c.w.kernel)
	}
	// The first read has no rate: there is no interval yet.
	checkStates(t, sense(t, c), sensors.Measurement{Quantity: "count", Unit: "count", Value: 0})
	for range 5 {
		r.edge(gpio.Low) // the kernel reports falling edges only
	}
	r.clk.Advance(10 * time.Second)
	checkStates(t, sense(t, c),
		sensors.Measurement{Quantity: "count", Unit: "count", Value: 5},
		sensors.Measurement{Quantity: "rate", Unit: "1/s", Value: 0.5})
	for range 3 {
		r.edge(gpio.Low)
	}
	r.clk.Advance(2 * time.Second)
	checkStates(t, sense(t, c),
		sensors.Measurement{Quantity: "count", Unit: "count", Value: 8},
		sensors.Measurement{Quantity: "rate", Unit: "1/s", Value: 1.5})
	if c.Count() != 8 {
		t.Errorf("Count() = %d, want 8", c.Count())
	}
}

func TestCounterKernelEdges(t *testing.T) {
	for _, tc := range []struct {
		e    Edge
		o    Opts
		want gpio.Edge
	}{
		{Falling, Opts{}, gpio.FallingEdge},
		{Rising, Opts{}, gpio.RisingEdge},
		{Both, Opts{}, gpio.BothEdges},
		{Falling, Opts{Invert: true}, gpio.RisingEdge},
		{Rising, Opts{Invert: true}, gpio.FallingEdge},
		{Both, Opts{Invert: true}, gpio.BothEdges},
		{Falling, Opts{Debounce: time.Millisecond}, gpio.BothEdges}, // debouncing follows the level
	} {
		c, err := NewCounter(&gpiotest.Pin{}, tc.e, &tc.o)
		if err != nil {
			t.Fatal(err)
		}
		if c.w.kernel != tc.want {
			t.Errorf("edge %d with %+v: the pin reports %s, want %s", tc.e, tc.o, c.w.kernel, tc.want)
		}
	}
}

// A reed switch bounces when it closes and when it opens; debounced, one
// press is one pulse, counted when it begins (falling) or ends (rising).
func TestCounterDebounce(t *testing.T) {
	for _, tc := range []struct {
		e                    Edge
		afterPress, afterAll float64
	}{{Falling, 1, 1}, {Rising, 0, 1}, {Both, 1, 2}} {
		r := newRig(t)
		c := newCounter(t, r, tc.e, Opts{Debounce: 20 * time.Millisecond})
		sense(t, c)
		bounce := func(final gpio.Level) {
			r.edge(final)
			r.clk.Advance(time.Millisecond)
			r.edge(!final)
			r.clk.Advance(time.Millisecond)
			r.edge(final)
			r.clk.Advance(20 * time.Millisecond)
			r.waitFor("settled")
		}
		bounce(gpio.Low)
		if got := c.Count(); float64(got) != tc.afterPress {
			t.Errorf("edge %d: %d after the press, want %v", tc.e, got, tc.afterPress)
		}
		r.clk.Advance(100 * time.Millisecond)
		bounce(gpio.High)
		if got := c.Count(); float64(got) != tc.afterAll {
			t.Errorf("edge %d: %d after the release, want %v", tc.e, got, tc.afterAll)
		}
	}
}

func TestRegistered(t *testing.T) {
	r := newRig(t)
	d := 10 * time.Millisecond
	s, err := sensors.Open("gpio", sensors.Config{Pin: r.pin, Now: r.clk.Now, Options: sensors.Options{Pull: "down", Debounce: &d, Quantity: "alarm"}})
	if err != nil {
		t.Fatal(err)
	}
	in := s.(*Input)
	if _, ok := s.(sensors.Notifier); !ok {
		t.Error("the gpio driver is not a sensors.Notifier")
	}
	if in.w.o.Debounce != d || in.w.pull != gpio.PullDown || in.quantity != "alarm" {
		t.Errorf("options not applied: %+v", in.w.o)
	}
	in.Halt()
	s, err = sensors.Open("pulse", sensors.Config{Pin: r.pin, Options: sensors.Options{Edge: "rising", Invert: true}})
	if err != nil {
		t.Fatal(err)
	}
	if c := s.(*Counter); c.edge != Rising || c.w.kernel != gpio.FallingEdge || c.w.o.Debounce != 0 {
		t.Errorf("options not applied: edge %d, kernel %s, debounce %s", c.edge, c.w.kernel, c.w.o.Debounce)
	}
	if !sensors.UsesGPIO("gpio") || !sensors.UsesGPIO("pulse") {
		t.Error("gpio and pulse are not GPIO drivers")
	}
}

func TestCheckOptions(t *testing.T) {
	neg, long, zero := -time.Millisecond, time.Minute, time.Duration(0)
	for _, tc := range []struct {
		driver string
		o      sensors.Options
		want   []string
	}{
		{"gpio", sensors.Options{}, nil},
		{"gpio", sensors.Options{Pull: "none", Edge: "both", Debounce: &zero, Invert: true}, nil},
		{"gpio", sensors.Options{Pull: "sideways", Edge: "rising", Debounce: &neg}, []string{
			`pull: want up, down or none, got "sideways"`, "debounce: want 0…10s, got -1ms", `edge: want both (publish each change) or none (poll only), got "rising"`}},
		{"gpio", sensors.Options{Edge: "none", Debounce: &zero}, []string{`debounce: has no effect with edge = "none"`}},
		{"pulse", sensors.Options{Edge: "rising", Debounce: &long}, []string{"debounce: want 0…10s, got 1m0s"}},
		{"pulse", sensors.Options{Edge: "none"}, []string{`edge: want falling, rising or both, got "none"`}},
	} {
		errs := sensors.CheckOptions(tc.driver, tc.o)
		if len(errs) != len(tc.want) {
			t.Errorf("%s %+v: got %v, want %q", tc.driver, tc.o, errs, tc.want)
			continue
		}
		for i, e := range errs {
			if e.Error() != tc.want[i] {
				t.Errorf("%s: got %q, want %q", tc.driver, e, tc.want[i])
			}
		}
	}
}

// The declared ranges: a state is 0 or 1, a count and a rate are never
// negative. The loop keeps what the drivers read and would drop, say, a
// state of 2 or a negative rate.
func TestRanges(t *testing.T) {
	pin := &gpiotest.Pin{N: "GPIO22", Num: 22}
	in, err := NewInput(pin, "alarm", false, &Opts{Pull: gpio.Float})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Halt()
	var s sensors.Sensor = in
	r, ok := s.(sensors.Ranger)
	if !ok {
		t.Fatal("an Input declares no ranges")
	}
	if got := r.Ranges(); len(got) != 1 || got["alarm"] != (sensors.Range{Min: 0, Max: 1}) {
		t.Errorf("input ranges %+v, want alarm: 0…1", got)
	}
	for _, l := range []gpio.Level{gpio.High, gpio.Low} {
		pin.Out(l)
		if kept, dropped := sensors.Check(in, sense(t, in)); len(kept) != 1 || len(dropped) != 0 {
			t.Errorf("level %s: kept %+v, dropped %+v; want the state kept", l, kept, dropped)
		}
	}
	if _, dropped := sensors.Check(in, []sensors.Measurement{{Quantity: "alarm", Value: 2}}); len(dropped) != 1 || dropped[0].Reason != sensors.DropRange {
		t.Errorf("a state of 2: dropped %+v, want it dropped as out of range", dropped)
	}

	rg := newRig(t)
	c := newCounter(t, rg, Falling, Opts{})
	for q, want := range map[string]float64{"count": 0, "rate": 0} {
		got, ok := c.Ranges()[q]
		if !ok || got.Min != want || !got.Contains(1e18) || got.Contains(-1e-9) {
			t.Errorf("counter range of %s: got %+v (declared %t), want %v and up", q, got, ok, want)
		}
	}
	sense(t, c)
	rg.edge(gpio.Low)
	rg.clk.Advance(time.Second)
	if kept, dropped := sensors.Check(c, sense(t, c)); len(kept) != 2 || len(dropped) != 0 {
		t.Errorf("kept %+v, dropped %+v; want the count and the rate kept", kept, dropped)
	}
	if _, dropped := sensors.Check(c, []sensors.Measurement{{Quantity: "rate", Unit: "1/s", Value: -0.5}}); len(dropped) != 1 {
		t.Errorf("a negative rate: dropped %+v, want it dropped", dropped)
	}
}
