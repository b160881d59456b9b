// Package sht3x reads Sensirion SHT3x and SHT4x temperature and humidity
// sensors over I²C (0x44 or 0x45). Every 16-bit word the chip sends is
// checked against its CRC-8: a mismatch is an error, never a reading.
package sht3x

import (
	"errors"
	"fmt"
	"time"

	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/physic"

	"github.com/fieldgate/fieldgate/sensors"
)

// Variant is the chip family.
type Variant int

// Variants.
const (
	SHT3x Variant = iota
	SHT4x
)

// Opts configure a Dev.
type Opts struct {
	Variant Variant
}

// ErrCRC is returned when a word's CRC does not match.
var ErrCRC = errors.New("sht3x: CRC mismatch")

// Dev is an SHT3x or SHT4x.
type Dev struct {
	d     *i2c.Dev
	o     Opts
	sleep func(time.Duration)
}

// New returns the chip at addr on b, which it borrows. The chips have no
// id register; the first Sense tells whether one answers: when a transfer
// fails, its error wraps sensors.ErrAbsent.
func New(b i2c.Bus, addr uint16, o *Opts) (*Dev, error) {
	if addr != 0x44 && addr != 0x45 {
		return nil, fmt.Errorf("sht3x: address %#x: want 0x44 or 0x45", addr)
	}
	d := &Dev{d: &i2c.Dev{Bus: b, Addr: addr}, sleep: time.Sleep}
	if o != nil {
		d.o = *o
	}
	return d, nil
}

// Sense makes one high-repeatability single-shot measurement.
func (d *Dev) Sense(e *physic.Env) error {
	cmd, wait := []byte{0x24, 0x00}, 16*time.Millisecond // SHT3x, no clock stretching (datasheet 4.3)
	if d.o.Variant == SHT4x {
		cmd, wait = []byte{0xFD}, 9*time.Millisecond // high precision (datasheet 4.5)
	}
	if err := sensors.Absent(d.d.Tx(cmd, nil)); err != nil {
		return fmt.Errorf("sht3x: start measurement: %w", err)
	}
	d.sleep(wait)
	var b [6]byte
	if err := sensors.Absent(d.d.Tx(nil, b[:])); err != nil {
		return fmt.Errorf("sht3x: read: %w", err)
	}
	if CRC8(b[0:2]) != b[2] || CRC8(b[3:5]) != b[5] {
		return fmt.Errorf("%w: got %x", ErrCRC, b)
	}
	st := int64(b[0])<<8 | int64(b[1])
	srh := int64(b[3])<<8 | int64(b[4])
	// T = -45 + 175 × ST / 65535 °C, in nanokelvin as physic counts.
	e.Temperature = physic.ZeroCelsius - 45*physic.Celsius + physic.Temperature(175*st*int64(physic.Celsius)/65535)
	var rh int64
	if d.o.Variant == SHT4x {
		rh = -6*int64(physic.PercentRH) + 125*srh*int64(physic.PercentRH)/65535
	} else {
		rh = 100 * srh * int64(physic.PercentRH) / 65535
	}
	e.Humidity = physic.RelativeHumidity(max(0, min(rh, 100*int64(physic.PercentRH))))
	return nil
}

// Halt does nothing: the chips sleep between single shots.
func (d *Dev) Halt() error { return nil }

// CRC8 is Sensirion's CRC-8: polynomial 0x31, initial value 0xFF.
func CRC8(data []byte) byte {
	crc := byte(0xFF)
	for _, b := range data {
		crc ^= b
		for range 8 {
			if crc&0x80 != 0 {
				crc = crc<<1 ^ 0x31
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// ranges is the chips' operating range: -40…125 °C and 0…100 %RH for both
// families (SHT3x datasheet table 1 and 2, SHT4x section 2). The formula
// reaches -45…130 °C: what lies beyond the range is a fault.
var ranges = map[string]sensors.Range{
	"temperature": {Min: -40, Max: 125},
	"humidity":    {Min: 0, Max: 100},
}

func init() {
	for name, v := range map[string]Variant{"sht3x": SHT3x, "sht4x": SHT4x} {
		sensors.RegisterI2C(name, func(c sensors.Config) (sensors.Sensor, error) {
			addr := c.Address
			if addr == 0 {
				addr = 0x44
			}
			d, err := New(c.Bus, addr, &Opts{Variant: v})
			if err != nil {
				return nil, err
			}
			return sensors.FromEnv(d, sensors.Quantities{Temperature: true, Humidity: true, Ranges: ranges}), nil
		})
	}
}
