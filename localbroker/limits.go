package localbroker

import (
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limits keep a misbehaving device from taking the broker down. The zero
// value of a field means its default.
type Limits struct {
	MaxClients    int    // connected at once; default 1000
	MaxPacketSize uint32 // bytes; default 256 KiB
	// MaxInflight is the QoS 1 and 2 messages a client may have
	// unacknowledged towards the broker (MQTT 5 receive maximum).
	// Default 100.
	MaxInflight uint16
	// MaxInflightOut, as Mosquitto's max_inflight_messages, is the QoS 1
	// and 2 messages the broker may have unacknowledged at a client (an
	// MQTT 5 client's own receive maximum if smaller). 0: no bound but
	// that receive maximum. (Mosquitto's default is 20; a window costs
	// throughput to a subscriber whose acknowledgements come late, see
	// README.)
	MaxInflightOut uint16
	// MaxQueued is the messages waiting to be written to a slow client
	// before more are dropped. Default 1000.
	MaxQueued int32
	// MaxPublishRate is messages per second a client may publish, with a
	// burst of as many; beyond it MQTT 5 gets 0x96 and 3.1.1 publishes
	// are dropped. 0: no limit.
	MaxPublishRate float64
	// MaxAuthFailures is failed logins per source address per minute
	// before that address is refused outright. Default 10.
	MaxAuthFailures int
	// MaxKeepalive, if set, bounds the keepalive a client may ask for
	// (0, no keepalive, counts as unbounded), as Mosquitto's
	// max_keepalive: an MQTT 5 client is told the server's value, an
	// MQTT 3.1.1 client asking for more is refused.
	MaxKeepalive time.Duration
}

func (l *Limits) withDefaults() Limits {
	d := *l
	if d.MaxClients <= 0 {
		d.MaxClients = 1000
	}
	if d.MaxPacketSize == 0 {
		d.MaxPacketSize = 256 << 10
	}
	if d.MaxInflight == 0 {
		d.MaxInflight = 100
	}
	if d.MaxQueued <= 0 {
		d.MaxQueued = 1000
	}
	if d.MaxAuthFailures <= 0 {
		d.MaxAuthFailures = 10
	}
	return d
}

// authFailures counts failed logins per source address over the last
// minute. A TCP connection that sends no CONNECT (a health probe) never
// gets here, so it does not count.
type authFailures struct {
	mu    sync.Mutex
	max   int
	now   func() time.Time
	fails map[string][]time.Time
}

func hostOf(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return remote
	}
	return host
}

// blocked reports whether host has failed max times in the last minute.
func (a *authFailures) blocked(host string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.recent(host)) >= a.max
}

func (a *authFailures) fail(host string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fails == nil || len(a.fails) > 4096 { // bounded, whoever knocks
		a.fails = map[string][]time.Time{}
	}
	a.fails[host] = append(a.recent(host), a.now())
}

// recent drops failures older than a minute. a.mu is held.
func (a *authFailures) recent(host string) []time.Time {
	ts := a.fails[host]
	cut := a.now().Add(-time.Minute)
	i := 0
	for i < len(ts) && ts[i].Before(cut) {
		i++
	}
	if i == len(ts) {
		delete(a.fails, host)
		return nil
	}
	a.fails[host] = ts[i:]
	return ts[i:]
}

// publishRates holds a token bucket per client.
type publishRates struct {
	mu    sync.Mutex
	limit rate.Limit
	by    map[string]*rate.Limiter
}

func (p *publishRates) allow(clientID string) bool {
	if p.limit == 0 {
		return true
	}
	p.mu.Lock()
	l, ok := p.by[clientID]
	if !ok {
		l = rate.NewLimiter(p.limit, max(1, int(p.limit)))
		p.by[clientID] = l
	}
	p.mu.Unlock()
	return l.Allow()
}

func (p *publishRates) forget(clientID string) {
	p.mu.Lock()
	delete(p.by, clientID)
	p.mu.Unlock()
}
