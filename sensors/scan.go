package sensors

import (
	"fmt"

	"periph.io/x/conn/v3/i2c"
)

// Found is a device that answered on an I²C bus.
type Found struct {
	Addr uint16
	Chip string // what it is, as far as the address and an id register tell
}

// Scan probes the 7-bit addresses 0x08–0x77 of b with a one-byte read and
// names the chips it recognises: by chip-id register where the chip has
// one, by address otherwise.
func Scan(b i2c.Bus) []Found {
	var found []Found
	var one [1]byte
	for addr := uint16(0x08); addr <= 0x77; addr++ {
		if err := b.Tx(addr, nil, one[:]); err != nil {
			continue
		}
		found = append(found, Found{Addr: addr, Chip: identify(b, addr)})
	}
	return found
}

func identify(b i2c.Bus, addr uint16) string {
	switch addr {
	case 0x76, 0x77:
		var id [1]byte
		if b.Tx(addr, []byte{0xD0}, id[:]) == nil {
			switch id[0] {
			case 0x60:
				return "BME280 (driver bme280)"
			case 0x58:
				return "BMP280 (driver bme280)"
			}
			return fmt.Sprintf("unknown (id register 0xD0 = %#02x)", id[0])
		}
	case 0x44, 0x45:
		return "SHT3x or SHT4x (drivers sht3x, sht4x; no id register)"
	case 0x48, 0x49, 0x4A, 0x4B:
		return "ADS1115 or another ADC at this address (driver ads1115; no id register)"
	}
	return "unknown"
}
