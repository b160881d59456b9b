package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/fieldgate/fieldgate/sensors"
)

// metrics serves Prometheus metrics on /metrics and the uplink's health on
// /healthz, on a loopback address.
type metrics struct {
	g       *Gateway
	srv     *http.Server
	ln      net.Listener
	now     func() time.Time
	reloads *rate.Limiter // POST /reload: a few at once, then one a second
}

// flowStall is how long the uplink may be connected with messages waiting
// and none acknowledged before /healthz says it is not flowing.
const flowStall = time.Minute

func newMetrics(g *Gateway, addr string) (*metrics, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	m := &metrics{g: g, ln: ln, now: time.Now}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", m.serveMetrics)
	mux.HandleFunc("/healthz", m.serveHealth)
	mux.HandleFunc("/status", m.serveStatus)
	mux.HandleFunc("/reload", m.serveReload)
	host, _ := os.Hostname()
	m.srv = &http.Server{Handler: hostCheck(mux, host), ReadHeaderTimeout: 5 * time.Second}
	m.reloads = rate.NewLimiter(1, 5)
	return m, nil
}

// hostCheck refuses a request whose Host is a name other than localhost
// or the device's own (421): a web page whose domain an attacker makes
// resolve to 127.0.0.1 (DNS rebinding) is same-origin for the browser,
// but its requests carry that domain. IP addresses are fine: scrape the
// device by its address.
func hostCheck(next http.Handler, hostname string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Host
		if host, _, err := net.SplitHostPort(h); err == nil {
			h = host
		}
		h = strings.TrimSuffix(strings.Trim(h, "[]"), ".")
		switch {
		case net.ParseIP(h) != nil, strings.EqualFold(h, "localhost"),
			hostname != "" && (strings.EqualFold(h, hostname) || strings.EqualFold(h, hostname+".local")):
			next.ServeHTTP(w, r)
		default:
			http.Error(w, "metrics: unknown host "+r.Host+" (use the device's address)", http.StatusMisdirectedRequest)
		}
	})
}

func (m *metrics) addr() string { return m.ln.Addr().String() }

func (m *metrics) run(ctx context.Context, log *slog.Logger) {
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		m.srv.Shutdown(sctx)
	}()
	if err := m.srv.Serve(m.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("metrics server stopped", "err", err)
	}
}

// ReloadHeader must be on a POST /reload. A web page cannot make a
// browser send it without the server's consent (CORS), so a page opened
// on the device cannot ask for a reload.
const ReloadHeader = "Fieldgate-Reload"

// ReloadAnswer is what POST /reload answers: the file reloaded, what the
// reload applied and what needs a restart, or why it was refused.
type ReloadAnswer struct {
	Config string `json:"config"`
	ReloadResult
	Error string `json:"error,omitempty"`
}

// serveReload is POST /reload, as SIGHUP does (fieldgate reload). It
// answers only a client on a loopback address, whatever address the
// server listens on: 403 otherwise. A refused reload is 422.
func (m *metrics) serveReload(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "reload: POST only", http.StatusMethodNotAllowed)
		return
	}
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		http.Error(w, "reload: only from the device itself (a loopback address)", http.StatusForbidden)
		return
	}
	if r.Header.Get(ReloadHeader) == "" {
		http.Error(w, "reload: the "+ReloadHeader+" header is missing", http.StatusForbidden)
		return
	}
	if m.reloads != nil && !m.reloads.Allow() {
		http.Error(w, "reload: too many, try again in a second", http.StatusTooManyRequests)
		return
	}
	res, err := m.g.ReloadReport()
	a := ReloadAnswer{Config: m.g.cfg.Path, ReloadResult: res}
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		a.Error = err.Error()
		w.WriteHeader(http.StatusUnprocessableEntity)
	}
	json.NewEncoder(w).Encode(a)
}

// health says whether the uplink is flowing: connected, and either nothing
// waits or something was acknowledged lately.
func (m *metrics) health() (bool, string) {
	b := m.g.bridge
	if err := m.g.identityError(); err != nil {
		return false, "identity unusable, the uplink cannot connect: " + err.Error()
	}
	if b == nil && m.g.cfg.Bridge != nil {
		return false, "not provisioned: no device certificate yet, so no uplink"
	}
	if b == nil {
		return true, "no uplink configured"
	}
	st := b.Status()
	switch {
	case !st.Connected:
		return false, "uplink not connected: " + st.LastError
	case st.Queued > 0 && m.now().Sub(st.LastSent) > flowStall && m.now().Sub(m.g.started) > flowStall:
		return false, fmt.Sprintf("uplink connected but stalled: %d messages waiting, none acknowledged for %s", st.Queued, flowStall)
	}
	return true, fmt.Sprintf("uplink flowing: %d messages waiting", st.Queued)
}

func (m *metrics) serveHealth(w http.ResponseWriter, r *http.Request) {
	ok, msg := m.health()
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fmt.Fprintln(w, msg)
}

// Status is what fieldgate status shows, served as JSON on /status.
type Status struct {
	Device      string                    `json:"device"`
	Version     string                    `json:"version"`
	Started     time.Time                 `json:"started"`
	Clients     int64                     `json:"clients"`
	Uplink      *UplinkStatus             `json:"uplink,omitempty"`
	Sensors     map[string]sensors.Status `json:"sensors,omitempty"`
	CertExpires time.Time                 `json:"cert_expires,omitzero"`
	// CertRenewDue is when the certificate is due for renewal.
	CertRenewDue time.Time `json:"cert_renew_due,omitzero"`
}

// UplinkStatus is the bridge's part of Status.
type UplinkStatus struct {
	Connected     bool      `json:"connected"`
	Address       string    `json:"address,omitempty"`
	LastError     string    `json:"last_error,omitempty"`
	Flowing       bool      `json:"flowing"`
	Health        string    `json:"health"`
	Queued        int       `json:"queued"`
	QueuedBytes   int64     `json:"queued_bytes"`
	Oldest        time.Time `json:"oldest,omitzero"`
	Sent          uint64    `json:"sent"`
	Dropped       uint64    `json:"dropped"`
	LastDelivered time.Time `json:"last_delivered,omitzero"`
}

func (m *metrics) status() Status {
	g := m.g
	expiry, renew, _ := g.cert()
	st := Status{Device: g.cfg.Device.ID, Version: Version, Started: g.started, Clients: g.broker.Clients(), CertExpires: expiry, CertRenewDue: renew}
	if l := g.sensorLoop(); l != nil {
		st.Sensors = l.Status()
	}
	if g.bridge != nil {
		b := g.bridge.Status()
		ob := g.outbox.Stats()
		ok, health := m.health()
		var dropped uint64
		for _, n := range ob.Dropped {
			dropped += n
		}
		st.Uplink = &UplinkStatus{Connected: b.Connected, Address: b.Address, LastError: b.LastError, Flowing: ok, Health: health,
			Queued: ob.Messages, QueuedBytes: ob.Bytes, Oldest: ob.Oldest, Sent: b.Sent, Dropped: dropped, LastDelivered: b.LastSent}
	}
	return st
}

func (m *metrics) serveStatus(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(m.status())
}

func (m *metrics) serveMetrics(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	m.write(w)
}

// write writes the metrics in the Prometheus text format.
func (m *metrics) write(w io.Writer) {
	p := promWriter{w: w}
	p.metric("fieldgate_build_info", "gauge", "Version of the running fieldgate.", 1, "version", Version, "goversion", runtime.Version())
	p.metric("fieldgate_start_time_seconds", "gauge", "When the gateway started, in seconds since the epoch.", float64(m.g.started.UnixMilli())/1e3)
	if exp, renew, _ := m.g.cert(); !exp.IsZero() {
		p.metric("fieldgate_certificate_expiry_timestamp_seconds", "gauge", "When the device certificate expires.", float64(exp.Unix()))
		p.metric("fieldgate_certificate_renewal_timestamp_seconds", "gauge", "When the device certificate is due for renewal (identity.renew_after of its lifetime).", float64(renew.Unix()))
		due := 0.0
		if !m.now().Before(renew) {
			due = 1
		}
		p.metric("fieldgate_certificate_renewal_due", "gauge", "1 when the device certificate is due for renewal: run fieldgate provision renew.", due)
	}
	if m.g.outbox != nil {
		st := m.g.outbox.Stats()
		p.metric("fieldgate_outbox_messages", "gauge", "Messages held in the outbox.", float64(st.Messages))
		p.metric("fieldgate_outbox_bytes", "gauge", "Topic and payload bytes held in the outbox.", float64(st.Bytes))
		age := 0.0
		if !st.Oldest.IsZero() {
			age = m.now().Sub(st.Oldest).Seconds()
		}
		p.metric("fieldgate_outbox_oldest_age_seconds", "gauge", "Age of the oldest message in the outbox.", age)
		p.metric("fieldgate_outbox_enqueued_total", "counter", "Messages stored in the outbox.", float64(st.Appended))
		p.metric("fieldgate_outbox_forwarded_total", "counter", "Messages deleted from the outbox after the central broker acknowledged them.", float64(st.Acked))
		reasons := make([]string, 0, len(st.Dropped))
		for r := range st.Dropped {
			reasons = append(reasons, r)
		}
		sort.Strings(reasons)
		p.help("fieldgate_outbox_dropped_total", "counter", "Messages dropped or refused, by reason.")
		for _, r := range reasons {
			p.sample("fieldgate_outbox_dropped_total", float64(st.Dropped[r]), "reason", r)
		}
		p.metric("fieldgate_outbox_commits_total", "counter", "Outbox transactions written; each one fsyncs.", float64(st.Commits))
		p.metric("fieldgate_outbox_commit_seconds_total", "counter", "Time spent writing outbox transactions.", st.CommitTime.Seconds())
	}
	m.writeSensors(p)
	if b := m.g.bridge; b != nil {
		st := b.Status()
		up := 0.0
		if st.Connected {
			up = 1
		}
		p.metric("fieldgate_uplink_connected", "gauge", "1 when the uplink to the central broker is connected.", up)
		p.metric("fieldgate_uplink_connect_attempts_total", "counter", "Connection attempts to the central broker.", float64(st.Attempts))
		p.metric("fieldgate_uplink_connections_total", "counter", "Successful connections to the central broker.", float64(st.Connections))
		p.metric("fieldgate_uplink_sent_total", "counter", "Messages acknowledged by the central broker.", float64(st.Sent))
		p.metric("fieldgate_uplink_redelivered_total", "counter", "Messages sent again after a connection was lost.", float64(st.Resent))
		p.metric("fieldgate_uplink_received_total", "counter", "Messages from the central broker delivered locally.", float64(st.Received))
		p.metric("fieldgate_uplink_qos0_dropped_total", "counter", "QoS 0 messages dropped while offline.", float64(st.DroppedQoS0))
		ok, _ := m.health()
		flowing := 0.0
		if ok {
			flowing = 1
		}
		p.metric("fieldgate_uplink_flowing", "gauge", "1 when the uplink is connected and messages are being acknowledged.", flowing)
	}
}

type promWriter struct{ w io.Writer }

func (p promWriter) help(name, typ, help string) {
	fmt.Fprintf(p.w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
}

func (p promWriter) sample(name string, v float64, labels ...string) {
	var b strings.Builder
	b.WriteString(name)
	if len(labels) > 0 {
		b.WriteByte('{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "%s=%q", labels[i], labels[i+1])
		}
		b.WriteByte('}')
	}
	fmt.Fprintf(p.w, "%s %v\n", b.String(), v)
}

func (p promWriter) metric(name, typ, help string, v float64, labels ...string) {
	p.help(name, typ, help)
	p.sample(name, v, labels...)
}
