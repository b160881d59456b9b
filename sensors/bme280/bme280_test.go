package bme280

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"periph.io/x/conn/v3/i2c/i2ctest"
	"periph.io/x/conn/v3/physic"

	"github.com/fieldgate/fieldgate/sensors"
)

// The worked example of the BMP280 datasheet (BST-BMP280-DS001, 3.12):
// its trimming values and raw readings give 25.08 °C and 100653.27 Pa.
var datasheet = calibration{
	t1: 27504, t2: 26435, t3: -1000,
	p1: 36477, p2: -10685, p3: 3024, p4: 2855, p5: 140, p6: -7, p7: 15500, p8: -14600, p9: 6000,
}

const datasheetADCT, datasheetADCP = 519888, 415148

func TestCompensationDatasheetExample(t *testing.T) {
	temp, tFine := datasheet.temperature(datasheetADCT)
	if temp != 2508 || tFine != 128422 {
		t.Errorf("temperature: got %d (t_fine %d), want 2508 (25.08 °C), t_fine 128422", temp, tFine)
	}
	// The datasheet prints 25767236 (100653.27 Pa) for the 64-bit integer
	// formula; running the formula it publishes gives 25767233 (100653.25
	// Pa), as every implementation finds: 0.01 Pa, integer rounding.
	p := datasheet.pressure(datasheetADCP, tFine)
	if p != 25767233 {
		t.Errorf("pressure: got %d/256 = %.2f Pa, want 25767233/256 (the datasheet's 100653.27 Pa, less integer rounding)", p, float64(p)/256)
	}
}

// The humidity compensation has no worked example in the datasheet: the
// integer formula is checked against the datasheet's floating-point one
// over the chip's whole range, with trimming values read off a real
// BME280.
func TestHumidityIntegerMatchesFloat(t *testing.T) {
	c := bmeCalibration()
	for adcH := int32(20000); adcH <= 40000; adcH += 250 {
		for _, adcT := range []int32{400000, datasheetADCT, 600000} {
			_, tFine := c.temperature(adcT)
			got := float64(c.humidity(adcH, tFine)) / 1024
			want := floatHumidity(&c, adcH, tFine)
			if math.Abs(got-want) > 0.02 {
				t.Fatalf("adc_H %d, t_fine %d: integer %.3f %%RH, float %.3f %%RH", adcH, tFine, got, want)
			}
		}
	}
}

// floatHumidity is the datasheet's double-precision formula (4.2.3).
func floatHumidity(c *calibration, adcH, tFine int32) float64 {
	h := float64(tFine) - 76800
	h = (float64(adcH) - (float64(c.h4)*64 + float64(c.h5)/16384*h)) *
		(float64(c.h2) / 65536 * (1 + float64(c.h6)/67108864*h*(1+float64(c.h3)/67108864*h)))
	h *= 1 - float64(c.h1)*h/524288
	return max(0, min(h, 100))
}

// calib1 encodes a calibration as registers 0x88..0xA1.
func calib1(c calibration) []byte {
	b := make([]byte, 26)
	le := binary.LittleEndian
	for i, v := range []uint16{c.t1, uint16(c.t2), uint16(c.t3), c.p1, uint16(c.p2), uint16(c.p3), uint16(c.p4), uint16(c.p5), uint16(c.p6), uint16(c.p7), uint16(c.p8), uint16(c.p9)} {
		le.PutUint16(b[2*i:], v)
	}
	b[25] = c.h1
	return b
}

// raw encodes adc values as registers 0xF7..
func raw(adcP, adcT int32, adcH int32, bme bool) []byte {
	b := []byte{byte(adcP >> 12), byte(adcP >> 4), byte(adcP << 4), byte(adcT >> 12), byte(adcT >> 4), byte(adcT << 4)}
	if bme {
		b = append(b, byte(adcH>>8), byte(adcH))
	}
	return b
}

// A BMP280 at 0x76, over a replayed bus: id, calibration, configuration
// (sleep, then config), then a forced measurement of the datasheet's example.
func TestBMP280Sense(t *testing.T) {
	bus := &i2ctest.Playback{Ops: []i2ctest.IO{
		{Addr: 0x76, W: []byte{0xD0}, R: []byte{0x58}},
		{Addr: 0x76, W: []byte{0x88}, R: calib1(datasheet)},
		{Addr: 0x76, W: []byte{0xF4, 0x00}}, // sleep, so that config is taken
		{Addr: 0x76, W: []byte{0xF5, 0x00}},
		{Addr: 0x76, W: []byte{0xF4, 0x25}},            // T x1, P x1, forced
		{Addr: 0x76, W: []byte{0xF3}, R: []byte{0x08}}, // still measuring
		{Addr: 0x76, W: []byte{0xF3}, R: []byte{0x00}},
		{Addr: 0x76, W: []byte{0xF7}, R: raw(datasheetADCP, datasheetADCT, 0, false)},
	}}
	d, err := New(bus, 0x76, nil)
	if err != nil {
		t.Fatal(err)
	}
	var slept []time.Duration
	d.sleep = func(d time.Duration) { slept = append(slept, d) }
	var e physic.Env
	e.Humidity = 12345
	if err := d.Sense(&e); err != nil {
		t.Fatal(err)
	}
	if got := e.Temperature.Celsius(); math.Abs(got-25.08) > 1e-9 {
		t.Errorf("temperature %v, want 25.08 °C", e.Temperature)
	}
	if got := float64(e.Pressure) / float64(physic.Pascal); math.Abs(got-100653.27) > 0.03 {
		t.Errorf("pressure %v, want 100653.27 Pa", e.Pressure)
	}
	if e.Humidity != 12345 {
		t.Errorf("a BMP280 changed the humidity to %v", e.Humidity)
	}
	if len(slept) != 2 || slept[0] != 6425*time.Microsecond {
		t.Errorf("waits %v, want the datasheet's maximum time (6.425 ms for x1/x1) then one poll", slept)
	}
	if err := bus.Close(); err != nil {
		t.Error(err)
	}
}

func TestBME280SenseHumidity(t *testing.T) {
	c := bmeCalibration()
	bus := &i2ctest.Playback{Ops: []i2ctest.IO{
		{Addr: 0x77, W: []byte{0xD0}, R: []byte{0x60}},
		{Addr: 0x77, W: []byte{0x88}, R: calib1(c)},
		{Addr: 0x77, W: []byte{0xE1}, R: calib2(c)},
		{Addr: 0x77, W: []byte{0xF4, 0x00}},
		{Addr: 0x77, W: []byte{0xF5, 0x00}},
		{Addr: 0x77, W: []byte{0xF2, 0x01}},
		{Addr: 0x77, W: []byte{0xF4, 0x25}},
		{Addr: 0x77, W: []byte{0xF3}, R: []byte{0x00}},
		{Addr: 0x77, W: []byte{0xF7}, R: raw(datasheetADCP, datasheetADCT, 30000, true)},
		{Addr: 0x77, W: []byte{0xF4, 0x00}},
	}}
	d, err := New(bus, 0x77, nil)
	if err != nil {
		t.Fatal(err)
	}
	d.sleep = func(time.Duration) {}
	var e physic.Env
	if err := d.Sense(&e); err != nil {
		t.Fatal(err)
	}
	_, tFine := c.temperature(datasheetADCT)
	want := floatHumidity(&c, 30000, tFine)
	if got := float64(e.Humidity) / float64(physic.PercentRH); math.Abs(got-want) > 0.02 {
		t.Errorf("humidity %v, want %.3f %%RH", e.Humidity, want)
	}
	if err := d.Halt(); err != nil {
		t.Fatal(err)
	}
	if err := bus.Close(); err != nil {
		t.Error(err)
	}
}

func TestErrors(t *testing.T) {
	// A chip that is not there: the bus returns the error.
	// It is absent (sensors.ErrAbsent), not failing.
	absent := &i2ctest.Playback{DontPanic: true}
	if _, err := New(absent, 0x76, nil); err == nil || !strings.Contains(err.Error(), "bme280: read chip id at 0x76") || !errors.Is(err, sensors.ErrAbsent) {
		t.Errorf("absent chip: got %v, want an ErrAbsent naming the chip id read", err)
	}
	// Another chip at the address: it answers, so it is failing.
	wrong := &i2ctest.Playback{Ops: []i2ctest.IO{{Addr: 0x76, W: []byte{0xD0}, R: []byte{0x61}}}}
	if _, err := New(wrong, 0x76, nil); err == nil || !strings.Contains(err.Error(), "chip id 0x61 at 0x76 is neither a BME280") || errors.Is(err, sensors.ErrAbsent) {
		t.Errorf("wrong chip: got %v, want a chip id error that is not ErrAbsent", err)
	}
	// The skipped value is an error, never a reading, and the chip,
	// which has lost its settings, is configured again.
	bus := &i2ctest.Playback{Ops: []i2ctest.IO{
		{Addr: 0x76, W: []byte{0xD0}, R: []byte{0x58}},
		{Addr: 0x76, W: []byte{0x88}, R: calib1(datasheet)},
		{Addr: 0x76, W: []byte{0xF4, 0x00}}, // sleep, so that config is taken
		{Addr: 0x76, W: []byte{0xF5, 0x00}},
		{Addr: 0x76, W: []byte{0xF4, 0x25}},
		{Addr: 0x76, W: []byte{0xF3}, R: []byte{0x00}},
		{Addr: 0x76, W: []byte{0xF7}, R: raw(0x80000, datasheetADCT, 0, false)},
		{Addr: 0x76, W: []byte{0xF4, 0x00}},
		{Addr: 0x76, W: []byte{0xF5, 0x00}},
	}, DontPanic: true}
	d, err := New(bus, 0x76, nil)
	if err != nil {
		t.Fatal(err)
	}
	d.sleep = func(time.Duration) {}
	if err := d.Sense(&physic.Env{}); !errors.Is(err, ErrNotMeasured) {
		t.Errorf("skipped pressure: got %v, want ErrNotMeasured", err)
	}
	if err := bus.Close(); err != nil {
		t.Error(err)
	}
}

// A value beyond the chip's range is the driver's to declare and the
// loop's to drop: the driver returns it, and its declared range excludes it.
func TestOutOfRange(t *testing.T) {
	if temp, _ := datasheet.temperature(0xFFFF0); temp <= 8500 {
		t.Fatalf("test value %d is not out of range", temp)
	}
	bus := &i2ctest.Playback{Ops: []i2ctest.IO{
		{Addr: 0x76, W: []byte{0xD0}, R: []byte{0x58}},
		{Addr: 0x76, W: []byte{0x88}, R: calib1(datasheet)},
		{Addr: 0x76, W: []byte{0xF4, 0x00}}, // sleep, so that config is taken
		{Addr: 0x76, W: []byte{0xF5, 0x00}},
		{Addr: 0x76, W: []byte{0xF4, 0x25}},
		{Addr: 0x76, W: []byte{0xF3}, R: []byte{0x00}},
		{Addr: 0x76, W: []byte{0xF7}, R: raw(datasheetADCP, 0xFFFF0, 0, false)},
	}}
	s, err := sensors.Open("bme280", sensors.Config{Name: "room", Bus: bus})
	if err != nil {
		t.Fatal(err)
	}
	ms, err := s.Sense(context.Background())
	if err != nil || len(ms) != 2 || ms[0].Quantity != "temperature" {
		t.Fatalf("got %+v, %v; want temperature and pressure", ms, err)
	}
	r, ok := s.(sensors.Ranger)
	if !ok {
		t.Fatal("the registered driver declares no ranges")
	}
	for q, want := range map[string]sensors.Range{"temperature": {Min: -40, Max: 85}, "pressure": {Min: 30000, Max: 110000}, "humidity": {Min: 0, Max: 100}} {
		if got := r.Ranges()[q]; got != want {
			t.Errorf("range of %s: got %+v, want %+v", q, got, want)
		}
	}
	if tr := r.Ranges()["temperature"]; tr.Contains(ms[0].Value) {
		t.Errorf("temperature %v °C is within the declared range %+v", ms[0].Value, tr)
	}
}

// Through the driver registry, as the gateway opens it: a BMP280 at the
// default address gives temperature and pressure in SenML units.
func TestRegisteredDriver(t *testing.T) {
	bus := &i2ctest.Playback{Ops: []i2ctest.IO{
		{Addr: 0x76, W: []byte{0xD0}, R: []byte{0x58}},
		{Addr: 0x76, W: []byte{0x88}, R: calib1(datasheet)},
		{Addr: 0x76, W: []byte{0xF4, 0x00}}, // sleep, so that config is taken
		{Addr: 0x76, W: []byte{0xF5, 0x00}},
		{Addr: 0x76, W: []byte{0xF4, 0x25}},
		{Addr: 0x76, W: []byte{0xF3}, R: []byte{0x00}},
		{Addr: 0x76, W: []byte{0xF7}, R: raw(datasheetADCP, datasheetADCT, 0, false)},
		{Addr: 0x76, W: []byte{0xF4, 0x00}},
	}}
	s, err := sensors.Open("bme280", sensors.Config{Name: "room", Bus: bus})
	if err != nil {
		t.Fatal(err)
	}
	ms, err := s.Sense(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[0].Quantity != "temperature" || ms[0].Unit != "Cel" || math.Abs(ms[0].Value-25.08) > 1e-9 ||
		ms[1].Quantity != "pressure" || ms[1].Unit != "Pa" || math.Abs(ms[1].Value-100653.25) > 0.01 {
		t.Errorf("measurements %+v", ms)
	}
	if err := s.Halt(); err != nil {
		t.Fatal(err)
	}
	if err := bus.Close(); err != nil {
		t.Error(err)
	}
	if _, err := sensors.Open("bme280", sensors.Config{Name: "x", Bus: bus, Address: 0x40}); err == nil || !strings.Contains(err.Error(), "want 0x76 or 0x77") {
		t.Errorf("address 0x40: got %v", err)
	}
}
