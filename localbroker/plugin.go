package localbroker

import (
	"crypto/x509"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Authorizer is the broker's extension point, in the manner of Mosca's
// authenticate, authorizePublish and authorizeSubscribe: Go code linked
// into the gateway decides, per connection, publish and subscription,
// after the password file, the client certificate and the ACL file have.
// Each method gets the files' verdict (builtin) and returns the one that
// stands: returning builtin changes nothing. The methods are called from
// the clients' goroutines, concurrently, and must not block for long.
type Authorizer interface {
	// Authenticate decides whether c may connect.
	Authenticate(c ClientInfo, password []byte, builtin bool) bool
	// AuthorizePublish decides whether c may publish payload on topic.
	AuthorizePublish(c ClientInfo, topic string, payload []byte, builtin bool) bool
	// AuthorizeSubscribe decides whether c may subscribe to filter. Each
	// message then delivered is still checked against the ACL file.
	AuthorizeSubscribe(c ClientInfo, filter string, builtin bool) bool
}

// ClientInfo is what an Authorizer knows of a client.
type ClientInfo struct {
	ID       string
	Username string // after use_identity_as_username, the certificate's CN
	Remote   string // host:port
	Listener string // the listener's name in the broker (tcp0, tls1, …)
	// ProtocolVersion is 3 (3.1), 4 (3.1.1) or 5.
	ProtocolVersion byte
	// Certificate is the client's certificate, on a TLS listener that
	// asked for one; nil otherwise.
	Certificate *x509.Certificate
}

func clientInfo(cl *mqtt.Client) ClientInfo {
	ci := ClientInfo{ID: cl.ID, Username: string(cl.Properties.Username), Remote: remoteAddr(cl), Listener: cl.Net.Listener, ProtocolVersion: cl.Properties.ProtocolVersion}
	if tc, ok := tlsConn(cl.Net.Conn); ok {
		if cs := tc.ConnectionState(); len(cs.PeerCertificates) > 0 {
			ci.Certificate = cs.PeerCertificates[0]
		}
	}
	return ci
}

// deniedPrefix marks, in OnSubscribe, a filter the Authorizer refused, so
// that mochi's ACL check of the same filter, which follows, refuses it
// with its usual reason code (0x87; 0x80 for 3.1.1). No topic a client
// sends can start with it: MQTT strings may not hold U+0000.
const deniedPrefix = "\x00fieldgate-denied/"

// OnSubscribe asks the Authorizer about each filter of a SUBSCRIBE.
func (h *gateHook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if h.authz == nil || cl.Net.Inline {
		return pk
	}
	filters := make(packets.Subscriptions, len(pk.Filters))
	copy(filters, pk.Filters)
	ci := clientInfo(cl)
	for i, f := range filters {
		if !h.authz.AuthorizeSubscribe(ci, f.Filter, h.aclAllows(cl, f.Filter, false)) {
			filters[i].Filter = deniedPrefix + f.Filter
		}
	}
	pk.Filters = filters
	return pk
}

// authorizePublish asks the Authorizer about a publish; false when it
// refuses.
func (h *gateHook) authorizePublish(cl *mqtt.Client, pk packets.Packet) bool {
	return h.authz.AuthorizePublish(clientInfo(cl), pk.TopicName, pk.Payload, h.aclAllows(cl, pk.TopicName, true))
}

func isDenied(topic string) bool { return strings.HasPrefix(topic, deniedPrefix) }
