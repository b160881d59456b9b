package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/fieldgate/fieldgate/gateway"
)

// cmdReload asks the running gateway, on its loopback metrics address, to
// read its configuration again as SIGHUP does, and prints what the reload
// applied, what needs a restart, or why it was refused.
func cmdReload(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("reload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := configFlag(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	// Only the metrics address is read here, so that a configuration
	// the gateway refuses is refused by the gateway, saying why.
	var cfg struct{ Metrics gateway.MetricsConfig }
	src, err := os.ReadFile(*path)
	if err == nil {
		err = toml.Unmarshal(src, &cfg)
	}
	if err != nil {
		fmt.Fprintf(stderr, "fieldgate reload: %s: %v\n", *path, err)
		return 1
	}
	if cfg.Metrics.Address == "" {
		fmt.Fprintf(stderr, "fieldgate reload: %s has no [metrics] address: the running gateway cannot be asked; send it SIGHUP (systemctl reload fieldgate)\n", *path)
		return 1
	}
	req, err := http.NewRequest(http.MethodPost, "http://"+loopbackAddr(cfg.Metrics.Address)+"/reload", nil)
	if err != nil {
		fmt.Fprintf(stderr, "fieldgate reload: %v\n", err)
		return 1
	}
	req.Header.Set(gateway.ReloadHeader, "1")
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "fieldgate reload: is the gateway running? %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var a gateway.ReloadAnswer
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusUnprocessableEntity || json.Unmarshal(body, &a) != nil {
		fmt.Fprintf(stderr, "fieldgate reload: the gateway answered %s: %s\n", resp.Status, strings.TrimSpace(string(body)))
		return 1
	}
	if a.Error != "" {
		fmt.Fprintf(stderr, "reload refused, the running configuration is kept: %s\n", a.Error)
		return 1
	}
	fmt.Fprintf(stdout, "reloaded %s\napplied: %s\n", a.Config, strings.Join(a.Applied, ", "))
	if len(a.NeedRestart) > 0 {
		fmt.Fprintf(stdout, "needs a restart (systemctl restart fieldgate): %s\n", strings.Join(a.NeedRestart, ", "))
	}
	return 0
}

// loopbackAddr is addr with an unspecified host (0.0.0.0, ::, none) made
// 127.0.0.1: the gateway answers /reload only from loopback, and a request
// to the device's own LAN address comes from that address.
func loopbackAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		return net.JoinHostPort("127.0.0.1", port)
	}
	return addr
}
