package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"

	"github.com/fieldgate/fieldgate/gateway"
)

// cmdSensors: "sensors read" reads each configured sensor once and prints
// what it got, for an installer checking the wiring.
func cmdSensors(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "read" {
		fmt.Fprintln(stderr, "usage: fieldgate sensors read [--config FILE]")
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
