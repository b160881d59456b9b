package gateway

import (
	"fmt"
	"sync"

	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/i2c/i2creg"
	"periph.io/x/host/v3"
)

// i2cBuses opens each I²C bus once, for all the sensors on it, and closes
// them when the gateway stops.
type i2cBuses struct {
	mu      sync.Mutex
	initErr error
	inited  bool
	open    map[string]i2c.BusCloser
}

func (b *i2cBuses) get(name string) (i2c.Bus, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.inited {
		_, b.initErr = host.Init()
		b.inited = true
		b.open = map[string]i2c.BusCloser{}
	}
	if b.initErr != nil {
		return nil, fmt.Errorf("periph: %w", b.initErr)
	}
	if bus, ok := b.open[name]; ok {
		return bus, nil
	}
	bus, err := i2creg.Open(name)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	b.open[name] = bus
	return bus, nil
}

func (b *i2cBuses) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for name, bus := range b.open {
		bus.Close()
		delete(b.open, name)
	}
}
