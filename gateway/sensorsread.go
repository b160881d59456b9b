package gateway

import (
	"context"
	"log/slog"
	"time"

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
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		r.Measurements, r.Err = dev.Sense(rctx)
		cancel()
		dev.Halt()
		out = append(out, r)
	}
	return out
}
