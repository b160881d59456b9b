package sensors

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"
)

// ErrAbsent marks the error of a chip that does not answer at all: a NACK
// on its I²C address, a bus or device node that is not there, a 1-Wire
// probe the kernel does not list. Drivers wrap it with Absent; the loop
// then shows the sensor as StateAbsent rather than StateFailing.
var ErrAbsent = errors.New("sensors: chip does not answer")

// Absent marks err as the error of a chip that does not answer: errors.Is
// finds ErrAbsent in it, and its message is err's. Absent(nil) is nil.
func Absent(err error) error {
	if err == nil {
		return nil
	}
	return absentError{err}
}

type absentError struct{ err error }

func (e absentError) Error() string   { return e.err.Error() }
func (e absentError) Unwrap() []error { return []error{ErrAbsent, e.err} }

// State is a sensor's health.
type State string

// States. A sensor is StateStarting until its first read ends.
const (
	StateStarting State = "starting"
	StateOK       State = "ok"      // the last read gave readings
	StateAbsent   State = "absent"  // the chip does not answer (ErrAbsent)
	StateFailing  State = "failing" // it answers, but with errors: CRC, wrong chip id, timeout, values out of range
)

// States lists the states a sensor settles in, for metrics.
var States = []State{StateOK, StateAbsent, StateFailing}

// stateOf classifies the outcome of a read.
func stateOf(err error) State {
	switch {
	case err == nil:
		return StateOK
	case errors.Is(err, ErrAbsent):
		return StateAbsent
	}
	return StateFailing
}

// Status is a sensor's health as the loop publishes it, retained, on its
// status topic, and as /status shows it.
type Status struct {
	State State `json:"state"`
	// Error is the last error while the state is absent or failing.
	Error string `json:"error,omitempty"`
	// Since is when the sensor entered State.
	Since time.Time `json:"since"`
}

// Counts are a sensor's counters since the loop started.
type Counts struct {
	Reads      uint64 // reads attempted, retries included
	ReadErrors uint64 // reads that ended in an error (absent or failing)
	Published  uint64 // values published
	Suppressed uint64 // values within the deadband, not published
	// Dropped counts values read but not published, by reason: DropRange,
	// DropNotFinite, DropPublish.
	Dropped map[string]uint64
}

// Reasons a value is dropped.
const (
	DropRange     = "out_of_range" // outside the chip's physical range
	DropNotFinite = "not_finite"   // NaN or ±Inf
	DropPublish   = "publish"      // the local broker refused it
)

// Range is the span over which a chip can measure a quantity. A value
// outside it is a fault of the chip or its wiring, not a reading.
type Range struct{ Min, Max float64 }

// Contains reports whether v lies in r.
func (r Range) Contains(v float64) bool { return v >= r.Min && v <= r.Max }

// Ranger is a Sensor that declares its chip's physical range, by quantity.
// The loop drops, and counts, values outside it.
type Ranger interface {
	Ranges() map[string]Range
}

// Dropped is a value that is not a reading: outside its chip's range, or
// not a number.
type Dropped struct {
	Measurement
	Reason string // DropRange or DropNotFinite
	Range  Range  // the chip's, with DropRange
}

// Check splits ms, read from s, into the values that are readings and
// those that are not: NaN and infinities, and, when s is a Ranger, values
// outside the chip's range.
func Check(s Sensor, ms []Measurement) (kept []Measurement, dropped []Dropped) {
	var ranges map[string]Range
	if r, ok := s.(Ranger); ok {
		ranges = r.Ranges()
	}
	for _, m := range ms {
		r, hasRange := ranges[m.Quantity]
		switch {
		case math.IsNaN(m.Value) || math.IsInf(m.Value, 0):
			dropped = append(dropped, Dropped{m, DropNotFinite, r})
		case hasRange && !r.Contains(m.Value):
			dropped = append(dropped, Dropped{m, DropRange, r})
		default:
			kept = append(kept, m)
		}
	}
	return kept, dropped
}

// DroppedString describes dropped values for a log or an error:
// "temperature 130 Cel (range -40…85), pressure NaN Pa".
func DroppedString(dropped []Dropped) string {
	var parts []string
	for _, d := range dropped {
		s := fmt.Sprintf("%s %v %s", d.Quantity, d.Value, d.Unit)
		if d.Reason == DropRange {
			s += fmt.Sprintf(" (range %v…%v)", d.Range.Min, d.Range.Max)
		}
		parts = append(parts, strings.TrimSpace(s))
	}
	return strings.Join(parts, ", ")
}
