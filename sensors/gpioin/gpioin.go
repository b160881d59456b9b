// Package gpioin reads GPIO inputs on periph's gpio.PinIO: an Input
// (driver "gpio") whose debounced level is published as soon as it
// changes — door contacts, alarm relays, float switches — and a Counter
// (driver "pulse") of pulses, published as a count and a rate — flow
// meters, tipping-bucket rain gauges, the S0 output of energy meters.
//
// A reader goroutine waits for the pin's edges (the kernel's gpiochip edge
// events); the level counts once the line has been quiet for the
// debounce time after its last edge. An Input tells the poll loop of each
// change through sensors.Notifier, so a change is published when it
// happens, not at the next poll, stamped with the time of the edge that
// ended it.
//
// # Wiring on a Raspberry Pi header
//
// Pins are named as the SoC numbers them: "GPIO17" is header pin 11. Any
// free GPIO will do; these are rarely taken by something else:
//
//	GPIO17 pin 11   GPIO27 pin 13   GPIO22 pin 15   GPIO23 pin 16
//	GPIO24 pin 18   GPIO25 pin 22   GPIO5  pin 29   GPIO6  pin 31
//	GND    pins 6, 9, 14, 20, 25, 30, 34, 39        3V3 pins 1, 17
//
// Avoid GPIO2/GPIO3 (I²C, with fixed 1.8 kΩ pull-ups), GPIO4 when the
// 1-Wire overlay is on, and GPIO14/15 (the serial console).
//
// A dry contact (reed switch, relay, push button) goes between the GPIO
// and GND, with pull = "up": the line reads high when the contact is open
// and low when it is closed (invert = true reads a closed contact as 1).
// The SoC's internal pull-ups are weak (about 50 kΩ); on a cable longer
// than a metre or two add an external 4.7–10 kΩ pull-up to 3V3 and a
// 100 nF capacitor to GND, or use an optocoupler input. An open-collector
// output (a flow meter's Hall sensor, an S0 energy-meter output: S0+ to
// the GPIO, S0− to GND) is wired the same way. Never put more than 3.3 V
// on a GPIO: a 5 V or 12 V signal needs a divider or an optocoupler.
package gpioin

import (
	"context"
	"sync"
	"time"

	"periph.io/x/conn/v3/gpio"

	"github.com/fieldgate/fieldgate/sensors"
)

// maxPending bounds the changes an Input keeps for the loop to read; past
// it the oldest go.
const maxPending = 64

// Input is a GPIO input whose changes are news.
type Input struct {
	w        *watcher
	quantity string
	changed  chan struct{}

	mu      sync.Mutex
	state   bool                  // the debounced level, active = true
	pending []sensors.Measurement // changes not yet read, oldest first
	dropped uint64
}

// NewInput returns an input on p, which it borrows. Quantity names its
// measurement ("" means "state"). With edges false the input is only read
// when polled: no edge detection, no debounce. The pin is configured on
// the first Sense.
func NewInput(p gpio.PinIO, quantity string, edges bool, o *Opts) (*Input, error) {
	kernel := gpio.NoEdge
	if edges {
		kernel = gpio.BothEdges
	}
	w, err := newWatcher(p, kernel, o)
	if err != nil {
		return nil, err
	}
	if quantity == "" {
		quantity = "state"
	}
	in := &Input{w: w, quantity: quantity, changed: make(chan struct{}, 1)}
	w.settled = in.settled
	return in, nil
}

// Sense returns the changes since the last Sense, oldest first, each
// stamped with its time; without any, the current level. Active is 1,
// inactive 0.
func (in *Input) Sense(ctx context.Context) ([]sensors.Measurement, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := in.w.start(func(l gpio.Level) { in.mu.Lock(); in.state = in.w.o.active(l); in.mu.Unlock() }); err != nil {
		return nil, err
	}
	if in.w.kernel == gpio.NoEdge {
		return []sensors.Measurement{in.measurement(in.w.o.active(in.w.pin.Read()), time.Time{})}, nil
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	select {
	case <-in.changed: // what it announced is read now
	default:
	}
	if len(in.pending) == 0 {
		return []sensors.Measurement{in.measurement(in.state, time.Time{})}, nil
	}
	ms := in.pending
	in.pending = nil
	return ms, nil
}

// Changed implements sensors.Notifier: it delivers when the debounced
// level has changed since the last Sense.
func (in *Input) Changed() <-chan struct{} { return in.changed }

// Ranges implements sensors.Ranger: a state is 0 or 1.
func (in *Input) Ranges() map[string]sensors.Range {
	return map[string]sensors.Range{in.quantity: {Min: 0, Max: 1}}
}

// Dropped is how many changes were lost because nobody read them.
func (in *Input) Dropped() uint64 {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.dropped
}

// Halt stops following the pin.
func (in *Input) Halt() error { return in.w.halt() }

func (in *Input) settled(l gpio.Level, at time.Time) {
	in.mu.Lock()
	defer in.mu.Unlock()
	s := in.w.o.active(l)
	if s == in.state {
		return // a glitch shorter than the debounce time
	}
	in.state = s
	if len(in.pending) == maxPending {
		in.pending = in.pending[1:]
		in.dropped++
	}
	in.pending = append(in.pending, in.measurement(s, at))
	select {
	case in.changed <- struct{}{}:
	default:
	}
}

func (in *Input) measurement(active bool, at time.Time) sensors.Measurement {
	m := sensors.Measurement{Quantity: in.quantity, At: at}
	if active {
		m.Value = 1
	}
	return m
}
