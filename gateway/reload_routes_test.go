package gateway

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fieldgate/fieldgate/bridge"
	"github.com/fieldgate/fieldgate/localbroker"
)

// SIGHUP with new routes: readings go out under the new prefix at once,
// and the bridge subscribes on the central broker to what the new "in"
// route carries instead of the old one — on a new connection made before
// the old one is left.
func TestReloadRoutes(t *testing.T) {
	c := startCentral(t)
	observer, arrived := c.observe(t, "#")
	cfg := writeConfig(t, c, c.ca.CertFile)
	g := startGateway(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	await := func(prefix string) {
		t.Helper()
		for {
			select {
			case m := <-arrived:
				if strings.HasPrefix(m.Topic(), prefix) {
					return
				}
			case <-ctx.Done():
				t.Fatalf("nothing arrived under %s; bridge status %+v", prefix, g.Bridge().Status())
			}
		}
	}
	await("devices/EGW-E2E-1/sensors/")
	if _, err := g.Bridge().Wait(ctx, func(st bridge.Status) bool { return st.Connected }); err != nil {
		t.Fatal(err)
	}
	before := g.Bridge().Status().Connections

	data, err := os.ReadFile(cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	src := strings.Replace(string(data), "local = \"sensors/#\"\ndirection = \"out\"\nremote_prefix = \"devices/%d/\"", "local = \"sensors/#\"\ndirection = \"out\"\nremote_prefix = \"site/%d/\"", 1)
	src = strings.Replace(src, "local = \"commands/#\"", "local = \"orders/#\"", 1)
	src = strings.Replace(src, "[bridge]\n", "[bridge]\nkeepalive = \"20s\"\n", 1)
	if src == string(data) {
		t.Fatal("the test did not change the configuration")
	}
	os.WriteFile(cfg.Path, []byte(src), 0o600)
	if err := g.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := g.Bridge().Routes(); len(got) != 2 || got[0].Prefix != "site/EGW-E2E-1/" || got[1].Local != "orders/#" {
		t.Fatalf("routes after reload: %+v", got)
	}
	await("site/EGW-E2E-1/sensors/")

	// The new subscription is made on a new connection.
	st, err := g.Bridge().Wait(ctx, func(st bridge.Status) bool { return st.Resubscribes == 1 && st.Connected })
	if err != nil {
		t.Fatal(err)
	}
	if st.Connections <= before {
		t.Errorf("connections %d, want more than %d", st.Connections, before)
	}
	local := make(chan localbroker.Message, 10)
	for _, f := range []string{"orders/#", "commands/#"} {
		if err := g.Subscribe(f, 1, func(m localbroker.Message) { local <- m }); err != nil {
			t.Fatal(err)
		}
	}
	for _, topic := range []string{"devices/EGW-E2E-1/commands/old", "devices/EGW-E2E-1/orders/new"} {
		if tok := observer.Publish(topic, 1, false, "x"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %s: %v", topic, tok.Error())
		}
	}
	// Both went through one connection in order: the first to arrive
	// locally must be the new route's.
	select {
	case m := <-local:
		if m.Topic != "orders/new" {
			t.Errorf("arrived locally: %s, want orders/new (the old route's commands/# is gone)", m.Topic)
		}
	case <-ctx.Done():
		t.Fatal("nothing came in on the new route")
	}

	if got := bridgeRestartChanges(cfg, mustLoad(t, cfg.Path)); !slices.Equal(got, []string{"bridge.keepalive"}) {
		t.Errorf("restart changes %v, want [bridge.keepalive]", got)
	}
}

func mustLoad(t *testing.T, path string) *Config {
	t.Helper()
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
