package bme280

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/fieldgate/fieldgate/sensors"
)

// optionKeys are the [[sensor]] keys the driver reads.
var optionKeys = []string{"mode", "standby", "filter", "oversampling"}

// parseOptions turns a [[sensor]] entry's keys into Opts. Which standby
// times the chip offers depends on which chip it is, so New, not this,
// checks the standby against the chip.
func parseOptions(o sensors.Options) (Opts, error) {
	opts := DefaultOpts
	var errs []error
	switch o.Mode {
	case "", "forced":
	case "normal":
		opts.Mode = Normal
	default:
		errs = append(errs, sensors.OptionErrorf("mode", "want forced (a measurement per read) or normal (the chip measures on its own), got %q", o.Mode))
	}
	if o.Standby != nil {
		opts.Standby = *o.Standby
		switch {
		case opts.Mode != Normal:
			errs = append(errs, sensors.OptionErrorf("standby", "only with mode = \"normal\": in forced mode the chip sleeps between reads"))
		case !slices.Contains(Standbys[:], opts.Standby) && !slices.Contains(BMP280Standbys[:], opts.Standby):
			errs = append(errs, sensors.OptionErrorf("standby", "want 0.5ms, 62.5ms, 125ms, 250ms, 500ms or 1s; 10ms or 20ms on a BME280; 2s or 4s on a BMP280; got %s", opts.Standby))
		}
	}
	switch o.Filter {
	case 0:
	case 2, 4, 8, 16:
		opts.Filter = Filter(coefficientCode(o.Filter))
	default:
		errs = append(errs, sensors.OptionErrorf("filter", "want an IIR filter coefficient of 0 (off), 2, 4, 8 or 16, got %d", o.Filter))
	}
	for _, q := range slices.Sorted(maps.Keys(o.Oversampling)) {
		n := o.Oversampling[q]
		var v *Oversampling
		switch q {
		case "temperature":
			v = &opts.Temperature
		case "pressure":
			v = &opts.Pressure
		case "humidity": // a BMP280 has none, and ignores it
			v = &opts.Humidity
		default:
			errs = append(errs, sensors.OptionErrorf("oversampling."+q, "not a quantity of the chip: want temperature, pressure or humidity"))
			continue
		}
		switch n {
		case 1, 2, 4, 8, 16:
			*v = Oversampling(coefficientCode(n) + 1)
		default:
			errs = append(errs, sensors.OptionErrorf("oversampling."+q, "want 1, 2, 4, 8 or 16 samples, got %d", n))
		}
	}
	return opts, errors.Join(errs...)
}

// coefficientCode is the register code of a power of two, 1…16, in the
// filter and oversampling fields: 2 is 1 for the filter and, plus one, 2
// for oversampling.
func coefficientCode(n int) uint8 {
	var c uint8
	for ; n > 1; n >>= 1 {
		c++
	}
	return c
}

func init() {
	sensors.RegisterI2C("bme280", func(c sensors.Config) (sensors.Sensor, error) {
		if c.Bus == nil {
			return nil, fmt.Errorf("bme280: no I²C bus")
		}
		opts, err := parseOptions(c.Options)
		if err != nil {
			return nil, fmt.Errorf("bme280: %w", err)
		}
		addr := c.Address
		if addr == 0 {
			addr = 0x76
		}
		if addr != 0x76 && addr != 0x77 {
			return nil, fmt.Errorf("bme280: address %#x: want 0x76 or 0x77", addr)
		}
		d, err := New(c.Bus, addr, &opts)
		if err != nil {
			return nil, err
		}
		q := sensors.Quantities{Temperature: true, Pressure: true, Humidity: d.IsBME280(), Ranges: ranges}
		return sensors.FromEnv(d, q), nil
	})
	sensors.RegisterOptions("bme280", optionKeys, func(o sensors.Options) error {
		_, err := parseOptions(o)
		return err
	})
}

// ranges is the chips' operating range (BME280 datasheet, table 1; the
// BMP280's is the same for temperature and pressure), in SenML units.
// The poll loop drops, and counts, a value outside it.
var ranges = map[string]sensors.Range{
	"temperature": {Min: -40, Max: 85},
	"pressure":    {Min: 300e2, Max: 1100e2},
	"humidity":    {Min: 0, Max: 100},
}
