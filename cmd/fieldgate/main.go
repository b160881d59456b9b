// Command fieldgate is the Fieldgate edge gateway: it reads the sensors
// wired to the board, runs the site's local MQTT broker and bridges
// selected topics to a central broker over mutual TLS.
//
// Usage:
//
//	fieldgate run [--config FILE]            run the gateway
//	fieldgate check-config [--config FILE]   validate a configuration
//	fieldgate queue stats|peek|purge         inspect the outbox
//	fieldgate provision csr|install|show|renew  the device identity
//	fieldgate passwd [-c|-D|-b|-U] FILE ...  manage a password file
//	fieldgate acl test --acl FILE ...        check an ACL file
//	fieldgate version                        print the version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/fieldgate/fieldgate/gateway"
)

// version is set at build time: -ldflags "-X main.version=…".
var version = "dev"

func main() {
	gateway.Version = version
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: fieldgate <command> [flags]

commands:
  run           run the gateway (broker, sensors, bridge)
  check-config  validate a configuration file and exit
  queue         inspect or purge the outbox (stats, peek, purge)
  status        ask the running gateway what it is doing
  reload        have the running gateway read its configuration again (as SIGHUP)
  sensors read  read each configured sensor once (checking the wiring)
  sensors scan  list what answers on an I²C bus, naming the chips it knows
  provision     the device identity: csr, install, show, renew
  passwd        manage a Mosquitto password file (as mosquitto_passwd)
  acl test      tell whether an ACL file lets a client read or write a topic
  version       print the version

Run "fieldgate <command> -h" for a command's flags.
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "run":
		return cmdRun(rest, stderr)
	case "check-config":
		return cmdCheckConfig(rest, stdout, stderr)
	case "queue":
		return cmdQueue(rest, stdout, stderr)
	case "sensors":
		return cmdSensors(rest, stdout, stderr)
	case "status":
		return cmdStatus(rest, stdout, stderr)
	case "reload":
		return cmdReload(rest, stdout, stderr)
	case "provision":
		return cmdProvision(rest, stdout, stderr)
	case "passwd":
		return cmdPasswd(rest, os.Stdin, stdout, stderr)
	case "acl":
		return cmdACL(rest, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "fieldgate %s %s %s/%s\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "fieldgate: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
}

func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", gateway.DefaultConfigPath, "configuration `file`")
}

func cmdCheckConfig(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := configFlag(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := gateway.LoadConfig(*path)
	if err != nil {
		printConfigError(stderr, err)
		return 1
	}
	if cfg.Unprovisioned {
		fmt.Fprintf(stdout, "%s: ok, not provisioned yet: %s does not exist, so the bridge stays off (fieldgate provision csr, then install)\n", *path, cfg.Identity.Cert)
		return 0
	}
	fmt.Fprintf(stdout, "%s: ok\n", *path)
	return 0
}

// printConfigError prints one line per problem.
func printConfigError(w io.Writer, err error) {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			fmt.Fprintln(w, e)
		}
		return
	}
	fmt.Fprintln(w, err)
}

func cmdRun(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := configFlag(fs)
	level := fs.String("log-level", "info", "log `level`: debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(stderr, "fieldgate: --log-level: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lv}))

	cfg, err := gateway.LoadConfig(*path)
	if err != nil {
		printConfigError(stderr, err)
		return 1
	}
	g, err := gateway.New(cfg, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}

	// The first SIGTERM or SIGINT shuts down in order; a second one, while
	// that is under way, exits at once.
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			g.Reload() // logs what it did, or why not
		}
	}()
	go func() {
		s := <-sigs
		log.Info("signal received, shutting down (send it again to exit at once)", "signal", s.String())
		cancel()
		s = <-sigs
		log.Warn("second signal: exiting without a clean shutdown", "signal", s.String())
		os.Exit(1)
	}()
	if err := g.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("stopped with an error", "err", err)
		return 1
	}
	return 0
}
