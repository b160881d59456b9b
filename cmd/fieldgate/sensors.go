package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"

	"periph.io/x/conn/v3/i2c/i2creg"
	"periph.io/x/host/v3"

	"github.com/fieldgate/fieldgate/gateway"
	"github.com/fieldgate/fieldgate/sensors"
)

// cmdSensors: "sensors read" reads each configured sensor once and prints
// what it got, for an installer checking the wiring.
func cmdSensors(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "scan" {
		return cmdSensorsScan(args[1:], stdout, stderr)
	}
	if len(args) == 0 || args[0] != "read" {
		fmt.Fprintln(stderr, "usage: fieldgate sensors read [--config FILE] | sensors scan [--bus /dev/i2c-1]")
		return 2
	}
	fs := flag.NewFlagSet("sensors read", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := configFlag(fs)
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	cfg, err := gateway.LoadConfig(*path)
	if err != nil {
		printConfigError(stderr, err)
		return 1
	}
	if len(cfg.Sensors) == 0 {
		fmt.Fprintf(stdout, "%s has no [[sensor]]\n", *path)
		return 0
	}
	code := 0
	for _, r := range gateway.ReadSensors(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil))) {
		if r.Err != nil {
			fmt.Fprintf(stdout, "%-12s %-10s FAILED: %v\n", r.Name, r.Driver, r.Err)
			code = 1
			continue
		}
		for _, m := range r.Measurements {
			fmt.Fprintf(stdout, "%-12s %-10s %-12s %s %s\n", r.Name, r.Driver, m.Quantity, strconv.FormatFloat(m.Value, 'f', -1, 64), m.Unit)
		}
	}
	return code
}

// cmdSensorsScan lists what answers on an I²C bus.
func cmdSensorsScan(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sensors scan", flag.ContinueOnError)
	fs.SetOutput(stderr)
	busName := fs.String("bus", "/dev/i2c-1", "I²C `bus`")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if _, err := host.Init(); err != nil {
		fmt.Fprintf(stderr, "fieldgate sensors scan: %v\n", err)
		return 1
	}
	bus, err := i2creg.Open(*busName)
	if err != nil {
		fmt.Fprintf(stderr, "fieldgate sensors scan: cannot open %s (is i2c-dev loaded, and I²C enabled in config.txt?): %v\n", *busName, err)
		return 1
	}
	defer bus.Close()
	found := sensors.Scan(bus)
	for _, f := range found {
		fmt.Fprintf(stdout, "%#02x  %s\n", f.Addr, f.Chip)
	}
	if len(found) == 0 {
		fmt.Fprintf(stdout, "nothing answers on %s\n", *busName)
	}
	return 0
}
