package gateway

import (
	"context"
	"sync"

	"github.com/fieldgate/fieldgate/sensors"
)

// unopened stands for a sensor that could not be opened: each read tries
// to open it again, so that a chip plugged in later, or a 1-Wire probe the
// kernel lists late, starts publishing without a restart. Once open, it is
// the driver's sensor, with its ranges and its notifications.
type unopened struct {
	open func() (sensors.Sensor, error)
	mu   sync.Mutex
	dev  sensors.Sensor
}

func (u *unopened) Sense(ctx context.Context) ([]sensors.Measurement, error) {
	u.mu.Lock()
	dev := u.dev
	u.mu.Unlock()
	if dev == nil {
		var err error
		if dev, err = u.open(); err != nil {
			return nil, err
		}
		u.mu.Lock()
		u.dev = dev
		u.mu.Unlock()
	}
	return dev.Sense(ctx)
}

func (u *unopened) Halt() error {
	if dev := u.opened(); dev != nil {
		return dev.Halt()
	}
	return nil
}

// Ranges implements sensors.Ranger once the sensor is open.
func (u *unopened) Ranges() map[string]sensors.Range {
	if r, ok := u.opened().(sensors.Ranger); ok {
		return r.Ranges()
	}
	return nil
}

// Changed implements sensors.Notifier once the sensor is open; before, it
// never delivers.
func (u *unopened) Changed() <-chan struct{} {
	if n, ok := u.opened().(sensors.Notifier); ok {
		return n.Changed()
	}
	return nil
}

func (u *unopened) opened() sensors.Sensor {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.dev
}
