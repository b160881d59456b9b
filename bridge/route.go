package bridge

import (
	"errors"
	"fmt"
	"strings"

	"github.com/fieldgate/fieldgate/bridge/outbox"
)

// Direction says which way a route carries messages.
type Direction int

// Directions.
const (
	Out  Direction = 1 << iota // local broker → central broker
	In                         // central broker → local broker
	Both = Out | In
)

func (d Direction) String() string {
	switch d {
	case Out:
		return "out"
	case In:
		return "in"
	case Both:
		return "both"
	}
	return fmt.Sprintf("Direction(%d)", int(d))
}

// ParseDirection parses "out", "in" or "both".
func ParseDirection(s string) (Direction, error) {
	switch s {
	case "out":
		return Out, nil
	case "in":
		return In, nil
	case "both":
		return Both, nil
	}
	return 0, fmt.Errorf("want out, in or both, got %q", s)
}

// Route maps topics between the brokers as a Mosquitto bridge's "topic"
// line does: local topic LocalPrefix+T is Prefix+T on the central broker,
// for every T matching Local.
type Route struct {
	Local       string // topic filter, e.g. "sensors/#"
	Direction   Direction
	LocalPrefix string // e.g. "site/"; usually empty
	Prefix      string // remote prefix with %d already expanded, e.g. "devices/EGW-0001/"
	QoS         byte

	// Policy applies when the outbox is full.
	Policy outbox.Policy
	// DropQoS0Offline drops QoS 0 messages while the uplink is down
	// instead of storing them.
	DropQoS0Offline bool
	// ID names the route's queue in the outbox. Default: Local and
	// Prefix, so a route keeps its backlog across restarts as long as
	// neither changes.
	ID string
}

func (r *Route) defaultID() string { return r.LocalPrefix + r.Local + " " + r.Prefix }

// MatchLocal reports whether local topic t is carried by the route.
func (r *Route) MatchLocal(t string) bool {
	return strings.HasPrefix(t, r.LocalPrefix) && Match(r.Local, t[len(r.LocalPrefix):])
}

// ExpandPrefix replaces %d in a configured remote prefix by the device id.
func ExpandPrefix(prefix, deviceID string) string {
	return strings.ReplaceAll(prefix, "%d", deviceID)
}

// RemoteTopic is the central broker's topic for local topic t, which
// MatchLocal accepted.
func (r *Route) RemoteTopic(t string) string { return r.Prefix + t[len(r.LocalPrefix):] }

// RemoteFilter is the filter to subscribe to on the central broker for an
// "in" route.
func (r *Route) RemoteFilter() string { return r.Prefix + r.Local }

// LocalTopic is the local topic for a topic received from the central
// broker, and false if t is not under the route's prefix.
func (r *Route) LocalTopic(t string) (string, bool) {
	if !strings.HasPrefix(t, r.Prefix) {
		return "", false
	}
	rest := t[len(r.Prefix):]
	if rest == "" || !Match(r.Local, rest) {
		return "", false
	}
	return r.LocalPrefix + rest, true
}

// ValidateFilter checks an MQTT topic filter as the spec defines it: '#'
// only as the whole last level, '+' only as a whole level.
func ValidateFilter(f string) error {
	if f == "" {
		return errors.New("empty topic filter")
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return fmt.Errorf("%q: '#' must be the whole last level", f)
		}
		if strings.Contains(l, "+") && l != "+" {
			return fmt.Errorf("%q: '+' must be a whole level", f)
		}
	}
	return nil
}

// ValidatePrefix checks a remote prefix: a topic fragment without
// wildcards, empty or ending in '/'.
func ValidatePrefix(p string) error {
	if strings.ContainsAny(p, "+#") {
		return fmt.Errorf("%q: no wildcards in a prefix", p)
	}
	if p != "" && !strings.HasSuffix(p, "/") {
		return fmt.Errorf("%q: a prefix must end with '/'", p)
	}
	if strings.HasPrefix(p, "$") {
		return fmt.Errorf("%q: a prefix must not start with '$'", p)
	}
	return nil
}

// Match reports whether topic matches filter, per MQTT 3.1.1 §4.7: '+'
// matches one level, '#' the rest (including the parent level), and
// wildcards at the first level do not match topics starting with '$'.
func Match(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	for {
		f, frest, fmore := strings.Cut(filter, "/")
		if f == "#" {
			return true
		}
		t, trest, tmore := strings.Cut(topic, "/")
		if f != "+" && f != t {
			return false
		}
		if !fmore || !tmore {
			// "a/#" matches "a": the next filter level is a lone '#'.
			return fmore == tmore || (fmore && frest == "#")
		}
		filter, topic = frest, trest
	}
}
