package sht3x

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"periph.io/x/conn/v3/i2c/i2ctest"
	"periph.io/x/conn/v3/physic"

	"github.com/fieldgate/fieldgate/sensors"
)

// Sensirion's own example (SHT3x datasheet 4.12): CRC(0xBEEF) = 0x92.
func TestCRC8DatasheetExample(t *testing.T) {
	if got := CRC8([]byte{0xBE, 0xEF}); got != 0x92 {
		t.Errorf("CRC8(0xBEEF) = %#x, want 0x92", got)
	}
}

func word(v uint16) []byte {
	b := []byte{byte(v >> 8), byte(v)}
	return append(b, CRC8(b))
}

func TestSense(t *testing.T) {
	for _, tc := range []struct {
		name    string
		variant Variant
		cmd     []byte
		st, srh uint16
		temp    float64 // °C
		rh      float64 // %RH
	}{
		// ST = 0x6666 is 0.4 of full scale: -45 + 175 × 0.4 = 25 °C.
		{"sht3x", SHT3x, []byte{0x24, 0x00}, 0x6666, 0x8000, 25, 100 * 32768.0 / 65535},
		{"sht4x", SHT4x, []byte{0xFD}, 0x6666, 0x8000, 25, -6 + 125*32768.0/65535},
		{"sht4x clamps", SHT4x, []byte{0xFD}, 0x0000, 0x0000, -45, 0}, // -6 %RH is 0
	} {
		t.Run(tc.name, func(t *testing.T) {
			bus := &i2ctest.Playback{Ops: []i2ctest.IO{
				{Addr: 0x44, W: tc.cmd},
				{Addr: 0x44, R: append(word(tc.st), word(tc.srh)...)},
			}}
			d, err := New(bus, 0x44, &Opts{Variant: tc.variant})
			if err != nil {
				t.Fatal(err)
			}
			d.sleep = func(time.Duration) {}
			var e physic.Env
			if err := d.Sense(&e); err != nil {
				t.Fatal(err)
			}
			if got := e.Temperature.Celsius(); math.Abs(got-tc.temp) > 1e-6 {
				t.Errorf("temperature %v °C, want %v", got, tc.temp)
			}
			if got := float64(e.Humidity) / float64(physic.PercentRH); math.Abs(got-tc.rh) > 1e-4 {
				t.Errorf("humidity %v %%RH, want %v", got, tc.rh)
			}
			if err := bus.Close(); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestCRCMismatchIsAnError(t *testing.T) {
	bad := append(word(0x6666), word(0x8000)...)
	bad[5] ^= 0x01
	bus := &i2ctest.Playback{Ops: []i2ctest.IO{{Addr: 0x45, W: []byte{0x24, 0x00}}, {Addr: 0x45, R: bad}}}
	d, _ := New(bus, 0x45, nil)
	d.sleep = func(time.Duration) {}
	e := physic.Env{Humidity: 7}
	if err := d.Sense(&e); !errors.Is(err, ErrCRC) || errors.Is(err, sensors.ErrAbsent) {
		t.Fatalf("got %v, want ErrCRC: the chip answers, so it is failing, not absent", err)
	}
	if e.Humidity != 7 {
		t.Error("a reading was written despite the CRC error")
	}
	if _, err := New(bus, 0x40, nil); err == nil {
		t.Error("address 0x40 accepted")
	}
	absent := &i2ctest.Playback{DontPanic: true}
	d, _ = New(absent, 0x44, nil)
	if err := d.Sense(&physic.Env{}); !errors.Is(err, sensors.ErrAbsent) {
		t.Errorf("absent chip: got %v, want ErrAbsent", err)
	}
}

// The formula reaches -45 °C, the chip only -40 °C: the registered
// driver declares the range, and the loop drops what lies beyond it.
func TestRangeDeclared(t *testing.T) {
	bus := &i2ctest.Playback{Ops: []i2ctest.IO{{Addr: 0x44, W: []byte{0xFD}}, {Addr: 0x44, R: append(word(0x0000), word(0x8000)...)}}}
	s, err := sensors.Open("sht4x", sensors.Config{Name: "room", Bus: bus})
	if err != nil {
		t.Fatal(err)
	}
	ms, err := s.Sense(context.Background())
	if err != nil || len(ms) != 2 || ms[0].Quantity != "temperature" || ms[0].Value != -45 {
		t.Fatalf("got %+v, %v; want -45 °C and a humidity", ms, err)
	}
	r, ok := s.(sensors.Ranger)
	if !ok {
		t.Fatal("the registered driver declares no ranges")
	}
	if tr := r.Ranges()["temperature"]; tr != (sensors.Range{Min: -40, Max: 125}) || tr.Contains(ms[0].Value) {
		t.Errorf("temperature range %+v: want -40…125 °C, without %v", tr, ms[0].Value)
	}
	if hr := r.Ranges()["humidity"]; hr != (sensors.Range{Min: 0, Max: 100}) {
		t.Errorf("humidity range %+v: want 0…100 %%RH", hr)
	}
}
