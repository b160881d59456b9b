package bme280

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"periph.io/x/conn/v3/i2c/i2ctest"
	"periph.io/x/conn/v3/physic"

	"github.com/fieldgate/fieldgate/sensors"
)

// bmeCalibration is the datasheet's example with humidity trimming values
// read off a real BME280, and calib2 encodes its registers 0xE1..0xE7: H2
// (LE), H3, H4 msb, H4 lsb nibble | H5 lsb nibble << 4, H5 msb, H6.
func bmeCalibration() calibration {
	c := datasheet
	c.h1, c.h2, c.h3, c.h4, c.h5, c.h6 = 75, 362, 0, 313, 50, 30
	return c
}

func calib2(c calibration) []byte {
	return []byte{byte(c.h2), byte(c.h2 >> 8), c.h3, byte(c.h4 >> 4), byte(c.h4&0x0F) | byte(c.h5&0x0F)<<4, byte(c.h5 >> 4), byte(c.h6)}
}

// opening is the bus traffic of New up to the configuration: chip id and
// calibration.
func opening(addr uint16, bme bool) []i2ctest.IO {
	if !bme {
		return []i2ctest.IO{
			{Addr: addr, W: []byte{0xD0}, R: []byte{ChipBMP280}},
			{Addr: addr, W: []byte{0x88}, R: calib1(datasheet)},
		}
	}
	c := bmeCalibration()
	return []i2ctest.IO{
		{Addr: addr, W: []byte{0xD0}, R: []byte{ChipBME280}},
		{Addr: addr, W: []byte{0x88}, R: calib1(c)},
		{Addr: addr, W: []byte{0xE1}, R: calib2(c)},
	}
}

// Normal mode, register by register (BME280 datasheet 5.4.3–5.4.6, tables
// 20–28; BMP280 tables 11, 21–23): the chip is put to sleep so that config
// (t_sb, filter) is taken, then ctrl_hum, then ctrl_meas with mode 11 sets
// it running. Each read is one burst read of the data registers, with no
// trigger and, after the first, no wait; Halt puts it back to sleep.
func TestNormalMode(t *testing.T) {
	for _, tc := range []struct {
		name          string
		bme           bool
		o             Opts
		config, ctrl  byte
		hum           byte // ctrl_hum, BME280 only
		measure       time.Duration
		wantPa, wantT float64
	}{
		// The datasheet's indoor navigation settings (3.5.3): normal
		// mode, t_sb 0.5 ms, pressure ×16, temperature ×2, humidity ×1,
		// filter 16. config: t_sb 000, filter 100, spi3w 0 → 0x10;
		// ctrl_meas: osrs_t 010, osrs_p 101, mode 11 → 0x57.
		{name: "BME280 indoor navigation", bme: true,
			o:      Opts{Temperature: O2x, Pressure: O16, Humidity: O1x, Filter: F16, Mode: Normal, Standby: 500 * time.Microsecond},
			config: 0x10, ctrl: 0x57, hum: 0x01,
			// 1.25 + 2.3×2 + (2.3×16 + 0.575) + (2.3×1 + 0.575) ms (9.1).
			measure: 46100 * time.Microsecond},
		// t_sb 111 is 20 ms on a BME280 (table 27); filter 4 is 010:
		// config 111 010 00 = 0xE8. osrs_t 001, osrs_p 011, mode 11:
		// 0x2F; osrs_h 010: 0x02.
		{name: "BME280 20ms", bme: true,
			o:      Opts{Temperature: O1x, Pressure: O4x, Humidity: O2x, Filter: F4, Mode: Normal, Standby: 20 * time.Millisecond},
			config: 0xE8, ctrl: 0x2F, hum: 0x02,
			measure: (1250 + 2300 + 2300*4 + 575 + 2300*2 + 575) * time.Microsecond},
		// On a BMP280 the same code, 111, is 4 s (BMP280 table 11).
		{name: "BMP280 4s",
			o:      Opts{Mode: Normal, Standby: 4 * time.Second},
			config: 0xE0, ctrl: 0x27,
			measure: (1250 + 2300 + 2300 + 575) * time.Microsecond},
		// The default standby is 1 s, code 101, on either chip; filter 2 is 001.
		{name: "BMP280 default standby",
			o:      Opts{Mode: Normal, Filter: F2, Pressure: O8x},
			config: 0xA4, ctrl: 0x33,
			measure: (1250 + 2300 + 2300*8 + 575) * time.Microsecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const addr = 0x77
			ops := opening(addr, tc.bme)
			ops = append(ops,
				i2ctest.IO{Addr: addr, W: []byte{0xF4, 0x00}},
				i2ctest.IO{Addr: addr, W: []byte{0xF5, tc.config}})
			if tc.bme {
				ops = append(ops, i2ctest.IO{Addr: addr, W: []byte{0xF2, tc.hum}})
			}
			ops = append(ops, i2ctest.IO{Addr: addr, W: []byte{0xF4, tc.ctrl}})
			// Two reads: only the data registers, 0xF7..0xFE (..0xFC on a
			// BMP280), the second a different measurement.
			ops = append(ops,
				i2ctest.IO{Addr: addr, W: []byte{0xF7}, R: raw(datasheetADCP, datasheetADCT, 30000, tc.bme)},
				i2ctest.IO{Addr: addr, W: []byte{0xF7}, R: raw(datasheetADCP, datasheetADCT+1000, 30000, tc.bme)},
				i2ctest.IO{Addr: addr, W: []byte{0xF4, 0x00}}, // Halt: sleep
			)
			bus := &i2ctest.Playback{Ops: ops, DontPanic: true}
			d, err := New(bus, addr, &tc.o)
			if err != nil {
				t.Fatal(err)
			}
			if d.Mode() != Normal {
				t.Errorf("mode %s, want normal", d.Mode())
			}
			var slept []time.Duration
			d.sleep = func(d time.Duration) { slept = append(slept, d) }

			var e physic.Env
			if err := d.Sense(&e); err != nil {
				t.Fatal(err)
			}
			if got := e.Temperature.Celsius(); math.Abs(got-25.08) > 1e-9 {
				t.Errorf("temperature %v, want the datasheet's 25.08 °C", e.Temperature)
			}
			if got := float64(e.Pressure) / float64(physic.Pascal); math.Abs(got-100653.25) > 0.01 {
				t.Errorf("pressure %v, want 100653.25 Pa", e.Pressure)
			}
			if len(slept) != 1 || slept[0] != tc.measure {
				t.Errorf("first read waited %v, want once the first measurement's maximum time %v", slept, tc.measure)
			}
			first := e.Temperature
			if err := d.Sense(&e); err != nil {
				t.Fatal(err)
			}
			if len(slept) != 1 {
				t.Errorf("second read waited %v: in normal mode only the first read waits", slept[1:])
			}
			if e.Temperature <= first {
				t.Errorf("second read %v, want the newer, warmer measurement (first %v)", e.Temperature, first)
			}
			if err := d.Halt(); err != nil {
				t.Fatal(err)
			}
			if err := bus.Close(); err != nil {
				t.Error(err)
			}
		})
	}
}

// A standby time that the chip found at the address does not offer is an
// error, told before anything is written: 10 ms and 20 ms are BME280
// codes, 2 s and 4 s BMP280 ones.
func TestStandbyPerChip(t *testing.T) {
	for _, tc := range []struct {
		bme     bool
		standby time.Duration
		want    string
	}{
		{false, 10 * time.Millisecond, "bme280: standby 10ms: the BMP280 at 0x76 offers 500µs, 62.5ms, 125ms, 250ms, 500ms, 1s, 2s, 4s"},
		{false, 20 * time.Millisecond, "bme280: standby 20ms: the BMP280 at 0x76 offers"},
		{true, 2 * time.Second, "bme280: standby 2s: the BME280 at 0x76 offers 500µs, 10ms, 20ms, 62.5ms, 125ms, 250ms, 500ms, 1s"},
		{true, 3 * time.Millisecond, "bme280: standby 3ms: the BME280 at 0x76 offers"},
	} {
		id := byte(ChipBMP280)
		if tc.bme {
			id = ChipBME280
		}
		bus := &i2ctest.Playback{Ops: []i2ctest.IO{{Addr: 0x76, W: []byte{0xD0}, R: []byte{id}}}, DontPanic: true}
		_, err := New(bus, 0x76, &Opts{Mode: Normal, Standby: tc.standby})
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) || errors.Is(err, sensors.ErrAbsent) {
			t.Errorf("standby %s: got %v, want %q (not ErrAbsent)", tc.standby, err, tc.want)
		}
		if err := bus.Close(); err != nil {
			t.Error(err)
		}
	}
	// In forced mode the standby time has no effect: t_sb is written 000.
	bus := &i2ctest.Playback{Ops: append(opening(0x76, false),
		i2ctest.IO{Addr: 0x76, W: []byte{0xF4, 0x00}},
		i2ctest.IO{Addr: 0x76, W: []byte{0xF5, 0x00}}), DontPanic: true}
	if _, err := New(bus, 0x76, &Opts{Standby: 10 * time.Millisecond}); err != nil {
		t.Errorf("forced mode with a standby: %v", err)
	}
	if err := bus.Close(); err != nil {
		t.Error(err)
	}
}

// A chip that was reset while running (a brown-out) sleeps with its
// settings gone, and its data registers read as skipped: the read is an
// error, the chip is set running again, and the next read, after the
// first measurement's time, is a reading.
func TestNormalModeAfterReset(t *testing.T) {
	const addr = 0x76
	setup := []i2ctest.IO{
		{Addr: addr, W: []byte{0xF4, 0x00}},
		{Addr: addr, W: []byte{0xF5, 0x70}}, // t_sb 011 (250 ms), filter 100 (16)
		{Addr: addr, W: []byte{0xF2, 0x01}},
		{Addr: addr, W: []byte{0xF4, 0x27}},
	}
	ops := append(opening(addr, true), setup...)
	ops = append(ops, i2ctest.IO{Addr: addr, W: []byte{0xF7}, R: raw(0x80000, 0x80000, 0x8000, true)})
	ops = append(ops, setup...)
	ops = append(ops, i2ctest.IO{Addr: addr, W: []byte{0xF7}, R: raw(datasheetADCP, datasheetADCT, 30000, true)})
	bus := &i2ctest.Playback{Ops: ops, DontPanic: true}
	d, err := New(bus, addr, &Opts{Mode: Normal, Standby: 250 * time.Millisecond, Filter: F16})
	if err != nil {
		t.Fatal(err)
	}
	waits := 0
	d.sleep = func(time.Duration) { waits++ }
	var e physic.Env
	if err := d.Sense(&e); !errors.Is(err, ErrNotMeasured) {
		t.Fatalf("got %v, want ErrNotMeasured", err)
	}
	if err := d.Sense(&e); err != nil {
		t.Fatal(err)
	}
	if got := e.Temperature.Celsius(); math.Abs(got-25.08) > 1e-9 {
		t.Errorf("temperature %v, want 25.08 °C", e.Temperature)
	}
	if waits != 2 {
		t.Errorf("%d waits, want one before each first read after the chip was set running", waits)
	}
	if err := bus.Close(); err != nil {
		t.Error(err)
	}
}

// A chip that stops answering in normal mode is absent, as in forced mode.
func TestNormalModeAbsent(t *testing.T) {
	bus := &i2ctest.Playback{Ops: append(opening(0x76, false),
		i2ctest.IO{Addr: 0x76, W: []byte{0xF4, 0x00}},
		i2ctest.IO{Addr: 0x76, W: []byte{0xF5, 0xA0}},
		i2ctest.IO{Addr: 0x76, W: []byte{0xF4, 0x27}}), DontPanic: true}
	d, err := New(bus, 0x76, &Opts{Mode: Normal})
	if err != nil {
		t.Fatal(err)
	}
	d.sleep = func(time.Duration) {}
	if err := d.Sense(&physic.Env{}); !errors.Is(err, sensors.ErrAbsent) || !strings.HasPrefix(err.Error(), "bme280: read data:") {
		t.Errorf("got %v, want an ErrAbsent from the data read", err)
	}
}

// The [[sensor]] keys, as the gateway passes them, reach the registers.
func TestRegisteredNormalMode(t *testing.T) {
	standby := 250 * time.Millisecond
	o := sensors.Options{Mode: "normal", Standby: &standby, Filter: 8,
		Oversampling: map[string]int{"temperature": 2, "pressure": 16, "humidity": 4}}
	ops := append(opening(0x76, true),
		i2ctest.IO{Addr: 0x76, W: []byte{0xF4, 0x00}},
		i2ctest.IO{Addr: 0x76, W: []byte{0xF5, 0x6C}}, // t_sb 011, filter 011
		i2ctest.IO{Addr: 0x76, W: []byte{0xF2, 0x03}}, // osrs_h 011
		i2ctest.IO{Addr: 0x76, W: []byte{0xF4, 0x57}}, // osrs_t 010, osrs_p 101, normal
		i2ctest.IO{Addr: 0x76, W: []byte{0xF7}, R: raw(datasheetADCP, datasheetADCT, 30000, true)},
		i2ctest.IO{Addr: 0x76, W: []byte{0xF4, 0x00}},
	)
	bus := &i2ctest.Playback{Ops: ops, DontPanic: true}
	s, err := sensors.Open("bme280", sensors.Config{Name: "room", Bus: bus, Options: o})
	if err != nil {
		t.Fatal(err)
	}
	// The first read waits for the first measurement, up to 0.1 s at
	// these settings: in real time, as the gateway would.
	ms, err := s.Sense(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 3 || ms[2].Quantity != "humidity" || math.Abs(ms[0].Value-25.08) > 1e-9 {
		t.Errorf("measurements %+v, want temperature 25.08 Cel, pressure, humidity", ms)
	}
	if err := s.Halt(); err != nil {
		t.Fatal(err)
	}
	if err := bus.Close(); err != nil {
		t.Error(err)
	}
}

func TestCheckOptions(t *testing.T) {
	ms := func(d time.Duration) *time.Duration { return &d }
	for _, tc := range []struct {
		name string
		o    sensors.Options
		want []string // "key: reason prefix"
	}{
		{"defaults", sensors.Options{}, nil},
		{"forced with filter and oversampling", sensors.Options{Mode: "forced", Filter: 16, Oversampling: map[string]int{"pressure": 16, "temperature": 2}}, nil},
		{"normal", sensors.Options{Mode: "normal", Standby: ms(62500 * time.Microsecond), Filter: 4}, nil},
		{"normal, a BME280 standby", sensors.Options{Mode: "normal", Standby: ms(10 * time.Millisecond)}, nil},
		{"normal, a BMP280 standby", sensors.Options{Mode: "normal", Standby: ms(4 * time.Second)}, nil},
		{"bad mode", sensors.Options{Mode: "continuous"}, []string{`mode: want forced (a measurement per read) or normal (the chip measures on its own), got "continuous"`}},
		{"standby in forced mode", sensors.Options{Standby: ms(time.Second)}, []string{`standby: only with mode = "normal"`}},
		{"standby no chip offers", sensors.Options{Mode: "normal", Standby: ms(100 * time.Millisecond)}, []string{
			"standby: want 0.5ms, 62.5ms, 125ms, 250ms, 500ms or 1s; 10ms or 20ms on a BME280; 2s or 4s on a BMP280; got 100ms"}},
		{"bad filter", sensors.Options{Filter: 3}, []string{"filter: want an IIR filter coefficient of 0 (off), 2, 4, 8 or 16, got 3"}},
		{"bad oversampling", sensors.Options{Oversampling: map[string]int{"humidity": 0, "pressure": 32, "wind": 1}}, []string{
			"oversampling.humidity: want 1, 2, 4, 8 or 16 samples, got 0",
			"oversampling.pressure: want 1, 2, 4, 8 or 16 samples, got 32",
			"oversampling.wind: not a quantity of the chip"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := sensors.CheckOptions("bme280", tc.o)
			if len(errs) != len(tc.want) {
				t.Fatalf("got %v, want %d errors %q", errs, len(tc.want), tc.want)
			}
			for i, e := range errs {
				if !strings.HasPrefix(e.Error(), tc.want[i]) {
					t.Errorf("error %d: got %q, want it to start %q", i, e, tc.want[i])
				}
			}
		})
	}
	if _, err := sensors.Open("bme280", sensors.Config{Bus: &i2ctest.Playback{}, Options: sensors.Options{Mode: "fast"}}); err == nil || !strings.HasPrefix(err.Error(), "bme280: mode:") {
		t.Errorf("Open with a bad mode: got %v", err)
	}
}
