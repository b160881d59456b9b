package sensors

import (
	"errors"
	"fmt"
	"testing"

	"periph.io/x/conn/v3/physic"
)

// fakeBus answers at the addresses it holds, with register values.
type fakeBus map[uint16]map[byte]byte

func (f fakeBus) String() string                  { return "fake" }
func (f fakeBus) SetSpeed(physic.Frequency) error { return nil }
func (f fakeBus) Tx(addr uint16, w, r []byte) error {
	regs, ok := f[addr]
	if !ok {
		return errors.New("nack")
	}
	if len(w) > 0 && len(r) > 0 {
		r[0] = regs[w[0]]
	}
	return nil
}

func TestScan(t *testing.T) {
	bus := fakeBus{
		0x44: {},
		0x48: {},
		0x76: {0xD0: 0x60},
		0x77: {0xD0: 0x58},
		0x20: {},
	}
	got := fmt.Sprint(Scan(bus))
	want := "[{32 unknown} {68 SHT3x or SHT4x (drivers sht3x, sht4x; no id register)} {72 ADS1115 or another ADC at this address (driver ads1115; no id register)} {118 BME280 (driver bme280)} {119 BMP280 (driver bme280)}]"
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if found := Scan(fakeBus{}); len(found) != 0 {
		t.Errorf("empty bus: %v", found)
	}
}
