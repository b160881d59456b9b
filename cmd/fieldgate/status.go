package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"sort"
	"time"

	"github.com/fieldgate/fieldgate/gateway"
)

// cmdStatus asks the running gateway, on its loopback metrics address,
// what it is doing, and prints it for a person.
func cmdStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := configFlag(fs)
	asJSON := fs.Bool("json", false, "print the JSON the daemon sends")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := gateway.LoadConfig(*path)
	if err != nil {
		printConfigError(stderr, err)
		return 1
	}
	if cfg.Metrics.Address == "" {
		fmt.Fprintf(stderr, "fieldgate status: %s has no [metrics] address: the running gateway cannot be asked\n", *path)
		return 1
	}
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + cfg.Metrics.Address + "/status")
	if err != nil {
		fmt.Fprintf(stderr, "fieldgate status: is the gateway running? %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if *asJSON {
		stdout.Write(body)
		return 0
	}
	var st gateway.Status
	if err := json.Unmarshal(body, &st); err != nil {
		fmt.Fprintf(stderr, "fieldgate status: %v\n", err)
		return 1
	}
	now := time.Now()
	fmt.Fprintf(stdout, "device       %s (fieldgate %s, up %s)\n", st.Device, st.Version, now.Sub(st.Started).Round(time.Second))
	fmt.Fprintf(stdout, "clients      %d connected\n", st.Clients)
	if u := st.Uplink; u != nil {
		state := "down: " + u.LastError
		if u.Connected {
			state = "connected to " + u.Address
		}
		fmt.Fprintf(stdout, "uplink       %s\n", state)
		fmt.Fprintf(stdout, "health       %s\n", u.Health)
		fmt.Fprintf(stdout, "outbox       %d messages, %d bytes", u.Queued, u.QueuedBytes)
		if !u.Oldest.IsZero() {
			fmt.Fprintf(stdout, ", oldest %s ago", now.Sub(u.Oldest).Round(time.Second))
		}
		fmt.Fprintf(stdout, "; %d sent, %d dropped\n", u.Sent, u.Dropped)
	} else {
		fmt.Fprintln(stdout, "uplink       none configured")
	}
	names := make([]string, 0, len(st.Sensors))
	for n := range st.Sensors {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		s := st.Sensors[n]
		line := fmt.Sprintf("%s since %s", s.State, s.Since.Local().Format(time.DateTime))
		if s.Error != "" {
			line += ": " + s.Error
		}
		fmt.Fprintf(stdout, "sensor       %s: %s\n", n, line)
	}
	if !st.CertExpires.IsZero() {
		fmt.Fprintf(stdout, "certificate  expires %s (in %d days)", st.CertExpires.Format(time.DateOnly), int(st.CertExpires.Sub(now).Hours()/24))
		if !st.CertRenewDue.IsZero() && !now.Before(st.CertRenewDue) {
			fmt.Fprint(stdout, ", due for renewal: fieldgate provision renew")
		}
		fmt.Fprintln(stdout)
	}
	return 0
}
