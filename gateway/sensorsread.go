package gateway

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/fieldgate/fieldgate/sensors"
)

// SensorReading is one sensor's answer to ReadSensors.
type SensorReading struct {
	Name, Driver string
	Measurements []sensors.Measurement
	Err          error
}

// ReadSensors opens each configured sensor, reads it once and halts it:
// for an installer checking the wiring (fieldgate sensors read). Nothing
// else of the gateway starts.
func ReadSensors(ctx context.Context, cfg *Config, log *slog.Logger) []SensorReading {
	g := &Gateway{cfg: cfg, log: log}
	defer g.buses.close()
	var out []SensorReading
	for _, s := range cfg.Sensors {
		r := SensorReading{Name: s.Name, Driver: s.Driver}
		dev := g.openSensor(s)
		timeout := s.Timeout.Duration
		if timeout == 0 {
			timeout = sensors.DefaultTimeout
		}
		rctx, cancel := context.WithTimeout(ctx, timeout)
		ms, err := dev.Sense(rctx)
		cancel()
		dev.Halt()
		// What the loop would drop is a fault to show, not a reading.
		kept, dropped := sensors.Check(dev, ms)
		if err == nil && len(dropped) > 0 {
			err = fmt.Errorf("gateway: outside the chip's range: %s", sensors.DroppedString(dropped))
		}
		r.Measurements, r.Err = kept, err
		out = append(out, r)
	}
	return out
}
