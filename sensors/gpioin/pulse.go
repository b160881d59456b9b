package gpioin

import (
	"context"
	"math"
	"sync"
	"time"

	"periph.io/x/conn/v3/gpio"

	"github.com/fieldgate/fieldgate/sensors"
)

// Edge is which change of the input a Counter counts, of the level after
// Opts.Invert: Rising is inactive to active.
type Edge int

// Edges.
const (
	Falling Edge = iota // active to inactive: with pull-up, a contact or open collector closing
	Rising
	Both
)

// Counter counts pulses on a GPIO input.
type Counter struct {
	w    *watcher
	edge Edge

	mu     sync.Mutex
	level  bool   // the debounced level, active = true
	count  uint64 // since the counter started
	lastN  uint64 // at the last Sense
	lastAt time.Time
}

// NewCounter returns a counter of e edges on p, which it borrows. It
// starts counting on the first Sense. Without debounce each edge the pin
// reports counts, as fast as they come; with it, a pulse counts once the
// line has settled, so pulses must be longer than the debounce time.
func NewCounter(p gpio.PinIO, e Edge, o *Opts) (*Counter, error) {
	// The kernel's edges are of the line, before inversion.
	kernel := map[Edge]gpio.Edge{Falling: gpio.FallingEdge, Rising: gpio.RisingEdge, Both: gpio.BothEdges}[e]
	if o != nil && o.Invert && e != Both {
		kernel ^= gpio.BothEdges // rising ↔ falling
	}
	w, err := newWatcher(p, kernel, o)
	if err != nil {
		return nil, err
	}
	c := &Counter{w: w, edge: e}
	if w.o.Debounce == 0 {
		w.edge = c.onEdge
	} else {
		w.settled = c.settled
	}
	return c, nil
}

// Sense returns the count since the counter started (unit "count") and,
// but on the first Sense, the rate since the previous Sense (unit "1/s",
// SenML's events per second).
func (c *Counter) Sense(ctx context.Context) ([]sensors.Measurement, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	first := false
	err := c.w.start(func(l gpio.Level) {
		c.mu.Lock()
		c.level, c.lastAt, first = c.w.o.active(l), c.w.o.Now(), true
		c.mu.Unlock()
	})
	if err != nil {
		return nil, err
	}
	now := c.w.o.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	ms := []sensors.Measurement{{Quantity: "count", Unit: "count", Value: float64(c.count)}}
	if dt := now.Sub(c.lastAt); !first && dt > 0 {
		ms = append(ms, sensors.Measurement{Quantity: "rate", Unit: "1/s", Value: float64(c.count-c.lastN) / dt.Seconds()})
		c.lastN, c.lastAt = c.count, now
	}
	return ms, nil
}

// Ranges implements sensors.Ranger: neither a count nor a rate is ever
// negative, and neither has an upper bound the driver could know.
func (c *Counter) Ranges() map[string]sensors.Range {
	return map[string]sensors.Range{"count": {Min: 0, Max: math.Inf(1)}, "rate": {Min: 0, Max: math.Inf(1)}}
}

// Count returns the pulses counted so far.
func (c *Counter) Count() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.count
}

// Halt stops counting.
func (c *Counter) Halt() error { return c.w.halt() }

func (c *Counter) onEdge(time.Time) {
	c.mu.Lock()
	c.count++
	c.mu.Unlock()
}

func (c *Counter) settled(l gpio.Level, _ time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a := c.w.o.active(l)
	if a == c.level {
		return
	}
	c.level = a
	if c.edge == Both || (c.edge == Rising) == a {
		c.count++
	}
}
