package gateway

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// chanHandler sends the message of every record to ch, and passes the
// record on to next.
type chanHandler struct {
	slog.Handler
	ch chan<- string
}

func (h chanHandler) Handle(ctx context.Context, r slog.Record) error {
	select {
	case h.ch <- r.Message:
	default:
	}
	return h.Handler.Handle(ctx, r)
}

func (h chanHandler) WithAttrs(a []slog.Attr) slog.Handler {
	return chanHandler{h.Handler.WithAttrs(a), h.ch}
}

func (h chanHandler) WithGroup(n string) slog.Handler {
	return chanHandler{h.Handler.WithGroup(n), h.ch}
}

// The device certificate (valid from an hour ago for 25 hours) is due for
// renewal after 2 % of its life, not after 50 %: the log and the metrics
// say which.
func TestRenewalWarning(t *testing.T) {
	c := startCentral(t)
	for _, tc := range []struct {
		renewAfter float64
		due        bool
	}{{0.02, true}, {0.5, false}} {
		cfg := writeConfig(t, c, c.ca.CertFile)
		cfg.Identity.RenewAfter = tc.renewAfter
		msgs := make(chan string, 1000)
		g, err := New(cfg, slog.New(chanHandler{testLogger(t).Handler(), msgs}))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- g.Run(ctx) }()

		// The warning comes, if at all, at start: before the uplink connects.
		warned := false
		deadline := time.After(20 * time.Second)
		for connected := false; !connected; {
			select {
			case m := <-msgs:
				warned = warned || strings.Contains(m, "due for renewal")
				connected = strings.Contains(m, "uplink connected")
			case <-deadline:
				t.Fatal("the uplink did not connect")
			}
		}
		if warned != tc.due {
			t.Errorf("renew_after %v: warned %v, want %v", tc.renewAfter, warned, tc.due)
		}
		_, text := get(t, "http://"+g.MetricsAddr()+"/metrics")
		want := 0.0
		if tc.due {
			want = 1
		}
		if got := metricValue(t, text, "fieldgate_certificate_renewal_due"); got != want {
			t.Errorf("renew_after %v: fieldgate_certificate_renewal_due %v, want %v", tc.renewAfter, got, want)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
