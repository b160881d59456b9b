package ds18b20

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"periph.io/x/conn/v3/physic"

	"github.com/fieldgate/fieldgate/sensors"
)

// fixture makes a sysfs tree with probes holding w1_slave contents.
func fixture(t *testing.T, probes map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for id, content := range probes {
		dir := filepath.Join(root, "bus", "w1", "devices", id)
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "w1_slave"), []byte(content), 0o644)
	}
	os.MkdirAll(filepath.Join(root, "bus", "w1", "devices", "w1_bus_master1"), 0o755)
	return root
}

// What w1-therm prints, from the DS18B20 datasheet's example (+25.0625 °C
// is 0x0191) and the kernel's format.
const (
	good    = "91 01 4b 46 7f ff 0c 10 a5 : crc=a5 YES\n91 01 4b 46 7f ff 0c 10 a5 t=25062\n"
	badCRC  = "91 01 4b 46 7f ff 0c 10 a5 : crc=a6 NO\n91 01 4b 46 7f ff 0c 10 a5 t=25062\n"
	powerOn = "50 05 4b 46 7f ff 0c 10 1c : crc=1c YES\n50 05 4b 46 7f ff 0c 10 1c t=85000\n"
	freeze  = "90 fc 4b 46 7f ff 0c 10 2b : crc=2b YES\n90 fc 4b 46 7f ff 0c 10 2b t=-55000\n"
	tooHot  = "f0 07 4b 46 7f ff 0c 10 00 : crc=00 YES\nf0 07 4b 46 7f ff 0c 10 00 t=127000\n"
)

func TestSense(t *testing.T) {
	root := fixture(t, map[string]string{"28-0000075b1234": good, "28-00000bad": badCRC, "28-00000cold": freeze, "28-000085": powerOn})
	for _, tc := range []struct {
		id   string
		want float64
		err  error
	}{
		{"28-0000075b1234", 25.062, nil},
		{"28-00000cold", -55, nil},
		{"28-00000bad", 0, ErrCRC},
		{"28-000085", 0, ErrPowerOn},
	} {
		d, err := New(root, tc.id)
		if err != nil {
			t.Fatal(err)
		}
		e := physic.Env{Temperature: 1}
		err = d.Sense(&e)
		if !errors.Is(err, tc.err) {
			t.Errorf("%s: got %v, want %v", tc.id, err, tc.err)
		}
		if tc.err != nil && e.Temperature != 1 {
			t.Errorf("%s: a reading was written despite %v", tc.id, err)
		}
		if tc.err == nil && math.Abs(e.Temperature.Celsius()-tc.want) > 1e-9 {
			t.Errorf("%s: %v, want %v °C", tc.id, e.Temperature, tc.want)
		}
	}
}

func TestFindProbe(t *testing.T) {
	if _, err := New(fixture(t, nil), ""); !errors.Is(err, ErrNotFound) || !errors.Is(err, sensors.ErrAbsent) {
		t.Errorf("no probe: got %v, want ErrNotFound and ErrAbsent", err)
	}
	if _, err := New(fixture(t, nil), "28-0000075b1234"); !errors.Is(err, sensors.ErrAbsent) {
		t.Errorf("a named probe that is not there: got %v, want ErrAbsent", err)
	}
	if _, err := New(fixture(t, map[string]string{"28-a": good, "28-b": good}), ""); err == nil || !strings.Contains(err.Error(), "2 probes (28-a, 28-b)") {
		t.Errorf("two probes: got %v", err)
	}
	root := fixture(t, map[string]string{"28-only": good})
	s, err := sensors.Open("ds18b20", sensors.Config{Name: "tank", SysRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	ms, err := s.Sense(context.Background())
	if err != nil || len(ms) != 1 || ms[0].Unit != "Cel" || math.Abs(ms[0].Value-25.062) > 1e-9 {
		t.Errorf("through the registry: %+v, %v", ms, err)
	}
}

// A value beyond the probe's range is returned by the driver and dropped
// by the loop, which the registered driver tells the range; a probe that
// vanishes (the kernel removes its directory) is absent.
func TestRangeAndVanishedProbe(t *testing.T) {
	root := fixture(t, map[string]string{"28-hot": tooHot})
	s, err := sensors.Open("ds18b20", sensors.Config{Name: "tank", SysRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	ms, err := s.Sense(context.Background())
	if err != nil || len(ms) != 1 || ms[0].Value != 127 {
		t.Fatalf("got %+v, %v; want 127 °C", ms, err)
	}
	kept, dropped := sensors.Check(s, ms)
	if len(kept) != 0 || len(dropped) != 1 || dropped[0].Reason != sensors.DropRange || dropped[0].Range != (sensors.Range{Min: -55, Max: 125}) {
		t.Errorf("checked against the declared range: kept %+v, dropped %+v; want 127 °C dropped, outside -55…125", kept, dropped)
	}
	if err := os.RemoveAll(filepath.Join(root, "bus", "w1", "devices", "28-hot")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Sense(context.Background()); !errors.Is(err, sensors.ErrAbsent) {
		t.Errorf("vanished probe: got %v, want ErrAbsent", err)
	}
}
