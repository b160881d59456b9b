package gateway

import (
	"fmt"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpioreg"
	"periph.io/x/host/v3"
)

// openPin finds the GPIO named name ("GPIO17", or another name periph
// knows the pin by, such as "P1_11") with periph host. A pin that is not
// there is an error for the sensor alone: it shows as absent, and nothing
// else stops.
func openPin(name string) (gpio.PinIO, error) {
	if _, err := host.Init(); err != nil { // once: later calls return the first result
		return nil, fmt.Errorf("periph: %w", err)
	}
	p := gpioreg.ByName(name)
	if p == nil {
		return nil, fmt.Errorf("gpio: no pin %q on this board", name)
	}
	return p, nil
}
