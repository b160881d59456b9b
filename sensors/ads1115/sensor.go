package ads1115

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"periph.io/x/conn/v3/physic"

	"github.com/fieldgate/fieldgate/sensors"
)

// Scale maps a potential linearly to engineering units: In[0] volts reads
// as Out[0], In[1] volts as Out[1]. A 4–20 mA transmitter of 0…10 bar
// across 150 Ω is In 0.6, 3.0 and Out 0, 1e6 (Pa).
type Scale struct {
	In, Out [2]float64
}

// Apply returns the engineering value of v volts. It extrapolates: a value
// outside In is not clamped.
func (s Scale) Apply(v float64) float64 {
	return s.Out[0] + (v-s.In[0])*(s.Out[1]-s.Out[0])/(s.In[1]-s.In[0])
}

// Sensor is a Dev as the poll loop reads it: one measurement, in volts or
// scaled.
type Sensor struct {
	Dev      *Dev
	Quantity string // default "voltage"
	// Scale, when not nil, converts volts to Unit.
	Scale *Scale
	Unit  string
}

// Sense makes one conversion.
func (s *Sensor) Sense(ctx context.Context) ([]sensors.Measurement, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, err := s.Dev.Read()
	if err != nil {
		return nil, err
	}
	m := sensors.Measurement{Quantity: s.quantity(), Unit: "V", Value: float64(p) / float64(physic.Volt)}
	if s.Scale != nil {
		m.Unit, m.Value = s.Unit, s.Scale.Apply(m.Value)
	}
	return []sensors.Measurement{m}, nil
}

// Ranges implements sensors.Ranger: the converter reads −FS…+FS of its
// full-scale range, and with a Scale what those potentials scale to.
func (s *Sensor) Ranges() map[string]sensors.Range {
	fs := float64(s.Dev.FullScale()) / float64(physic.Volt)
	r := sensors.Range{Min: -fs, Max: fs}
	if s.Scale != nil {
		lo, hi := s.Scale.Apply(-fs), s.Scale.Apply(fs)
		r = sensors.Range{Min: min(lo, hi), Max: max(lo, hi)}
	}
	return map[string]sensors.Range{s.quantity(): r}
}

func (s *Sensor) quantity() string {
	if s.Quantity == "" {
		return "voltage"
	}
	return s.Quantity
}

// Halt halts the chip.
func (s *Sensor) Halt() error { return s.Dev.Halt() }

// optionKeys are the [[sensor]] keys the driver reads.
var optionKeys = []string{"channel", "gain", "data_rate", "scale", "unit", "quantity"}

// parseOptions turns a [[sensor]] entry's keys into Opts and a Sensor
// without its Dev.
func parseOptions(o sensors.Options) (Opts, Sensor, error) {
	opts := DefaultOpts
	s := Sensor{Quantity: o.Quantity}
	var errs []error
	if o.Channel != "" {
		c, err := ParseChannel(o.Channel)
		if err != nil {
			errs = append(errs, sensors.OptionErrorf("channel", "want ain0…ain3 (against GND) or ain0-ain1, ain0-ain3, ain1-ain3, ain2-ain3, got %q", o.Channel))
		}
		opts.Channel = c
	}
	if o.Gain != "" {
		fs, err := ParseFullScale(o.Gain)
		if err != nil {
			errs = append(errs, sensors.OptionErrorf("gain", "want a full-scale range of 6.144V, 4.096V, 2.048V, 1.024V, 0.512V or 0.256V, got %q", o.Gain))
		}
		opts.FullScale = fs
	}
	if o.DataRate != 0 {
		if !slices.Contains(DataRates, o.DataRate) {
			errs = append(errs, sensors.OptionErrorf("data_rate", "want one of %v samples per second, got %d", DataRates, o.DataRate))
		}
		opts.DataRate = o.DataRate
	}
	switch {
	case o.Scale == nil:
		if o.Unit != "" {
			errs = append(errs, sensors.OptionErrorf("unit", "only with scale: unscaled readings are in V"))
		}
	case len(o.Scale) != 4:
		errs = append(errs, sensors.OptionErrorf("scale", "want [in_lo, in_hi, out_lo, out_hi], got %d numbers", len(o.Scale)))
	case slices.ContainsFunc(o.Scale, func(v float64) bool { return math.IsNaN(v) || math.IsInf(v, 0) }):
		errs = append(errs, sensors.OptionErrorf("scale", "%v: want finite numbers", o.Scale))
	case o.Scale[0] == o.Scale[1]:
		errs = append(errs, sensors.OptionErrorf("scale", "in_lo and in_hi are both %v V", o.Scale[0]))
	default:
		s.Scale = &Scale{In: [2]float64{o.Scale[0], o.Scale[1]}, Out: [2]float64{o.Scale[2], o.Scale[3]}}
		s.Unit = o.Unit
		if o.Unit == "" {
			errs = append(errs, sensors.OptionErrorf("unit", "missing: a scaled reading needs its SenML unit, e.g. \"Pa\", \"A\", \"m3/s\""))
		} else if strings.ContainsFunc(o.Unit, func(r rune) bool { return r <= ' ' || r == '"' || r > '~' }) {
			errs = append(errs, sensors.OptionErrorf("unit", "%q: want a SenML unit such as \"Pa\", \"A\", \"%%RH\"", o.Unit))
		}
		if o.Quantity == "" {
			errs = append(errs, sensors.OptionErrorf("quantity", "missing: name what the scaled reading is, e.g. \"pressure\", \"current\""))
		}
	}
	return opts, s, errors.Join(errs...)
}

func init() {
	sensors.RegisterI2C("ads1115", func(c sensors.Config) (sensors.Sensor, error) {
		if c.Bus == nil {
			return nil, fmt.Errorf("ads1115: no I²C bus")
		}
		opts, s, err := parseOptions(c.Options)
		if err != nil {
			return nil, fmt.Errorf("ads1115: %w", err)
		}
		addr := c.Address
		if addr == 0 {
			addr = 0x48
		}
		if s.Dev, err = New(c.Bus, addr, &opts); err != nil {
			return nil, err
		}
		return &s, nil
	})
	sensors.RegisterOptions("ads1115", optionKeys, func(o sensors.Options) error {
		_, _, err := parseOptions(o)
		return err
	})
}
