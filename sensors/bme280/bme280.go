// Package bme280 reads Bosch BME280 (temperature, pressure, humidity) and
// BMP280 (temperature, pressure) sensors over I²C, with the integer
// compensation of the datasheet (BST-BME280-DS002, section 4.2.3).
//
// In forced mode (the default) each Sense starts one measurement, waits
// for it and reads it; the chip sleeps in between. In normal mode the chip
// is set running once, measuring and pausing for the standby time (t_sb)
// on its own, and Sense reads the latest measurement without waiting.
//
// # Wiring on a Raspberry Pi header
//
//	BME280/BMP280   Pi header
//	VIN (VCC)       pin 1 (3V3)
//	GND             pin 6 or 9 (GND)
//	SDA (SDI)       pin 3 (GPIO2, I2C1 SDA)
//	SCL (SCK)       pin 5 (GPIO3, I2C1 SCL)
//	SDO             strap to GND (0x76) or to 3V3 (0x77); never leave it floating
//	CSB             3V3, or unconnected where the board pulls it up (selects I²C)
//
// Breakout boards strap SDO one way or the other: most small purple
// boards to GND (0x76), Adafruit's and SparkFun's to 3V3 (0x77, with a
// jumper or solder pad to change it). Power a bare chip from 3V3 only (it
// takes 3.6 V at most); a board with its own regulator and level shifter
// also runs from 3V3. Enable I²C with dtparam=i2c_arm=on; the bus is
// /dev/i2c-1.
//
// The Pi pulls SDA and SCL up to 3V3 on the board (1.8 kΩ), and most
// breakouts add their own (4.7–10 kΩ): with three or four boards on the
// bus, cut their pull-up jumpers so the bus is not pulled too hard for the
// chips to drive low. I²C is meant for a circuit board, not a cable: keep
// the wires under a metre (about 50 cm with several boards), twisted with
// GND or in a shielded cable, and use an I²C bus extender (P82B715,
// PCA9615) for a sensor further away. Mount the sensor away from the Pi's
// own heat; in normal mode with a short standby time the chip warms
// itself a little too.
package bme280

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/physic"

	"github.com/fieldgate/fieldgate/sensors"
)

// Oversampling of one measurement.
type Oversampling uint8

// Oversampling settings (register values).
const (
	Off Oversampling = 0
	O1x Oversampling = 1
	O2x Oversampling = 2
	O4x Oversampling = 3
	O8x Oversampling = 4
	O16 Oversampling = 5
)

// Filter is the IIR filter coefficient.
type Filter uint8

// Filter settings (register values).
const (
	NoFilter Filter = 0
	F2       Filter = 1
	F4       Filter = 2
	F8       Filter = 3
	F16      Filter = 4
)

// Mode is how the chip measures.
type Mode uint8

// Modes.
const (
	// Forced: each Sense starts one measurement and waits for it; the
	// chip sleeps between reads.
	Forced Mode = iota
	// Normal: the chip measures continuously, pausing Opts.Standby
	// between measurements; Sense reads the latest one.
	Normal
)

func (m Mode) String() string {
	switch m {
	case Forced:
		return "forced"
	case Normal:
		return "normal"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// Opts configure a Dev. The zero value of a field means its default.
type Opts struct {
	Temperature, Pressure, Humidity Oversampling // default O1x each
	Filter                          Filter
	Mode                            Mode
	// Standby is the pause between measurements in normal mode (t_sb);
	// 0 means DefaultStandby. It must be one of the chip's: Standbys for
	// a BME280, BMP280Standbys for a BMP280.
	Standby time.Duration
}

// DefaultOpts is weather monitoring as the datasheet recommends (3.5.1):
// one sample each, no filter, forced mode.
var DefaultOpts = Opts{Temperature: O1x, Pressure: O1x, Humidity: O1x}

// DefaultStandby is the standby time of normal mode when Opts gives none:
// a new measurement every second or so, on both chips.
const DefaultStandby = time.Second

// Standbys are the BME280's standby times in normal mode, by t_sb code
// (register 0xF5 bits 7..5; BME280 datasheet table 27).
var Standbys = [8]time.Duration{
	500 * time.Microsecond, 62500 * time.Microsecond, 125 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second, 10 * time.Millisecond, 20 * time.Millisecond,
}

// BMP280Standbys are the BMP280's: the same but for the last two codes
// (BMP280 datasheet, BST-BMP280-DS001, table 11).
var BMP280Standbys = [8]time.Duration{
	500 * time.Microsecond, 62500 * time.Microsecond, 125 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second,
}

// Chip ids (register 0xD0).
const (
	ChipBME280 = 0x60
	ChipBMP280 = 0x58
)

// Registers.
const (
	regChipID   = 0xD0
	regCalib1   = 0x88 // 0x88..0xA1: dig_T1..dig_P9, dig_H1
	regCalib2   = 0xE1 // 0xE1..0xE7: dig_H2..dig_H6
	regCtrlHum  = 0xF2
	regStatus   = 0xF3
	regCtrlMeas = 0xF4
	regConfig   = 0xF5
	regData     = 0xF7 // press[3] temp[3] hum[2]

	// mode[1:0] of ctrl_meas (datasheet table 25). Sleep is written as
	// all of ctrl_meas, oversampling bits 0.
	modeSleep  = 0b00
	modeForced = 0b01
	modeNormal = 0b11
)

// ErrNotMeasured is returned when the chip reports the "skipped" value.
var ErrNotMeasured = errors.New("bme280: measurement skipped (0x80000)")

// Dev is a BME280 or BMP280.
type Dev struct {
	d      *i2c.Dev
	isBME  bool
	o      Opts
	c      calibration
	sleep  func(time.Duration)
	config byte // the config register (0xF5): t_sb, filter
	// warm: in normal mode, the first measurement since the chip was
	// set running is done.
	warm bool
}

type calibration struct {
	t1                             uint16
	t2, t3                         int16
	p1                             uint16
	p2, p3, p4, p5, p6, p7, p8, p9 int16
	h1                             uint8
	h2                             int16
	h3                             uint8
	h4, h5                         int16
	h6                             int8
}

// New opens the chip at addr (0x76 or 0x77) on b, which it borrows, checks
// its id, reads its calibration and configures it; in normal mode it sets
// it running.
func New(b i2c.Bus, addr uint16, o *Opts) (*Dev, error) {
	opts := DefaultOpts
	if o != nil {
		opts = *o
	}
	for _, v := range []*Oversampling{&opts.Temperature, &opts.Pressure, &opts.Humidity} {
		if *v == Off || *v > O16 {
			*v = O1x
		}
	}
	if opts.Filter > F16 {
		return nil, fmt.Errorf("bme280: filter %d: want NoFilter, F2, F4, F8 or F16", opts.Filter)
	}
	if opts.Mode != Forced && opts.Mode != Normal {
		return nil, fmt.Errorf("bme280: %s: want Forced or Normal", opts.Mode)
	}
	if opts.Standby == 0 {
		opts.Standby = DefaultStandby
	}
	d := &Dev{d: &i2c.Dev{Bus: b, Addr: addr}, o: opts, sleep: time.Sleep}
	var id [1]byte
	if err := d.tx([]byte{regChipID}, id[:]); err != nil {
		return nil, fmt.Errorf("bme280: read chip id at %#x: %w", addr, err)
	}
	switch id[0] {
	case ChipBME280:
		d.isBME = true
	case ChipBMP280:
	default:
		return nil, fmt.Errorf("bme280: chip id %#02x at %#x is neither a BME280 (0x60) nor a BMP280 (0x58)", id[0], addr)
	}
	var tsb byte // t_sb has no effect in forced mode
	if opts.Mode == Normal {
		var ok bool
		if tsb, ok = d.standbyCode(opts.Standby); !ok {
			return nil, fmt.Errorf("bme280: standby %s: the %s at %#x offers %s", opts.Standby, d.chip(), addr, d.standbys())
		}
	}
	var c1 [26]byte
	if err := d.tx([]byte{regCalib1}, c1[:]); err != nil {
		return nil, fmt.Errorf("bme280: read calibration: %w", err)
	}
	le := binary.LittleEndian
	d.c = calibration{
		t1: le.Uint16(c1[0:]), t2: int16(le.Uint16(c1[2:])), t3: int16(le.Uint16(c1[4:])),
		p1: le.Uint16(c1[6:]), p2: int16(le.Uint16(c1[8:])), p3: int16(le.Uint16(c1[10:])),
		p4: int16(le.Uint16(c1[12:])), p5: int16(le.Uint16(c1[14:])), p6: int16(le.Uint16(c1[16:])),
		p7: int16(le.Uint16(c1[18:])), p8: int16(le.Uint16(c1[20:])), p9: int16(le.Uint16(c1[22:])),
		h1: c1[25],
	}
	if d.isBME {
		var c2 [7]byte
		if err := d.tx([]byte{regCalib2}, c2[:]); err != nil {
			return nil, fmt.Errorf("bme280: read humidity calibration: %w", err)
		}
		d.c.h2 = int16(le.Uint16(c2[0:]))
		d.c.h3 = c2[2]
		d.c.h4 = int16(int8(c2[3]))<<4 | int16(c2[4]&0x0F)
		d.c.h5 = int16(int8(c2[5]))<<4 | int16(c2[4]>>4)
		d.c.h6 = int8(c2[6])
	}
	d.config = tsb<<5 | byte(opts.Filter)<<2
	if err := d.configure(); err != nil {
		return nil, err
	}
	return d, nil
}

// IsBME280 reports whether the chip measures humidity.
func (d *Dev) IsBME280() bool { return d.isBME }

// Mode returns the mode the chip runs in.
func (d *Dev) Mode() Mode { return d.o.Mode }

// Sense reads one measurement: in forced mode it starts one and waits for
// it; in normal mode it reads the latest, waiting only on the first read
// for the chip's first measurement to end. A BMP280 leaves e.Humidity
// alone.
func (d *Dev) Sense(e *physic.Env) error {
	if d.o.Mode == Normal {
		if !d.warm {
			d.sleep(d.measureTime())
			d.warm = true
		}
	} else if err := d.measureForced(); err != nil {
		return err
	}
	n := 6 // 0xF7..0xFC
	if d.isBME {
		n = 8 // 0xF7..0xFE
	}
	// One burst read: the chip shadows the data registers while it is
	// read, so all values come from the same measurement (3.9).
	raw := make([]byte, n)
	if err := d.tx([]byte{regData}, raw); err != nil {
		return fmt.Errorf("bme280: read data: %w", err)
	}
	adcP := int32(raw[0])<<12 | int32(raw[1])<<4 | int32(raw[2])>>4
	adcT := int32(raw[3])<<12 | int32(raw[4])<<4 | int32(raw[5])>>4
	if adcT == 0x80000 || adcP == 0x80000 {
		return d.notMeasured()
	}
	// A value beyond the chip's operating range is a fault, not a
	// reading; the poll loop drops it (see Ranges).
	t, tFine := d.c.temperature(adcT)
	p := d.c.pressure(adcP, tFine)
	e.Temperature = physic.ZeroCelsius + physic.Temperature(t)*10*physic.MilliCelsius
	e.Pressure = physic.Pressure(p) * physic.Pascal / 256
	if d.isBME {
		adcH := int32(raw[6])<<8 | int32(raw[7])
		if adcH == 0x8000 {
			return d.notMeasured()
		}
		h := d.c.humidity(adcH, tFine)
		e.Humidity = physic.RelativeHumidity(int64(h) * int64(physic.PercentRH) / 1024)
	}
	return nil
}

// Halt puts the chip to sleep: in normal mode it stops measuring; in
// forced mode it sleeps between measurements anyway.
func (d *Dev) Halt() error {
	if err := d.tx([]byte{regCtrlMeas, modeSleep}, nil); err != nil {
		return fmt.Errorf("bme280: halt: %w", err)
	}
	d.warm = false
	return nil
}

// configure writes the chip's settings and, in normal mode, sets it
// running. The chip takes a write of config only in sleep mode (datasheet
// 5.4.6), and a previous run may have left it in normal mode: it is put
// to sleep first. ctrl_hum takes effect with the next write of ctrl_meas
// (5.4.3), so it comes before it.
func (d *Dev) configure() error {
	if err := d.tx([]byte{regCtrlMeas, modeSleep}, nil); err != nil {
		return fmt.Errorf("bme280: configure: %w", err)
	}
	if err := d.tx([]byte{regConfig, d.config}, nil); err != nil {
		return fmt.Errorf("bme280: configure: %w", err)
	}
	if d.isBME {
		if err := d.tx([]byte{regCtrlHum, byte(d.o.Humidity)}, nil); err != nil {
			return fmt.Errorf("bme280: configure: %w", err)
		}
	}
	d.warm = false
	if d.o.Mode == Normal {
		if err := d.tx([]byte{regCtrlMeas, d.ctrlMeas(modeNormal)}, nil); err != nil {
			return fmt.Errorf("bme280: start normal mode: %w", err)
		}
	}
	return nil
}

// notMeasured is the error of a read that found the skipped value. The
// chip reports it when it has lost its settings, after a brown-out or a
// reset: it sleeps again with every measurement skipped, so it is
// configured again for the next read.
func (d *Dev) notMeasured() error {
	if err := d.configure(); err != nil {
		return fmt.Errorf("%w; configuring the chip again: %w", ErrNotMeasured, err)
	}
	return ErrNotMeasured
}

// measureForced starts a forced measurement and waits for it to end.
func (d *Dev) measureForced() error {
	if err := d.tx([]byte{regCtrlMeas, d.ctrlMeas(modeForced)}, nil); err != nil {
		return fmt.Errorf("bme280: start measurement: %w", err)
	}
	d.sleep(d.measureTime())
	var status [1]byte
	for try := 0; ; try++ {
		if err := d.tx([]byte{regStatus}, status[:]); err != nil {
			return fmt.Errorf("bme280: read status: %w", err)
		}
		if status[0]&0x08 == 0 { // not measuring
			return nil
		}
		if try == 10 {
			return errors.New("bme280: measurement did not finish")
		}
		d.sleep(time.Millisecond)
	}
}

// ctrlMeas is the ctrl_meas register (0xF4): osrs_t, osrs_p and mode.
func (d *Dev) ctrlMeas(mode byte) byte {
	return byte(d.o.Temperature)<<5 | byte(d.o.Pressure)<<2 | mode
}

// standbyCode is the t_sb code of standby on this chip.
func (d *Dev) standbyCode(standby time.Duration) (byte, bool) {
	table := BMP280Standbys
	if d.isBME {
		table = Standbys
	}
	for code, v := range table {
		if v == standby {
			return byte(code), true
		}
	}
	return 0, false
}

// standbys lists this chip's standby times, shortest first.
func (d *Dev) standbys() string {
	table := BMP280Standbys
	if d.isBME {
		table = Standbys
	}
	s := slices.Clone(table[:])
	slices.Sort(s)
	names := make([]string, len(s))
	for i, v := range s {
		names[i] = v.String()
	}
	return strings.Join(names, ", ")
}

func (d *Dev) chip() string {
	if d.isBME {
		return "BME280"
	}
	return "BMP280"
}

// tx is one transfer with the chip. When it fails the chip did not answer
// (a NACK on its address, or no bus): the loop shows it as absent.
func (d *Dev) tx(w, r []byte) error { return sensors.Absent(d.d.Tx(w, r)) }

// measureTime is the datasheet's maximum measurement time (appendix 9.1).
func (d *Dev) measureTime() time.Duration {
	n := func(o Oversampling) int { return 1 << (o - 1) }
	us := 1250 + 2300*n(d.o.Temperature) + 2300*n(d.o.Pressure) + 575
	if d.isBME {
		us += 2300*n(d.o.Humidity) + 575
	}
	return time.Duration(us) * time.Microsecond
}

// temperature is BME280_compensate_T_int32: 0.01 °C, and t_fine.
func (c *calibration) temperature(adc int32) (int32, int32) {
	var1 := ((adc>>3 - int32(c.t1)<<1) * int32(c.t2)) >> 11
	x := adc>>4 - int32(c.t1)
	var2 := (((x * x) >> 12) * int32(c.t3)) >> 14
	tFine := var1 + var2
	return (tFine*5 + 128) >> 8, tFine
}

// pressure is BME280_compensate_P_int64: Pa in Q24.8.
func (c *calibration) pressure(adc, tFine int32) uint32 {
	var1 := int64(tFine) - 128000
	var2 := var1 * var1 * int64(c.p6)
	var2 += (var1 * int64(c.p5)) << 17
	var2 += int64(c.p4) << 35
	var1 = (var1*var1*int64(c.p3))>>8 + (var1*int64(c.p2))<<12
	var1 = ((int64(1)<<47 + var1) * int64(c.p1)) >> 33
	if var1 == 0 {
		return 0 // the datasheet's guard against a division by zero
	}
	p := int64(1048576 - adc)
	p = ((p<<31 - var2) * 3125) / var1
	var1 = (int64(c.p9) * (p >> 13) * (p >> 13)) >> 25
	var2 = (int64(c.p8) * p) >> 19
	p = (p+var1+var2)>>8 + int64(c.p7)<<4
	return uint32(p)
}

// humidity is bme280_compensate_H_int32: %RH in Q22.10.
func (c *calibration) humidity(adc, tFine int32) uint32 {
	v := tFine - 76800
	v = ((((adc << 14) - (int32(c.h4) << 20) - (int32(c.h5) * v)) + 16384) >> 15) *
		(((((((v*int32(c.h6))>>10)*(((v*int32(c.h3))>>11)+32768))>>10)+2097152)*int32(c.h2) + 8192) >> 14)
	v -= ((((v >> 15) * (v >> 15)) >> 7) * int32(c.h1)) >> 4
	v = max(0, min(v, 419430400))
	return uint32(v >> 12)
}
