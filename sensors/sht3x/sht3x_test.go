package sht3x

import (
	"errors"
	"math"
	"testing"
	"time"

	"periph.io/x/conn/v3/i2c/i2ctest"
	"periph.io/x/conn/v3/physic"
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
	if err := d.Sense(&e); !errors.Is(err, ErrCRC) {
		t.Fatalf("got %v, want ErrCRC", err)
	}
	if e.Humidity != 7 {
		t.Error("a reading was written despite the CRC error")
	}
	if _, err := New(bus, 0x40, nil); err == nil {
		t.Error("address 0x40 accepted")
	}
	absent := &i2ctest.Playback{DontPanic: true}
	d, _ = New(absent, 0x44, nil)
	if err := d.Sense(&physic.Env{}); err == nil {
		t.Error("an absent chip gave a reading")
	}
}
