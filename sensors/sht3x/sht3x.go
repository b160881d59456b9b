// Package sht3x reads Sensirion SHT3x and SHT4x temperature and humidity
// sensors over I²C (0x44 or 0x45). Every 16-bit word the chip sends is
// checked against its CRC-8: a mismatch is an error, never a reading.
//
// # Wiring on a Raspberry Pi header
//
//	SHT3x/SHT4x   Pi header
//	VDD (VIN)     pin 1 (3V3)
//	VSS (GND)     pin 6 or 9 (GND)
//	SDA           pin 3 (GPIO2, I2C1 SDA)
//	SCL           pin 5 (GPIO3, I2C1 SCL)
//	ADDR          SHT3x: strap to GND (0x44) or to 3V3 (0x45); never leave it floating
//	nRESET        SHT3x: unconnected (pulled up inside the chip) or to 3V3
//	ALERT         SHT3x: unconnected (not used)
//
// An SHT4x has no ADDR pin: its address is fixed by the part number
// (SHT40-AD1B and most others 0x44, SHT40-BD1B 0x45; the SHT40-CD1B's
// 0x46 is not one this driver takes). Most breakout boards
// strap an SHT3x's ADDR to GND (0x44) with a pad or jumper for 0x45.
// Power the chips from 3V3: the SHT4x takes 3.6 V at most, and the Pi's
// SDA and SCL must not see more than 3.3 V. Enable I²C with
// dtparam=i2c_arm=on; the bus is /dev/i2c-1; the driver's default address
// is 0x44.
//
// The Pi pulls SDA and SCL up to 3V3 on the board (1.8 kΩ), and most
// breakouts add their own (4.7–10 kΩ): with three or four boards on the
// bus, cut their pull-up jumpers. I²C is meant for a circuit board, not a
// cable: keep the wires under a metre, twisted with GND or in a shielded
// cable (the probes sold with an SHT31 on a 1–2 m lead are usually fine at
// the Pi's default 100 kHz), and use an I²C bus extender (P82B715, PCA9615)
// for a sensor further away. Mount the sensor where the air moves and away
// from the Pi's own heat, which reads as a warm, dry room.
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
