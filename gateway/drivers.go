package gateway

// The sensor drivers compiled into Fieldgate. Each registers itself with
// sensors.Register; a driver not imported here does not exist for the
// configuration.
import (
	_ "github.com/fieldgate/fieldgate/sensors/ads1115"
	_ "github.com/fieldgate/fieldgate/sensors/bme280"
	_ "github.com/fieldgate/fieldgate/sensors/ds18b20"
	_ "github.com/fieldgate/fieldgate/sensors/gpioin"
	_ "github.com/fieldgate/fieldgate/sensors/sht3x"
	_ "github.com/fieldgate/fieldgate/sensors/simulated"
)
