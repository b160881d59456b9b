package bme280

import (
	"context"
	"fmt"

	"periph.io/x/conn/v3/physic"

	"github.com/fieldgate/fieldgate/sensors"
)

func init() {
	sensors.RegisterI2C("bme280", func(c sensors.Config) (sensors.Sensor, error) {
		if c.Bus == nil {
			return nil, fmt.Errorf("bme280: no I²C bus")
		}
		addr := c.Address
		if addr == 0 {
			addr = 0x76
		}
		if addr != 0x76 && addr != 0x77 {
			return nil, fmt.Errorf("bme280: address %#x: want 0x76 or 0x77", addr)
		}
		d, err := New(c.Bus, addr, nil)
		if err != nil {
			return nil, err
		}
		return &sensor{d: d}, nil
	})
}

// sensor adapts a Dev to the poll loop.
type sensor struct{ d *Dev }

func (s *sensor) Sense(ctx context.Context) ([]sensors.Measurement, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var e physic.Env
	if err := s.d.Sense(&e); err != nil {
		return nil, err
	}
	ms := []sensors.Measurement{
		{Quantity: "temperature", Unit: "Cel", Value: e.Temperature.Celsius()},
		{Quantity: "pressure", Unit: "Pa", Value: float64(e.Pressure) / float64(physic.Pascal)},
	}
	if s.d.IsBME280() {
		ms = append(ms, sensors.Measurement{Quantity: "humidity", Unit: "%RH", Value: float64(e.Humidity) / float64(physic.PercentRH)})
	}
	return ms, nil
}

func (s *sensor) Halt() error { return s.d.Halt() }
