package localbroker

import (
	"net"
	"strings"
	"sync"
	"time"
)

// Security is who may connect and what they may do. The zero value lets
// nobody in.
type Security struct {
	// AllowAnonymous lets clients without a username connect. Default
	// false, unlike Mosquitto 1.x.
	AllowAnonymous bool
	// Passwords verifies username and password; nil refuses every
	// client that sends a username.
	Passwords *PasswordFile
	// ACL decides what a client may publish and subscribe to. Nil lets
	// every client that got in use every topic, as Mosquitto does without
	// an acl_file.
	ACL *ACL
	// ClientIDPrefixes, if any, are the prefixes a client id must start
	// with (Mosquitto's clientid_prefixes).
	ClientIDPrefixes []string
}

// allowedClientID applies ClientIDPrefixes.
func (s *Security) allowedClientID(id string) bool {
	if len(s.ClientIDPrefixes) == 0 {
		return true
	}
	for _, p := range s.ClientIDPrefixes {
		if strings.HasPrefix(id, p) {
			return true
		}
	}
	return false
}

// refusalLog logs a refused client once per remote host and reason per
// minute: a device retrying a wrong password every second must not fill
// the journal.
type refusalLog struct {
	mu   sync.Mutex
	last map[string]time.Time
	now  func() time.Time
}

func (r *refusalLog) allow(remote, reason string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	k := host + "\x00" + reason
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last == nil {
		r.last = map[string]time.Time{}
	}
	now := r.now()
	if t, ok := r.last[k]; ok && now.Sub(t) < time.Minute {
		return false
	}
	if len(r.last) > 4096 { // bounded, whoever knocks
		clear(r.last)
	}
	r.last[k] = now
	return true
}
