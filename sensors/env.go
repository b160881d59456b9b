package sensors

import (
	"context"

	"periph.io/x/conn/v3/physic"
)

// EnvDevice is a driver in periph's shape: Sense fills the fields of
// physic.Env it measures.
type EnvDevice interface {
	Sense(*physic.Env) error
	Halt() error
}

// Quantities says which fields of physic.Env a device measures, and the
// chip's range of each, by quantity name ("temperature", "pressure",
// "humidity"; in Cel, Pa, %RH); nil means none declared.
type Quantities struct {
	Temperature, Pressure, Humidity bool
	Ranges                          map[string]Range
}

// FromEnv adapts d to the poll loop: each quantity it measures becomes a
// measurement in SenML units (Cel, Pa, %RH).
func FromEnv(d EnvDevice, q Quantities) Sensor { return envSensor{d, q} }

type envSensor struct {
	d EnvDevice
	q Quantities
}

func (s envSensor) Sense(ctx context.Context) ([]Measurement, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var e physic.Env
	if err := s.d.Sense(&e); err != nil {
		return nil, err
	}
	var ms []Measurement
	if s.q.Temperature {
		ms = append(ms, Measurement{Quantity: "temperature", Unit: "Cel", Value: e.Temperature.Celsius()})
	}
	if s.q.Pressure {
		ms = append(ms, Measurement{Quantity: "pressure", Unit: "Pa", Value: float64(e.Pressure) / float64(physic.Pascal)})
	}
	if s.q.Humidity {
		ms = append(ms, Measurement{Quantity: "humidity", Unit: "%RH", Value: float64(e.Humidity) / float64(physic.PercentRH)})
	}
	return ms, nil
}

func (s envSensor) Halt() error { return s.d.Halt() }

// Ranges implements Ranger.
func (s envSensor) Ranges() map[string]Range { return s.q.Ranges }
