// Package simulated is a sensor that needs no hardware: a smooth, plausible
// indoor climate (temperature and relative humidity) for demos and tests.
// Nothing is wired to the header: a [[sensor]] with driver = "simulated"
// needs no bus, address or pin.
package simulated

import (
	"context"
	"hash/fnv"
	"math"
	"time"

	"github.com/fieldgate/fieldgate/sensors"
)

func init() {
	sensors.Register("simulated", func(c sensors.Config) (sensors.Sensor, error) {
		return New(c.Name, c.Now), nil
	})
}

// Dev is a simulated sensor.
type Dev struct {
	now   func() time.Time
	phase float64 // differs per name, so two simulated sensors disagree
}

// New returns a simulated sensor whose signal depends on name and the
// time now returns.
func New(name string, now func() time.Time) *Dev {
	h := fnv.New32a()
	h.Write([]byte(name))
	return &Dev{now: now, phase: float64(h.Sum32()%3600) / 3600 * 2 * math.Pi}
}

// Period of the simulated daily-like cycle: ten minutes, so a demo shows it.
const Period = 10 * time.Minute

// Sense returns temperature in °C (21 ± 3) and relative humidity in %
// (45 ± 10, falling as the temperature rises), both smooth in time.
func (d *Dev) Sense(ctx context.Context) ([]sensors.Measurement, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t := d.now()
	x := 2*math.Pi*float64(t.UnixNano()%int64(Period))/float64(Period) + d.phase
	temp := 21 + 3*math.Sin(x) + 0.2*math.Sin(7*x)
	rh := 45 - 10*math.Sin(x) + 1.5*math.Cos(5*x)
	return []sensors.Measurement{
		{Quantity: "temperature", Unit: "Cel", Value: math.Round(temp*100) / 100},
		{Quantity: "humidity", Unit: "%RH", Value: math.Round(rh*10) / 10},
	}, nil
}

// Halt does nothing: there is nothing to release.
func (d *Dev) Halt() error { return nil }
