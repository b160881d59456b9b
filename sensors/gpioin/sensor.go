package gpioin

import (
	"errors"
	"fmt"
	"time"

	"periph.io/x/conn/v3/gpio"

	"github.com/fieldgate/fieldgate/sensors"
)

// Debounce defaults and limit.
const (
	DefaultInputDebounce = 50 * time.Millisecond // contact bounce lasts a few ms; 50 ms is well past it
	MaxDebounce          = 10 * time.Second
)

// parseOptions reads the keys common to both drivers; defaultDebounce is
// the driver's.
func parseOptions(o sensors.Options, defaultDebounce time.Duration) (Opts, []error) {
	opts := Opts{Debounce: defaultDebounce, Invert: o.Invert}
	var errs []error
	switch o.Pull {
	case "", "up":
		opts.Pull = gpio.PullUp
	case "down":
		opts.Pull = gpio.PullDown
	case "none":
		opts.Pull = gpio.Float
	default:
		errs = append(errs, sensors.OptionErrorf("pull", "want up, down or none, got %q", o.Pull))
	}
	if o.Debounce != nil {
		opts.Debounce = *o.Debounce
		if opts.Debounce < 0 || opts.Debounce > MaxDebounce {
			errs = append(errs, sensors.OptionErrorf("debounce", "want 0…%s, got %s", MaxDebounce, opts.Debounce))
		}
	}
	return opts, errs
}

func inputOptions(o sensors.Options) (Opts, bool, error) {
	opts, errs := parseOptions(o, DefaultInputDebounce)
	edges := true
	switch o.Edge {
	case "", "both":
	case "none":
		edges = false
	default:
		errs = append(errs, sensors.OptionErrorf("edge", "want both (publish each change) or none (poll only), got %q", o.Edge))
	}
	if !edges && o.Debounce != nil {
		errs = append(errs, sensors.OptionErrorf("debounce", "has no effect with edge = \"none\""))
	}
	return opts, edges, errors.Join(errs...)
}

func counterOptions(o sensors.Options) (Opts, Edge, error) {
	opts, errs := parseOptions(o, 0)
	e := Falling
	switch o.Edge {
	case "", "falling":
	case "rising":
		e = Rising
	case "both":
		e = Both
	default:
		errs = append(errs, sensors.OptionErrorf("edge", "want falling, rising or both, got %q", o.Edge))
	}
	return opts, e, errors.Join(errs...)
}

func init() {
	sensors.RegisterGPIO("gpio", func(c sensors.Config) (sensors.Sensor, error) {
		opts, edges, err := inputOptions(c.Options)
		if err != nil {
			return nil, fmt.Errorf("gpioin: %w", err)
		}
		opts.Now = c.Now
		return NewInput(c.Pin, c.Options.Quantity, edges, &opts)
	})
	sensors.RegisterOptions("gpio", []string{"pull", "edge", "debounce", "invert", "quantity"}, func(o sensors.Options) error {
		_, _, err := inputOptions(o)
		return err
	})
	sensors.RegisterGPIO("pulse", func(c sensors.Config) (sensors.Sensor, error) {
		opts, e, err := counterOptions(c.Options)
		if err != nil {
			return nil, fmt.Errorf("gpioin: %w", err)
		}
		opts.Now = c.Now
		return NewCounter(c.Pin, e, &opts)
	})
	sensors.RegisterOptions("pulse", []string{"pull", "edge", "debounce", "invert"}, func(o sensors.Options) error {
		_, _, err := counterOptions(o)
		return err
	})
}
