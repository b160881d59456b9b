package bme280

import (
	"fmt"

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
		q := sensors.Quantities{Temperature: true, Pressure: true, Humidity: d.IsBME280(), Ranges: ranges}
		return sensors.FromEnv(d, q), nil
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
