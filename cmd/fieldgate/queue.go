package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"
	"unicode/utf8"

	berrors "go.etcd.io/bbolt/errors"

	"github.com/fieldgate/fieldgate/bridge/outbox"
	"github.com/fieldgate/fieldgate/gateway"
)

const queueUsage = `usage: fieldgate queue <stats|peek|purge> [--config FILE] [flags]

  stats              messages, bytes and oldest age, per route
  peek [-n N]        the first N messages of each route (default 10)
  purge --route R    delete a route's messages (--all: every route);
                     the gateway must be stopped
`

// cmdQueue inspects the outbox. It opens the file read-only except for
// purge; a running gateway holds the file, and then the answer is to
// stop it or to read its /metrics.
func cmdQueue(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, queueUsage)
		return 2
	}
	sub := args[0]
	fs := flag.NewFlagSet("queue "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := configFlag(fs)
	n := fs.Int("n", 10, "messages to show per route (peek)")
	route := fs.String("route", "", "route to purge (purge)")
	all := fs.Bool("all", false, "purge every route (purge)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	cfg, err := gateway.LoadConfig(*path)
	if err != nil {
		printConfigError(stderr, err)
		return 1
	}
	file := filepath.Join(cfg.Device.StateDir, "outbox.db")
	log := slog.New(slog.NewTextHandler(stderr, nil))
	readOnly := sub != "purge"
	if sub == "purge" && (*route == "") == !*all {
		fmt.Fprintln(stderr, "fieldgate queue purge: give either --route R or --all")
		return 2
	}
	if _, err := os.Stat(file); err != nil {
		fmt.Fprintf(stderr, "fieldgate queue: %v\n", err)
		return 1
	}
	ob, err := outbox.Open(file, &outbox.Options{ReadOnly: readOnly}, log)
	if errors.Is(err, berrors.ErrTimeout) {
		if sub == "stats" && cfg.Metrics.Address != "" {
			// The running gateway holds the file: ask it instead.
			return cmdStatus([]string{"--config", *path}, stdout, stderr)
		}
		fmt.Fprintf(stderr, "fieldgate queue: %s is held by a running fieldgate: stop it first, or use fieldgate status\n", file)
		return 1
	}
	if err != nil {
		fmt.Fprintf(stderr, "fieldgate queue: %v\n", err)
		return 1
	}
	defer ob.Close()

	switch sub {
	case "stats":
		st := ob.Stats()
		fmt.Fprintf(stdout, "outbox   %s\nmessages %d\nbytes    %d\n", file, st.Messages, st.Bytes)
		if !st.Oldest.IsZero() {
			fmt.Fprintf(stdout, "oldest   %s (%s ago)\n", st.Oldest.UTC().Format(time.RFC3339), time.Since(st.Oldest).Round(time.Second))
		}
		for _, r := range ob.Routes() {
			fmt.Fprintf(stdout, "route    %-40q %d\n", r, st.Routes[r])
		}
	case "peek":
		for _, r := range ob.Routes() {
			ms, err := ob.Read(r, 0, *n)
			if err != nil {
				fmt.Fprintf(stderr, "fieldgate queue: %v\n", err)
				return 1
			}
			fmt.Fprintf(stdout, "route %q\n", r)
			for _, m := range ms {
				fmt.Fprintf(stdout, "  #%d %s q%d %s %s\n", m.Seq, m.Time.UTC().Format(time.RFC3339Nano), m.QoS, m.Topic, printable(m.Payload, 80))
			}
		}
	case "purge":
		got, err := ob.Purge(*route)
		if err != nil {
			fmt.Fprintf(stderr, "fieldgate queue: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "purged %d messages\n", got)
	default:
		fmt.Fprintf(stderr, "fieldgate queue: unknown subcommand %q\n\n%s", sub, queueUsage)
		return 2
	}
	return 0
}

// printable shows a payload as text when it is, quoted, cut to max bytes.
func printable(p []byte, max int) string {
	cut := ""
	if len(p) > max {
		p, cut = p[:max], "…"
	}
	if utf8.Valid(p) {
		return strconv.Quote(string(p)) + cut
	}
	return fmt.Sprintf("%x%s (%d bytes, binary)", p, cut, len(p))
}
