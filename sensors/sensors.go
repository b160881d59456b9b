// Package sensors reads the chips wired to the gateway on a schedule and
// publishes each reading as SenML JSON (RFC 8428).
//
// Drivers live in sub-packages (sensors/simulated, …) and register an Open
// function under their name; the poll loop in this package owns timing, so
// a driver only answers "read now".
package sensors

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/i2c"
)

// Measurement is one quantity read from a sensor.
type Measurement struct {
	Quantity string  // topic level and SenML name, e.g. "temperature"
	Unit     string  // SenML unit, e.g. "Cel", "%RH", "Pa"
	Value    float64 // in Unit
	// At is when the value was acquired, for a driver that knows better
	// than the loop (a GPIO change seen before it was read); zero means
	// the time the loop read it.
	At time.Time
}

// Sensor is an opened sensor.
type Sensor interface {
	// Sense reads the sensor once. It returns promptly when ctx ends.
	Sense(ctx context.Context) ([]Measurement, error)
	// Halt releases the sensor.
	Halt() error
}

// Config is what a driver's Open gets from a [[sensor]] entry.
type Config struct {
	Name string
	// Bus is the I²C bus the chip is on, for I²C drivers; the driver
	// borrows it.
	Bus i2c.Bus
	// Address is the chip's I²C address; 0 means the driver's default.
	Address uint16
	// Device names a device on a bus without addresses, e.g. a 1-Wire
	// probe ("28-0000075b1234"); empty means the only one there is.
	Device string
	// SysRoot is where sysfs is mounted; "" means /sys.
	SysRoot string
	// Pin is the GPIO line, for GPIO drivers (RegisterGPIO); the driver
	// configures it as an input and borrows it.
	Pin gpio.PinIO
	// Options are the driver's own keys of the [[sensor]] entry.
	Options Options
	// Now is the clock; drivers that synthesise values (simulated) or
	// time events (gpio, pulse) use it.
	Now func() time.Time
}

// OpenFunc opens a sensor.
type OpenFunc func(Config) (Sensor, error)

var (
	mu         sync.RWMutex
	drivers    = map[string]OpenFunc{}
	i2cDrivers = map[string]bool{}
)

// Register makes a driver available under name. Drivers call it from
// init; registering a name twice panics.
func Register(name string, open OpenFunc) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := drivers[name]; dup {
		panic("sensors: driver registered twice: " + name)
	}
	drivers[name] = open
}

// RegisterI2C is Register for a driver of an I²C chip: its Open gets
// Config.Bus.
func RegisterI2C(name string, open OpenFunc) {
	Register(name, open)
	mu.Lock()
	i2cDrivers[name] = true
	mu.Unlock()
}

// UsesI2C reports whether the driver registered under name needs an I²C bus.
func UsesI2C(name string) bool {
	mu.RLock()
	defer mu.RUnlock()
	return i2cDrivers[name]
}

// Known reports whether a driver is registered under name.
func Known(name string) bool {
	mu.RLock()
	defer mu.RUnlock()
	_, ok := drivers[name]
	return ok
}

// Drivers lists the registered drivers, sorted.
func Drivers() []string {
	mu.RLock()
	defer mu.RUnlock()
	names := make([]string, 0, len(drivers))
	for n := range drivers {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Open opens a sensor with the driver registered under driver.
func Open(driver string, c Config) (Sensor, error) {
	mu.RLock()
	open, ok := drivers[driver]
	mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("sensors: unknown driver %q", driver)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return open(c)
}
