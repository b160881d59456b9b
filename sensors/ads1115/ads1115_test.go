package ads1115

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

// The config register, bit by bit (datasheet table 8).
func TestConfigWord(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Opts
		want uint16
	}{
		// The power-on value, 8583h: AIN0−AIN1, ±2.048 V, single-shot,
		// 128 SPS, comparator off; with OS = 1 it starts a conversion.
		{"power-on setting", Opts{AIN0AIN1, 2048 * physic.MilliVolt, 128}, 0x8583},
		// OS 1, MUX 100, PGA 001, MODE 1 | DR 100, COMP 00011.
		{"ain0 ±4.096V 128SPS", Opts{AIN0, 4096 * physic.MilliVolt, 128}, 0xC383},
		// OS 1, MUX 111, PGA 000, MODE 1 | DR 111, COMP 00011.
		{"ain3 ±6.144V 860SPS", Opts{AIN3, 6144 * physic.MilliVolt, 860}, 0xF1E3},
		// OS 1, MUX 011, PGA 101, MODE 1 | DR 000, COMP 00011.
		{"ain2-ain3 ±0.256V 8SPS", Opts{AIN2AIN3, 256 * physic.MilliVolt, 8}, 0xBB03},
		// OS 1, MUX 001, PGA 011, MODE 1 | DR 101, COMP 00011.
		{"ain0-ain3 ±1.024V 250SPS", Opts{AIN0AIN3, 1024 * physic.MilliVolt, 250}, 0x97A3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := configWord(tc.o)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %#04x, want %#04x", got, tc.want)
			}
		})
	}
	for _, o := range []Opts{{AIN0, 5 * physic.Volt, 128}, {AIN0, 4096 * physic.MilliVolt, 100}, {Channel(8), 4096 * physic.MilliVolt, 128}} {
		if _, err := configWord(o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

// Datasheet table 3, "Output codes versus input signals", and the LSB
// sizes of table 1.
func TestPotential(t *testing.T) {
	fs := 2048 * physic.MilliVolt
	for _, tc := range []struct {
		code int16
		want float64 // volts
	}{
		{0x7FFF, 2.048 * 32767 / 32768}, // +FS(2¹⁵−1)/2¹⁵
		{0x0001, 2.048 / 32768},         // +FS/2¹⁵
		{0x0000, 0},
		{-1, -2.048 / 32768}, // FFFFh: −FS/2¹⁵
		{-0x8000, -2.048},    // 8000h: ≤ −FS
	} {
		got := float64(Potential(tc.code, fs)) / float64(physic.Volt)
		if math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("code %#04x at ±2.048 V: got %v V, want %v V", uint16(tc.code), got, tc.want)
		}
	}
	for fs, lsb := range map[physic.ElectricPotential]float64{ // nanovolts
		6144 * physic.MilliVolt: 187500, 4096 * physic.MilliVolt: 125000, 2048 * physic.MilliVolt: 62500,
		1024 * physic.MilliVolt: 31250, 512 * physic.MilliVolt: 15625, 256 * physic.MilliVolt: 7812.5,
	} {
		if got := float64(Potential(1, fs)); math.Abs(got-lsb) > 1 {
			t.Errorf("LSB at ±%s: got %v nV, want %v nV", fs, got, lsb)
		}
	}
}

// conversion is the bus traffic of one single-shot conversion with config
// cfg that ends in code.
func conversion(addr, cfg, code uint16) []i2ctest.IO {
	return []i2ctest.IO{
		{Addr: addr, W: []byte{regConfig, byte(cfg >> 8), byte(cfg)}},
		{Addr: addr, W: []byte{regConfig}, R: []byte{byte(cfg >> 8), byte(cfg)}}, // OS reads 1: done
		{Addr: addr, W: []byte{regConversion}, R: []byte{byte(code >> 8), byte(code)}},
	}
}

func open(t *testing.T, bus *i2ctest.Playback, addr uint16, o sensors.Options) (sensors.Sensor, *[]time.Duration) {
	t.Helper()
	s, err := sensors.Open("ads1115", sensors.Config{Bus: bus, Address: addr, Options: o})
	if err != nil {
		t.Fatal(err)
	}
	waits := new([]time.Duration)
	s.(*Sensor).Dev.sleep = func(d time.Duration) { *waits = append(*waits, d) }
	return s, waits
}

func TestSense(t *testing.T) {
	for _, tc := range []struct {
		name       string
		addr       uint16
		o          sensors.Options
		cfg, code  uint16
		quantity   string
		unit       string
		want, prec float64
	}{
		// 24000 codes of 125 µV.
		{"ain0 single-ended", 0x48, sensors.Options{}, 0xC383, 0x5DC0, "voltage", "V", 3.0, 1e-9},
		// −4000 codes of 7.8125 µV: AIN0 is 31.25 mV below AIN1.
		{"differential ain0-ain1", 0x49, sensors.Options{Channel: "ain0-ain1", Gain: "0.256V", DataRate: 8}, 0x8B03, 0xF060, "voltage", "V", -0.03125, 1e-9},
		// 4–20 mA across 250 Ω is 1–5 V; 0–10 bar. 16000 codes of
		// 187.5 µV are 3 V: 12 mA, half the span.
		{"4-20mA transmitter", 0x4A, sensors.Options{Channel: "ain1", Gain: "6.144", DataRate: 860, Scale: []float64{1, 5, 0, 1e6}, Unit: "Pa", Quantity: "pressure"},
			0xD1E3, 0x3E80, "pressure", "Pa", 5e5, 1e-3},
		// A 0.1 Ω shunt: 25 mV (3200 codes of 7.8125 µV) is 0.25 A.
		{"shunt volts to amps", 0x4B, sensors.Options{Channel: "ain2-ain3", Gain: "±0.256 V", Scale: []float64{0, 0.1, 0, 1}, Unit: "A", Quantity: "current"},
			0xBB83, 0x0C80, "current", "A", 0.25, 1e-9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bus := &i2ctest.Playback{Ops: conversion(tc.addr, tc.cfg, tc.code)}
			s, waits := open(t, bus, tc.addr, tc.o)
			ms, err := s.Sense(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(ms) != 1 {
				t.Fatalf("got %d measurements, want 1", len(ms))
			}
			m := ms[0]
			if m.Quantity != tc.quantity || m.Unit != tc.unit || math.Abs(m.Value-tc.want) > tc.prec {
				t.Errorf("got %s = %v %s, want %s = %v %s", m.Quantity, m.Value, m.Unit, tc.quantity, tc.want, tc.unit)
			}
			if err := bus.Close(); err != nil {
				t.Error(err)
			}
			rate := tc.o.DataRate
			if rate == 0 {
				rate = 128
			}
			if len(*waits) != 1 || (*waits)[0] < time.Second/time.Duration(rate) {
				t.Errorf("waits %v, want one of at least the conversion time 1/%d s", *waits, rate)
			}
		})
	}
}

func TestSaturation(t *testing.T) {
	for _, code := range []uint16{0x7FFF, 0x8000} {
		bus := &i2ctest.Playback{Ops: conversion(0x48, 0xC383, code)}
		s, _ := open(t, bus, 0x48, sensors.Options{})
		ms, err := s.Sense(context.Background())
		if !errors.Is(err, ErrSaturated) {
			t.Errorf("code %#04x: got %v, %v; want ErrSaturated", code, ms, err)
		}
		if err := bus.Close(); err != nil {
			t.Error(err)
		}
	}
	// One code inside either rail is a reading.
	bus := &i2ctest.Playback{Ops: append(conversion(0x48, 0xC383, 0x7FFE), conversion(0x48, 0xC383, 0x8001)...)}
	s, _ := open(t, bus, 0x48, sensors.Options{})
	for _, want := range []float64{4.096 * 32766 / 32768, -4.096 * 32767 / 32768} {
		ms, err := s.Sense(context.Background())
		if err != nil || math.Abs(ms[0].Value-want) > 1e-9 {
			t.Errorf("got %v, %v; want %v V", ms, err, want)
		}
	}
}

func TestBusyThenDone(t *testing.T) {
	busy := []byte{0x43, 0x83} // OS = 0: converting
	bus := &i2ctest.Playback{Ops: []i2ctest.IO{
		{Addr: 0x48, W: []byte{0x01, 0xC3, 0x83}},
		{Addr: 0x48, W: []byte{0x01}, R: busy},
		{Addr: 0x48, W: []byte{0x01}, R: []byte{0xC3, 0x83}},
		{Addr: 0x48, W: []byte{0x00}, R: []byte{0x00, 0x08}},
	}}
	s, waits := open(t, bus, 0x48, sensors.Options{})
	ms, err := s.Sense(context.Background())
	if err != nil || ms[0].Value != 0.001 {
		t.Errorf("got %v, %v; want 0.001 V", ms, err)
	}
	if len(*waits) != 2 {
		t.Errorf("waits %v, want the conversion time and one poll interval", *waits)
	}

	ops := []i2ctest.IO{{Addr: 0x48, W: []byte{0x01, 0xC3, 0x83}}}
	for range 4 {
		ops = append(ops, i2ctest.IO{Addr: 0x48, W: []byte{0x01}, R: busy})
	}
	bus = &i2ctest.Playback{Ops: ops}
	s, _ = open(t, bus, 0x48, sensors.Options{})
	if _, err := s.Sense(context.Background()); !errors.Is(err, ErrBusy) {
		t.Errorf("got %v, want ErrBusy", err)
	}
	if err := bus.Close(); err != nil {
		t.Error(err)
	}
}

// A chip that NACKs the write that starts a conversion is not there: the
// loop shows it absent. One that took it and then fails is failing.
func TestAbsentChip(t *testing.T) {
	bus := &i2ctest.Playback{DontPanic: true} // every transfer NACKs
	s, _ := open(t, bus, 0x48, sensors.Options{})
	ms, err := s.Sense(context.Background())
	if err == nil || !strings.Contains(err.Error(), "ads1115: start conversion at 0x48") || !errors.Is(err, sensors.ErrAbsent) {
		t.Errorf("got %v, %v; want an ErrAbsent naming the address", ms, err)
	}
	if _, err := New(bus, 0x50, nil); err == nil {
		t.Error("address 0x50 accepted")
	}

	bus = &i2ctest.Playback{Ops: conversion(0x48, 0xC383, 0)[:1], DontPanic: true} // then nothing answers
	s, _ = open(t, bus, 0x48, sensors.Options{})
	ms, err = s.Sense(context.Background())
	if err == nil || !strings.Contains(err.Error(), "ads1115: read config") || errors.Is(err, sensors.ErrAbsent) {
		t.Errorf("got %v, %v; want a read config error that is not ErrAbsent", ms, err)
	}
	if err := bus.Close(); err != nil {
		t.Error(err)
	}
}

// The declared range is ± the full scale, in volts or as scaled; a
// reading at the top of the converter's range lies within it.
func TestRanges(t *testing.T) {
	for _, tc := range []struct {
		name     string
		o        sensors.Options
		cfg      uint16
		quantity string
		want     sensors.Range
	}{
		{"default ±4.096V", sensors.Options{}, 0xC383, "voltage", sensors.Range{Min: -4.096, Max: 4.096}},
		{"±0.256V", sensors.Options{Channel: "ain2-ain3", Gain: "0.256V"}, 0xBB83, "voltage", sensors.Range{Min: -0.256, Max: 0.256}},
		// 1–5 V is 0–10 bar: −6.144 V and +6.144 V scale to
		// (−6.144 − 1) × 250000 and (6.144 − 1) × 250000 Pa.
		{"4-20mA transmitter", sensors.Options{Channel: "ain1", Gain: "6.144", Scale: []float64{1, 5, 0, 1e6}, Unit: "Pa", Quantity: "pressure"},
			0xD183, "pressure", sensors.Range{Min: -1786000, Max: 1286000}},
		// A falling scale: the range is still low to high.
		{"inverted scale", sensors.Options{Gain: "2.048V", Scale: []float64{0, 2, 100, 0}, Unit: "%", Quantity: "level"},
			0xC583, "level", sensors.Range{Min: -2.4, Max: 202.4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bus := &i2ctest.Playback{Ops: conversion(0x48, tc.cfg, 0x7FFE)}
			s, _ := open(t, bus, 0x48, tc.o)
			r, ok := s.(sensors.Ranger)
			if !ok {
				t.Fatal("the sensor declares no ranges")
			}
			rs := r.Ranges()
			got, ok := rs[tc.quantity]
			if len(rs) != 1 || !ok || math.Abs(got.Min-tc.want.Min) > 1e-6 || math.Abs(got.Max-tc.want.Max) > 1e-6 {
				t.Fatalf("ranges %+v, want %s: %+v", rs, tc.quantity, tc.want)
			}
			ms, err := s.Sense(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if kept, dropped := sensors.Check(s, ms); len(kept) != 1 || len(dropped) != 0 {
				t.Errorf("a reading one code below the top, %+v, is outside the declared range %+v", ms, got)
			}
		})
	}
}

func TestParse(t *testing.T) {
	for s, want := range map[string]physic.ElectricPotential{
		"4.096V": 4096 * physic.MilliVolt, "±4.096 V": 4096 * physic.MilliVolt, "6.144": 6144 * physic.MilliVolt,
		"256mV": 256 * physic.MilliVolt, "0.512": 512 * physic.MilliVolt, "1.024V": 1024 * physic.MilliVolt, "2.048": 2048 * physic.MilliVolt,
	} {
		if got, err := ParseFullScale(s); err != nil || got != want {
			t.Errorf("ParseFullScale(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
	for _, s := range []string{"5V", "4.1", "", "V", "4.096A"} {
		if _, err := ParseFullScale(s); err == nil {
			t.Errorf("ParseFullScale(%q) accepted", s)
		}
	}
	for s, want := range map[string]Channel{"ain0": AIN0, "AIN3": AIN3, "ain0-ain1": AIN0AIN1, "ain1-ain3": AIN1AIN3} {
		if got, err := ParseChannel(s); err != nil || got != want {
			t.Errorf("ParseChannel(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
	for _, s := range []string{"ain4", "ain1-ain2", "ain0-gnd", ""} {
		if _, err := ParseChannel(s); err == nil {
			t.Errorf("ParseChannel(%q) accepted", s)
		}
	}
}

func TestCheckOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    sensors.Options
		want []string // "key: reason prefix"
	}{
		{"defaults", sensors.Options{}, nil},
		{"all good", sensors.Options{Channel: "ain0", Gain: "4.096V", DataRate: 475, Scale: []float64{0.6, 3, 0, 1e6}, Unit: "Pa", Quantity: "pressure"}, nil},
		{"bad values", sensors.Options{Channel: "ain9", Gain: "3V", DataRate: 100}, []string{
			`channel: want ain0…ain3 (against GND) or ain0-ain1, ain0-ain3, ain1-ain3, ain2-ain3, got "ain9"`,
			`gain: want a full-scale range of 6.144V, 4.096V, 2.048V, 1.024V, 0.512V or 0.256V, got "3V"`,
			"data_rate: want one of [8 16 32 64 128 250 475 860] samples per second, got 100"}},
		{"unit without scale", sensors.Options{Unit: "A"}, []string{"unit: only with scale"}},
		{"short scale", sensors.Options{Scale: []float64{1, 5}, Unit: "Pa"}, []string{"scale: want [in_lo, in_hi, out_lo, out_hi], got 2 numbers"}},
		{"flat scale", sensors.Options{Scale: []float64{1, 1, 0, 1}, Unit: "Pa", Quantity: "p"}, []string{"scale: in_lo and in_hi are both 1 V"}},
		{"scale without unit or quantity", sensors.Options{Scale: []float64{1, 5, 0, 1}}, []string{"unit: missing", "quantity: missing"}},
		{"unit with a space", sensors.Options{Scale: []float64{1, 5, 0, 1}, Unit: "m bar", Quantity: "p"}, []string{`unit: "m bar": want a SenML unit`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := sensors.CheckOptions("ads1115", tc.o)
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
	if _, err := sensors.Open("ads1115", sensors.Config{Bus: &i2ctest.Playback{}, Options: sensors.Options{Gain: "5V"}}); err == nil || !strings.HasPrefix(err.Error(), "ads1115: gain:") {
		t.Errorf("Open with a bad gain: got %v", err)
	}
}
