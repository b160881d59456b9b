// Package ds18b20 reads Maxim DS18B20 temperature probes through the Linux
// 1-Wire driver (w1-therm): /sys/bus/w1/devices/28-*/w1_slave. The sysfs
// root is an option, so tests read fixture directories.
//
// # Wiring on a Raspberry Pi header
//
//	DS18B20          Pi header
//	VDD (red)        pin 1 (3V3)
//	GND (black)      pin 6 or 9 (GND)
//	DQ (yellow)      pin 7 (GPIO4), with 4.7 kΩ from DQ to 3V3
//
// Enable the bus with dtoverlay=w1-gpio in config.txt (gpiopin=N for
// another GPIO); the kernel then lists each probe as
// /sys/bus/w1/devices/28-…. The pull-up is required: probe modules with
// a terminal block usually carry it, bare and waterproof probes do not.
// Power each probe from 3V3 rather than in parasite mode (VDD to GND).
// Several probes share the one data line, each known by its 64-bit id
// (set device = "28-…" to choose one). Run them along one cable, not in a
// star: a twisted pair (DQ with GND) carries the bus for tens of metres;
// on runs longer than about 10 m a stronger pull-up (2.2 kΩ) helps.
package ds18b20

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"periph.io/x/conn/v3/physic"

	"github.com/fieldgate/fieldgate/sensors"
)

// Errors a reading can end in.
var (
	ErrCRC      = errors.New("ds18b20: CRC check failed (crc=… NO)")
	ErrPowerOn  = errors.New("ds18b20: 85 °C power-on value: the conversion did not run (power or wiring)")
	ErrNotFound = errors.New("ds18b20: no probe found")
)

// Dev is one probe.
type Dev struct {
	path string // its w1_slave file
	ID   string // e.g. 28-0000075b1234
}

// Probes lists the DS18B20 probes under sysRoot ("/sys" on a device).
func Probes(sysRoot string) ([]string, error) {
	m, err := filepath.Glob(filepath.Join(sysRoot, "bus", "w1", "devices", "28-*"))
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(m))
	for _, p := range m {
		ids = append(ids, filepath.Base(p))
	}
	sort.Strings(ids)
	return ids, nil
}

// New opens probe id under sysRoot; an empty id takes the only probe there
// is, and is an error when there are none or several.
func New(sysRoot, id string) (*Dev, error) {
	if id == "" {
		ids, err := Probes(sysRoot)
		if err != nil {
			return nil, err
		}
		switch len(ids) {
		case 0:
			return nil, sensors.Absent(fmt.Errorf("%w under %s/bus/w1/devices (is the w1-gpio overlay on?)", ErrNotFound, sysRoot))
		case 1:
			id = ids[0]
		default:
			return nil, fmt.Errorf("ds18b20: %d probes (%s): set device to one of them", len(ids), strings.Join(ids, ", "))
		}
	}
	p := filepath.Join(sysRoot, "bus", "w1", "devices", id, "w1_slave")
	if _, err := os.Stat(p); err != nil {
		return nil, absent(fmt.Errorf("ds18b20: probe %s: %w", id, err))
	}
	return &Dev{path: p, ID: id}, nil
}

// Sense reads the temperature. The kernel runs a conversion on each read
// (about 750 ms at 12 bits).
func (d *Dev) Sense(e *physic.Env) error {
	data, err := os.ReadFile(d.path)
	if err != nil {
		return absent(fmt.Errorf("ds18b20: %s: %w", d.ID, err))
	}
	t, err := parse(string(data))
	if err != nil {
		return fmt.Errorf("%s: %w", d.ID, err)
	}
	e.Temperature = physic.ZeroCelsius + physic.Temperature(t)*physic.MilliCelsius
	return nil
}

// parse reads w1_slave's two lines: "… : crc=xx YES" then "… t=23125"
// (millidegrees).
func parse(s string) (int64, error) {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) != 2 {
		return 0, fmt.Errorf("ds18b20: unexpected w1_slave content %q", s)
	}
	if !strings.HasSuffix(strings.TrimSpace(lines[0]), "YES") {
		return 0, ErrCRC
	}
	_, v, ok := strings.Cut(lines[1], "t=")
	if !ok {
		return 0, fmt.Errorf("ds18b20: no t= in %q", lines[1])
	}
	t, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("ds18b20: bad t= in %q", lines[1])
	}
	if t == 85000 {
		return 0, ErrPowerOn
	}
	return t, nil // the loop drops what is outside the chip's range
}

// absent marks err as a probe that is not there: the kernel lists no such
// device (it drops a probe that stops answering) or has no such node.
func absent(err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENODEV) || errors.Is(err, syscall.ENXIO) {
		return sensors.Absent(err)
	}
	return err
}

// ranges is the DS18B20's measuring range (datasheet, page 1).
var ranges = map[string]sensors.Range{"temperature": {Min: -55, Max: 125}}

// Halt does nothing.
func (d *Dev) Halt() error { return nil }

func init() {
	sensors.Register("ds18b20", func(c sensors.Config) (sensors.Sensor, error) {
		root := c.SysRoot
		if root == "" {
			root = "/sys"
		}
		d, err := New(root, c.Device)
		if err != nil {
			return nil, err
		}
		return sensors.FromEnv(d, sensors.Quantities{Temperature: true, Ranges: ranges}), nil
	})
}
