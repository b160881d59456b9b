package sensors

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// Options are the driver-specific keys of a [[sensor]] entry. A driver
// declares the ones it reads with RegisterOptions; the zero value of each
// means "the driver's default".
type Options struct {
	// ADC (ads1115).
	Channel  string    // input: "ain0"…"ain3" against GND, or "ain0-ain1", "ain0-ain3", "ain1-ain3", "ain2-ain3"
	Gain     string    // full-scale range in volts: "4.096V" or "4.096"
	DataRate int       // samples per second
	Scale    []float64 // linear scale to engineering units: in_lo, in_hi, out_lo, out_hi
	Unit     string    // SenML unit of the scaled value
	Quantity string    // the measurement's name (topic level, SenML name)

	// GPIO inputs (gpio, pulse).
	Pull     string         // "up", "down" or "none"
	Edge     string         // "both", "rising", "falling" or "none"
	Debounce *time.Duration // nil: the driver's default
	Invert   bool           // the input is active low

	// Pressure and humidity sensors (bme280).
	Mode         string         // "forced" (a measurement per read) or "normal" (the chip measures on its own)
	Standby      *time.Duration // normal mode: the pause between measurements; nil: the driver's default
	Filter       int            // IIR filter coefficient: 0 (off), 2, 4, 8 or 16
	Oversampling map[string]int // by quantity ("temperature", "pressure", "humidity"): 1, 2, 4, 8 or 16
}

// OptionError is a bad value of one of a driver's option keys.
type OptionError struct {
	Key    string // as in the configuration file: "gain", "data_rate"
	Reason string
}

func (e *OptionError) Error() string { return e.Key + ": " + e.Reason }

// OptionErrorf returns an *OptionError for key.
func OptionErrorf(key, format string, args ...any) error {
	return &OptionError{Key: key, Reason: fmt.Sprintf(format, args...)}
}

type driverOptions struct {
	keys  []string
	check func(Options) error
}

var (
	gpioDrivers = map[string]bool{}
	options     = map[string]driverOptions{}
)

// RegisterGPIO is Register for a driver of a GPIO input: its Open gets
// Config.Pin.
func RegisterGPIO(name string, open OpenFunc) {
	Register(name, open)
	mu.Lock()
	gpioDrivers[name] = true
	mu.Unlock()
}

// UsesGPIO reports whether the driver registered under name needs a GPIO
// pin.
func UsesGPIO(name string) bool {
	mu.RLock()
	defer mu.RUnlock()
	return gpioDrivers[name]
}

// RegisterOptions declares the option keys (as written in the
// configuration file) that the driver registered under name reads, and
// check, which validates them when the configuration is loaded, before
// anything is opened. check returns nil or *OptionError values, joined
// with errors.Join.
func RegisterOptions(name string, keys []string, check func(Options) error) {
	mu.Lock()
	defer mu.Unlock()
	options[name] = driverOptions{keys: slices.Clone(keys), check: check}
}

// OptionKeys lists the option keys the driver registered under name reads.
func OptionKeys(name string) []string {
	mu.RLock()
	defer mu.RUnlock()
	return slices.Clone(options[name].keys)
}

// CheckOptions validates o for the driver registered under name and
// returns each problem it finds; nil when there are none.
func CheckOptions(name string, o Options) []*OptionError {
	mu.RLock()
	check := options[name].check
	mu.RUnlock()
	if check == nil {
		return nil
	}
	err := check(o)
	if err == nil {
		return nil
	}
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	var out []*OptionError
	for _, e := range errs {
		var oe *OptionError
		if !errors.As(e, &oe) {
			oe = &OptionError{Reason: e.Error()}
		}
		out = append(out, oe)
	}
	return out
}

// Notifier is a Sensor that has news between polls: a GPIO input whose
// debounced level changed. Besides reading it at its interval, the loop
// reads it as soon as Changed delivers, so a change is published when it
// happens, not at the next tick.
type Notifier interface {
	Changed() <-chan struct{}
}
