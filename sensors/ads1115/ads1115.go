// Package ads1115 reads a Texas Instruments ADS1115 16-bit ADC over I²C
// (datasheet SBAS444): single-shot conversions of one input, single-ended
// against GND or differential, with a programmable full-scale range and
// data rate. A reading is in volts, optionally scaled linearly to
// engineering units (a 4–20 mA transmitter across a shunt, a current
// transformer's burden resistor).
//
// # Wiring on a Raspberry Pi header
//
//	ADS1115   Pi header
//	VDD       pin 1 (3V3)
//	GND       pin 6 (GND)
//	SCL       pin 5 (GPIO3, I2C1 SCL)
//	SDA       pin 3 (GPIO2, I2C1 SDA)
//	ADDR      strap to GND (0x48), VDD (0x49), SDA (0x4A) or SCL (0x4B)
//	ALERT     not used (the comparator is disabled)
//
// Power the chip from 3V3, not 5 V: the Pi's SDA and SCL are pulled up to
// 3V3 on the board (1.8 kΩ), and an input may not exceed VDD + 0.3 V. With
// VDD = 3.3 V the 4.096 V range reads 0…3.3 V single-ended. A 4–20 mA loop
// therefore wants a 150 Ω shunt (0.6…3.0 V), not the usual 250 Ω (1…5 V).
// Enable I²C with dtparam=i2c_arm=on; the bus is /dev/i2c-1.
//
// A code at either rail of the converter (0x7FFF, 0x8000) means the input
// is at or beyond the full-scale range: that is an error, not a reading.
package ads1115

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/physic"

	"github.com/fieldgate/fieldgate/sensors"
)

// Channel is what the input multiplexer connects to the converter: the
// MUX field of the config register (datasheet table 8).
type Channel uint16

// Channels.
const (
	AIN0AIN1 Channel = 0 // differential AIN0 − AIN1 (the power-on setting)
	AIN0AIN3 Channel = 1 // differential AIN0 − AIN3
	AIN1AIN3 Channel = 2 // differential AIN1 − AIN3
	AIN2AIN3 Channel = 3 // differential AIN2 − AIN3
	AIN0     Channel = 4 // AIN0 − GND
	AIN1     Channel = 5 // AIN1 − GND
	AIN2     Channel = 6 // AIN2 − GND
	AIN3     Channel = 7 // AIN3 − GND
)

var channelNames = map[Channel]string{
	AIN0AIN1: "ain0-ain1", AIN0AIN3: "ain0-ain3", AIN1AIN3: "ain1-ain3", AIN2AIN3: "ain2-ain3",
	AIN0: "ain0", AIN1: "ain1", AIN2: "ain2", AIN3: "ain3",
}

func (c Channel) String() string {
	if n, ok := channelNames[c]; ok {
		return n
	}
	return fmt.Sprintf("Channel(%d)", uint16(c))
}

// ParseChannel reads a channel as written in the configuration: "ain0"…
// "ain3" against GND, or "ain0-ain1", "ain0-ain3", "ain1-ain3",
// "ain2-ain3".
func ParseChannel(s string) (Channel, error) {
	for c, n := range channelNames {
		if strings.EqualFold(s, n) {
			return c, nil
		}
	}
	return 0, fmt.Errorf("ads1115: channel %q: want ain0, ain1, ain2, ain3 (against GND) or ain0-ain1, ain0-ain3, ain1-ain3, ain2-ain3", s)
}

// The full-scale ranges of the programmable gain amplifier, by PGA field
// (datasheet table 8). The converter's codes span −FS…+FS(2¹⁵−1)/2¹⁵.
var fullScales = []physic.ElectricPotential{
	6144 * physic.MilliVolt,
	4096 * physic.MilliVolt,
	2048 * physic.MilliVolt, // the power-on setting
	1024 * physic.MilliVolt,
	512 * physic.MilliVolt,
	256 * physic.MilliVolt,
}

// ParseFullScale reads a full-scale range as written in the configuration:
// "4.096V", "±4.096 V", "4.096" or "4096mV". It must be one of 6.144,
// 4.096, 2.048, 1.024, 0.512 and 0.256 V.
func ParseFullScale(s string) (physic.ElectricPotential, error) {
	t := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(s), "±"))
	mult := 1000.0 // millivolts per unit written
	switch {
	case strings.HasSuffix(t, "mV"):
		t, mult = strings.TrimSuffix(t, "mV"), 1
	case strings.HasSuffix(t, "V"):
		t = strings.TrimSuffix(t, "V")
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(t), 64)
	if err == nil {
		mv := v * mult
		for _, fs := range fullScales {
			if d := mv - float64(fs/physic.MilliVolt); d > -1e-6 && d < 1e-6 {
				return fs, nil
			}
		}
	}
	return 0, fmt.Errorf("ads1115: gain %q: want a full-scale range of 6.144V, 4.096V, 2.048V, 1.024V, 0.512V or 0.256V", s)
}

// DataRates are the conversion rates the chip offers, in samples per
// second, by DR field (datasheet table 8).
var DataRates = []int{8, 16, 32, 64, 128, 250, 475, 860}

// Opts configure a Dev.
type Opts struct {
	Channel Channel
	// FullScale is the range of the gain amplifier, one of ±6.144, 4.096,
	// 2.048, 1.024, 0.512 and 0.256 V.
	FullScale physic.ElectricPotential
	// DataRate is in samples per second, one of DataRates. A slower rate
	// averages longer: less noise, a longer wait for the reading.
	DataRate int
}

// DefaultOpts: AIN0 against GND, ±4.096 V (0…VDD with a 3V3 supply), 128
// samples per second (1/128 s per reading).
var DefaultOpts = Opts{Channel: AIN0, FullScale: 4096 * physic.MilliVolt, DataRate: 128}

// Registers (datasheet 9.6).
const (
	regConversion = 0x00
	regConfig     = 0x01

	cfgOS         = 1 << 15 // write: start a conversion; read: 1 when none is running
	cfgModeSingle = 1 << 8
	cfgCompOff    = 0b11 // COMP_QUE: comparator disabled, ALERT/RDY high impedance
)

// Errors.
var (
	// ErrSaturated is returned for a code at either rail: the input is at
	// or beyond the full-scale range, so the value is not known.
	ErrSaturated = errors.New("ads1115: input saturated")
	// ErrBusy is returned when the conversion has not ended well after
	// its time.
	ErrBusy = errors.New("ads1115: conversion did not end")
)

// Dev is an ADS1115.
type Dev struct {
	d     *i2c.Dev
	o     Opts
	cfg   uint16 // the config register value that starts a conversion
	sleep func(time.Duration)
}

// New returns the chip at addr (0x48…0x4B) on b, which it borrows. The
// chip has no id register; the first Read tells whether one answers.
func New(b i2c.Bus, addr uint16, o *Opts) (*Dev, error) {
	if addr < 0x48 || addr > 0x4B {
		return nil, fmt.Errorf("ads1115: address %#x: want 0x48…0x4B (ADDR strapped to GND, VDD, SDA or SCL)", addr)
	}
	opts := DefaultOpts
	if o != nil {
		opts = *o
	}
	cfg, err := configWord(opts)
	if err != nil {
		return nil, err
	}
	return &Dev{d: &i2c.Dev{Bus: b, Addr: addr}, o: opts, cfg: cfg, sleep: time.Sleep}, nil
}

// Read makes one single-shot conversion and returns the input's
// potential. It waits for the conversion: 1/DataRate, and a little more.
func (d *Dev) Read() (physic.ElectricPotential, error) {
	code, err := d.ReadCode()
	if err != nil {
		return 0, err
	}
	switch code {
	case 0x7FFF:
		return 0, fmt.Errorf("%w: at or above +%s full scale on %s (code 0x7FFF): choose a larger gain range", ErrSaturated, d.o.FullScale, d.o.Channel)
	case -0x8000:
		return 0, fmt.Errorf("%w: at or below −%s full scale on %s (code 0x8000): choose a larger gain range", ErrSaturated, d.o.FullScale, d.o.Channel)
	}
	return Potential(code, d.o.FullScale), nil
}

// ReadCode makes one single-shot conversion and returns the raw code.
// When the chip does not take the write that starts it, the error wraps
// sensors.ErrAbsent; a failure after that, of a chip that answered, does
// not.
func (d *Dev) ReadCode() (int16, error) {
	if err := d.d.Tx([]byte{regConfig, byte(d.cfg >> 8), byte(d.cfg)}, nil); err != nil {
		// The chip has no id register: the first write is where one
		// that is not there shows, as a NACK on its address.
		return 0, sensors.Absent(fmt.Errorf("ads1115: start conversion at %#x: %w", d.d.Addr, err))
	}
	conv := time.Second / time.Duration(d.o.DataRate)
	// The rate is accurate to ±10 % (datasheet 7.5), and the chip wakes
	// from power-down in about 25 µs.
	d.sleep(conv + conv/10 + 50*time.Microsecond)
	var b [2]byte
	for try := 0; ; try++ {
		if err := d.d.Tx([]byte{regConfig}, b[:]); err != nil {
			return 0, fmt.Errorf("ads1115: read config: %w", err)
		}
		if uint16(b[0])<<8&cfgOS != 0 {
			break
		}
		if try == 3 {
			return 0, ErrBusy
		}
		d.sleep(conv / 10)
	}
	if err := d.d.Tx([]byte{regConversion}, b[:]); err != nil {
		return 0, fmt.Errorf("ads1115: read conversion: %w", err)
	}
	return int16(uint16(b[0])<<8 | uint16(b[1])), nil
}

// FullScale returns the range of the gain amplifier: readings span
// −FullScale…+FullScale.
func (d *Dev) FullScale() physic.ElectricPotential { return d.o.FullScale }

// Halt does nothing: in single-shot mode the chip powers down after each
// conversion.
func (d *Dev) Halt() error { return nil }

// Potential converts a code to the potential it stands for at full-scale
// range fs: one code is fs/2¹⁵ (datasheet table 3).
func Potential(code int16, fs physic.ElectricPotential) physic.ElectricPotential {
	return physic.ElectricPotential(int64(code) * int64(fs) / 32768)
}

// configWord is the config register value that starts one single-shot
// conversion with o (datasheet table 8).
func configWord(o Opts) (uint16, error) {
	if _, ok := channelNames[o.Channel]; !ok {
		return 0, fmt.Errorf("ads1115: no %s", o.Channel)
	}
	pga := -1
	for i, fs := range fullScales {
		if fs == o.FullScale {
			pga = i
		}
	}
	if pga < 0 {
		return 0, fmt.Errorf("ads1115: full scale %s: want 6.144V, 4.096V, 2.048V, 1.024V, 0.512V or 0.256V", o.FullScale)
	}
	dr := -1
	for i, r := range DataRates {
		if r == o.DataRate {
			dr = i
		}
	}
	if dr < 0 {
		return 0, fmt.Errorf("ads1115: data rate %d: want one of %v samples per second", o.DataRate, DataRates)
	}
	return cfgOS | uint16(o.Channel)<<12 | uint16(pga)<<9 | cfgModeSingle | uint16(dr)<<5 | cfgCompOff, nil
}
