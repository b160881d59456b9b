package sensors

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// Publisher takes a reading to the local broker.
type Publisher interface {
	Publish(topic string, payload []byte, qos byte, retain bool) error
}

// Entry is one sensor the loop polls.
type Entry struct {
	Name   string
	Sensor Sensor
	// Interval is the time from the start of one read to the start of the
	// next, give or take the loop's jitter.
	Interval time.Duration
	// Timeout bounds one read; 0 means DefaultTimeout, or Interval when
	// that is shorter.
	Timeout time.Duration
	// QoS and Retain of the readings. The status is always published with
	// QoS 1, retained.
	QoS    byte
	Retain bool
	// Topic is the template of the readings' topics (see ExpandTopic); ""
	// means DefaultTopic. The status goes where a quantity named
	// StatusQuantity would.
	Topic string
	// Deadband, by quantity: a value is published only when it has moved
	// by more than this from the value last published. A quantity without
	// a deadband is published on every read.
	Deadband map[string]float64
	// MaxSilence: a value within its deadband is published anyway when
	// its quantity was last published this long ago; 0 means never.
	MaxSilence time.Duration
}

// LoopOptions configure a Loop.
type LoopOptions struct {
	DeviceID  string
	Publisher Publisher
	Entries   []Entry
	// Clock is where timers come from; nil means the system clock.
	Clock Clock
	// Jitter is the fraction of an interval by which a read may come
	// early or late, so that sensors do not read in lockstep: each wait
	// is Interval × (1 ± Jitter), and the first read comes within
	// Interval × Jitter of the start. 0 means DefaultJitter, a negative
	// value none; at most 0.5.
	Jitter float64
	// After a failed read the loop waits RetryMin, then twice as long
	// after each further failure, up to the smaller of RetryMax and the
	// interval; a good read returns it to the interval. 0 means
	// DefaultRetryMin, DefaultRetryMax.
	RetryMin, RetryMax time.Duration
	// Rand returns numbers in [0, 1) for the jitter; nil means
	// math/rand/v2.
	Rand func() float64
}

// Defaults of LoopOptions and Entry.
const (
	DefaultJitter   = 0.1
	DefaultRetryMin = time.Second
	DefaultRetryMax = 5 * time.Minute
	DefaultTimeout  = 5 * time.Second
)

// ErrTimeout is the error of a read that did not end within its timeout.
var ErrTimeout = errors.New("sensors: read timed out")

// Loop polls sensors and publishes their readings, by default on
// sensors/<name>/<quantity>, and each sensor's health, retained, on
// sensors/<name>/status whenever it changes.
type Loop struct {
	o       LoopOptions
	log     *slog.Logger
	clock   Clock
	randMu  sync.Mutex
	pollers []*poller

	mu sync.Mutex // guards each poller's status and counts
}

// NewLoop returns a Loop; Run starts it.
func NewLoop(o LoopOptions, log *slog.Logger) *Loop {
	if o.Clock == nil {
		o.Clock = systemClock{}
	}
	switch {
	case o.Jitter == 0:
		o.Jitter = DefaultJitter
	case o.Jitter < 0:
		o.Jitter = 0
	case o.Jitter > 0.5:
		o.Jitter = 0.5
	}
	if o.RetryMin <= 0 {
		o.RetryMin = DefaultRetryMin
	}
	if o.RetryMax <= 0 {
		o.RetryMax = DefaultRetryMax
	}
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	l := &Loop{o: o, log: log, clock: o.Clock}
	now := o.Clock.Now().UTC()
	for _, e := range o.Entries {
		p := &poller{l: l, e: e, topic: e.Topic, timeout: e.Timeout, last: map[string]reading{}, outOfRange: map[string]bool{},
			status: Status{State: StateStarting, Since: now}, counts: Counts{Dropped: map[string]uint64{}}}
		if p.topic == "" {
			p.topic = DefaultTopic
		}
		if p.timeout <= 0 {
			p.timeout = min(DefaultTimeout, e.Interval)
		}
		l.pollers = append(l.pollers, p)
	}
	return l
}

// Status returns each sensor's health, by name.
func (l *Loop) Status() map[string]Status {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := make(map[string]Status, len(l.pollers))
	for _, p := range l.pollers {
		s[p.e.Name] = p.status
	}
	return s
}

// Counts returns each sensor's counters, by name.
func (l *Loop) Counts() map[string]Counts {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := make(map[string]Counts, len(l.pollers))
	for _, p := range l.pollers {
		pc := p.counts
		pc.Dropped = maps.Clone(pc.Dropped)
		c[p.e.Name] = pc
	}
	return c
}

// Run polls every sensor until ctx ends, then halts them. A sensor that is
// absent or fails does not stop the others.
func (l *Loop) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, p := range l.pollers {
		wg.Go(func() { p.run(ctx) })
	}
	wg.Wait()
	return nil
}

// sleep waits d on the loop's clock, or less when the sensor is a
// Notifier with news; false when ctx ended first.
func (p *poller) sleep(ctx context.Context, d time.Duration) bool {
	var changed <-chan struct{}
	if n, ok := p.e.Sensor.(Notifier); ok {
		changed = n.Changed()
	}
	t := p.l.clock.NewTimer(max(d, 0))
	defer t.Stop()
	select {
	case <-t.C():
		return true
	case <-changed:
		return true
	case <-ctx.Done():
		return false
	}
}

func (l *Loop) random() float64 {
	l.randMu.Lock()
	defer l.randMu.Unlock()
	return l.o.Rand()
}

// jittered returns d × (1 ± Jitter).
func (l *Loop) jittered(d time.Duration) time.Duration {
	return d + time.Duration((2*l.random()-1)*l.o.Jitter*float64(d))
}

// poller is one sensor's share of the loop. Only its goroutine touches
// its fields, but for status and counts, which Loop.mu guards.
type poller struct {
	l       *Loop
	e       Entry
	topic   string
	timeout time.Duration
	// pending is a read that timed out and has not returned yet: the next
	// one waits for it rather than talk to the chip twice at once.
	pending chan readResult
	// last is the value last published, by quantity, for the deadband.
	last           map[string]reading
	outOfRange     map[string]bool // by quantity, to log a change once
	publishFailing bool
	statusSent     bool // the current status is on the broker
	deadbandCheck  bool // the deadband's quantities were compared with the sensor's

	status Status
	counts Counts
}

type readResult struct {
	ms  []Measurement
	err error
}

type reading struct {
	v  float64
	at time.Time
}

func (p *poller) run(ctx context.Context) {
	defer p.halt()
	l := p.l
	wait := time.Duration(l.random() * l.o.Jitter * float64(p.e.Interval))
	var backoff time.Duration
	for p.sleep(ctx, wait) {
		start := l.clock.Now()
		err := p.readAndPublish(ctx, start)
		if ctx.Err() != nil {
			return
		}
		p.record(err, start)
		if err != nil {
			// Measured from the end of the failed read: a pause, however
			// long the read took.
			backoff = p.nextBackoff(backoff)
			wait = backoff
		} else {
			backoff = 0
			wait = l.jittered(p.e.Interval) - l.clock.Now().Sub(start)
		}
	}
}

// nextBackoff is the wait after a failure that followed a wait of prev (0
// after a good read).
func (p *poller) nextBackoff(prev time.Duration) time.Duration {
	limit := min(p.l.o.RetryMax, p.e.Interval)
	if prev == 0 {
		return min(p.l.o.RetryMin, limit)
	}
	return min(2*prev, limit)
}

// read calls Sense with the timeout. A read that overruns it is canceled
// and left to return on its own: the next read first waits, for a timeout
// again, for it to do so, rather than talk to the chip twice at once.
func (p *poller) read(ctx context.Context) ([]Measurement, error) {
	if p.pending != nil {
		if _, err := p.wait(ctx, p.pending); err != nil {
			return nil, fmt.Errorf("%w: the read before, which timed out, has not returned yet", ErrTimeout)
		}
		p.pending = nil
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan readResult, 1)
	go func() {
		ms, err := p.e.Sensor.Sense(rctx)
		done <- readResult{ms, err}
	}()
	r, err := p.wait(ctx, done)
	if err != nil {
		p.pending = done
		return nil, err
	}
	return r.ms, r.err
}

// wait waits for a read to return, for the timeout at most.
func (p *poller) wait(ctx context.Context, done <-chan readResult) (readResult, error) {
	t := p.l.clock.NewTimer(p.timeout)
	defer t.Stop()
	select {
	case r := <-done:
		return r, nil
	case <-t.C():
		return readResult{}, fmt.Errorf("%w after %s", ErrTimeout, p.timeout)
	case <-ctx.Done():
		return readResult{}, ctx.Err()
	}
}

// readAndPublish reads the sensor once and publishes what it measured at
// at, the time of acquisition. Values outside the chip's range are dropped
// and counted; a read that leaves no value is an error.
func (p *poller) readAndPublish(ctx context.Context, at time.Time) error {
	p.count(func(c *Counts) { c.Reads++ })
	ms, err := p.read(ctx)
	if err != nil {
		return err
	}
	if p.currentState() != StateOK {
		// After a failure the first values are news, whatever the
		// deadband says.
		clear(p.last)
	}
	p.checkDeadband(ms)
	kept, dropped := Check(p.e.Sensor, ms)
	p.logRange(ms, dropped)
	for _, d := range dropped {
		p.count(func(c *Counts) { c.Dropped[d.Reason]++ })
	}
	for _, m := range kept {
		p.publish(at, m)
	}
	if len(kept) == 0 && len(dropped) > 0 {
		return fmt.Errorf("sensors: no value in the chip's range: %s", DroppedString(dropped))
	}
	return nil
}

// logRange logs once when a quantity's values start being dropped, and
// once when they stop.
func (p *poller) logRange(ms []Measurement, dropped []Dropped) {
	out := map[string]bool{}
	for _, d := range dropped {
		out[d.Quantity] = true
		if !p.outOfRange[d.Quantity] {
			p.l.log.Warn("sensor value dropped: outside the chip's range", "sensor", p.e.Name, "quantity", d.Quantity,
				"value", d.Value, "unit", d.Unit, "min", d.Range.Min, "max", d.Range.Max, "reason", d.Reason)
		}
	}
	for _, m := range ms {
		if p.outOfRange[m.Quantity] && !out[m.Quantity] {
			p.l.log.Info("sensor value back in the chip's range", "sensor", p.e.Name, "quantity", m.Quantity, "value", m.Value)
		}
		p.outOfRange[m.Quantity] = out[m.Quantity]
	}
}

// checkDeadband warns, once, of a deadband on a quantity the sensor does
// not measure: most likely a misspelt name.
func (p *poller) checkDeadband(ms []Measurement) {
	if p.deadbandCheck || len(ms) == 0 {
		return
	}
	p.deadbandCheck = true
	measured := map[string]bool{}
	var names []string
	for _, m := range ms {
		measured[m.Quantity] = true
		names = append(names, m.Quantity)
	}
	for _, q := range slices.Sorted(maps.Keys(p.e.Deadband)) {
		if !measured[q] {
			p.l.log.Warn("sensor deadband names a quantity the sensor does not measure", "sensor", p.e.Name, "quantity", q, "measured", names)
		}
	}
}

// publish publishes m, acquired at at unless m.At says otherwise, unless
// it is within its deadband.
func (p *poller) publish(at time.Time, m Measurement) {
	if !m.At.IsZero() {
		at = m.At
	}
	if db, ok := p.e.Deadband[m.Quantity]; ok {
		last, seen := p.last[m.Quantity]
		silent := p.e.MaxSilence > 0 && at.Sub(last.at) >= p.e.MaxSilence
		if seen && math.Abs(m.Value-last.v) <= db && !silent {
			p.count(func(c *Counts) { c.Suppressed++ })
			return
		}
	}
	payload, err := EncodeSenML(p.l.o.DeviceID, p.e.Name, at, m)
	if err == nil {
		err = p.l.o.Publisher.Publish(p.topicOf(m.Quantity), payload, p.e.QoS, p.e.Retain)
	}
	if !p.published(err) {
		p.count(func(c *Counts) { c.Dropped[DropPublish]++ })
		return
	}
	p.last[m.Quantity] = reading{m.Value, at}
	p.count(func(c *Counts) { c.Published++ })
}

// published logs a publish error once, and the first success after it;
// it reports whether err is nil.
func (p *poller) published(err error) bool {
	switch {
	case err != nil && !p.publishFailing:
		p.l.log.Warn("sensor publish failed", "sensor", p.e.Name, "err", err)
	case err == nil && p.publishFailing:
		p.l.log.Info("sensor publishes again", "sensor", p.e.Name)
	}
	p.publishFailing = err != nil
	return err == nil
}

func (p *poller) topicOf(quantity string) string {
	return ExpandTopic(p.topic, p.l.o.DeviceID, p.e.Name, quantity)
}

// record sets the sensor's state from the outcome of a read that started
// at at. A change of state is logged once and published, retained.
func (p *poller) record(err error, at time.Time) {
	state := stateOf(err)
	p.l.mu.Lock()
	prev := p.status
	changed := prev.State != state
	if changed {
		p.status = Status{State: state, Since: at.UTC()}
	}
	p.status.Error = ""
	if err != nil {
		p.counts.ReadErrors++
		p.status.Error = err.Error()
	}
	st := p.status
	p.l.mu.Unlock()

	if changed {
		log := p.l.log
		switch {
		case state == StateOK && prev.State == StateStarting:
		case state == StateOK:
			log.Info("sensor recovered", "sensor", p.e.Name, "was", prev.State, "for", at.Sub(prev.Since).Round(time.Second))
		case state == StateAbsent:
			log.Warn("sensor absent: the chip does not answer", "sensor", p.e.Name, "was", prev.State, "err", err)
		default:
			log.Warn("sensor failing", "sensor", p.e.Name, "was", prev.State, "err", err)
		}
		p.statusSent = false
	}
	if !p.statusSent {
		payload, _ := json.Marshal(st) // plain strings and a time: cannot fail
		p.statusSent = p.published(p.l.o.Publisher.Publish(p.topicOf(StatusQuantity), payload, 1, true))
	}
}

func (p *poller) currentState() State {
	p.l.mu.Lock()
	defer p.l.mu.Unlock()
	return p.status.State
}

func (p *poller) count(f func(*Counts)) {
	p.l.mu.Lock()
	defer p.l.mu.Unlock()
	f(&p.counts)
}

// halt halts the sensor once no read of it runs. A read still hung a
// timeout after the loop ended leaves the sensor as it is.
func (p *poller) halt() {
	if p.pending != nil {
		if _, err := p.wait(context.Background(), p.pending); err != nil {
			p.l.log.Warn("sensor read still hung as the loop stops: not halted", "sensor", p.e.Name)
			return
		}
	}
	if err := p.e.Sensor.Halt(); err != nil {
		p.l.log.Warn("sensor halt failed", "sensor", p.e.Name, "err", err)
	}
}
