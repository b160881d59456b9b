package bridge

import (
	"encoding/binary"
	"errors"
	"sync"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/fieldgate/fieldgate/bridge/outbox"
)

// The drain's publishes go out beside paho, on paho's connection.
//
// paho hands each publish between three goroutines and sets a timer for
// it, and hands each PUBACK between two more: at thousands of messages a
// second that was a good part of the gateway's work, and of the time a
// message spends in flight. So the drain's messages are encoded with
// paho's packets package and written to the socket (a watchedConn, which
// takes each packet whole, in one Write), with packet ids from a range
// paho never reaches on one connection; their PUBACKs are taken out of the
// stream before paho reads it. paho still owns the connection: CONNECT,
// keepalive, subscriptions and what comes in on them, the birth message and
// the will.

// firstOwnID is the first packet id of the bridge's own publishes. paho
// gives ids from 1 upward, a few a connection (subscriptions, the birth
// message, the checkpoint's fence), and every connection has a new paho
// client; the bridge's ids run from here to 65535 and round again.
const firstOwnID = 1 << 15

// MaxWindow is the most messages the drain may have in flight, a
// checkpoint among them: one per packet id of its range.
const MaxWindow = 1<<16 - firstOwnID

// errNoID is a publish's error when every id is waiting for its PUBACK,
// which a window of at most MaxWindow never meets.
var errNoID = errors.New("no packet id free for a publish")

// token is what the drain waits for: the PUBACK of a publish, or for QoS
// 0 its write. paho's tokens are one too.
type token interface {
	Done() <-chan struct{}
	Error() error
}

// sent is a publish of the bridge's own, waiting for its PUBACK.
type sent struct {
	done chan struct{}
	err  error
}

func (s *sent) Done() <-chan struct{} { return s.done }
func (s *sent) Error() error          { return s.err }

// acks holds the bridge's publishes that wait for a PUBACK, by packet id.
type acks struct {
	mu      sync.Mutex
	waiting map[uint16]*sent
	last    uint16 // the id given last
}

// add gives s a packet id that no publish waiting has, or 0 when there
// is none.
func (a *acks) add(s *sent) uint16 {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.waiting == nil {
		a.waiting = map[uint16]*sent{}
	}
	if len(a.waiting) >= MaxWindow {
		return 0
	}
	for {
		a.last++
		if a.last < firstOwnID {
			a.last = firstOwnID
		}
		if _, busy := a.waiting[a.last]; !busy {
			a.waiting[a.last] = s
			return a.last
		}
	}
}

// remove forgets id, whose publish did not go out, telling whether it
// was still waiting (a broker could answer an id it was never sent).
func (a *acks) remove(id uint16) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.waiting[id]
	delete(a.waiting, id)
	return ok
}

// complete ends the wait of the publish with id, telling whether there was
// one: a PUBACK for any other id is paho's.
func (a *acks) complete(id uint16) bool {
	a.mu.Lock()
	s := a.waiting[id]
	delete(a.waiting, id)
	a.mu.Unlock()
	if s == nil {
		return false
	}
	close(s.done)
	return true
}

// publish writes m to the central broker. Its token is done when the
// PUBACK comes (QoS 1) or once it is written (QoS 0), or with an error if
// the write failed; it is never done if the connection is lost before the
// PUBACK.
func (c *watchedConn) publish(m outbox.Message) token {
	s := &sent{done: make(chan struct{})}
	pk := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	// Routes take QoS 0 or 1; the checkpoint is QoS 1.
	pk.Qos, pk.Retain, pk.TopicName, pk.Payload = min(m.QoS, 1), m.Retain, m.Topic, m.Payload
	if pk.Qos > 0 {
		// Known before it is written: the PUBACK may come at once.
		if pk.MessageID = c.acks.add(s); pk.MessageID == 0 {
			s.err = errNoID
			close(s.done)
			return s
		}
	}
	if err := pk.Write(c); err != nil {
		if pk.Qos == 0 || c.acks.remove(pk.MessageID) {
			s.err = err
			close(s.done)
		}
		return s
	}
	if pk.Qos == 0 {
		close(s.done)
	}
	return s
}

// ackFilter follows the packets coming from the central broker, by their
// fixed headers, and takes out the PUBACKs of the bridge's own publishes.
// paho reads, and decodes, what is left.
type ackFilter struct {
	hdr  []byte // a fixed header being read (for a PUBACK, with its id)
	left int    // bytes still to pass on of the packet under way
	skip int    // bytes still to drop of a PUBACK taken (a reason code, properties)
	out  []byte // for paho, from off on
	off  int
	// bad is set by a header no MQTT packet has: from there everything
	// goes to paho, which ends the connection on it.
	bad bool
}

// feed takes bytes read from the socket. take is asked about each PUBACK's
// id, and tells whether it was for the bridge.
func (f *ackFilter) feed(in []byte, take func(uint16) bool) {
	if f.off == len(f.out) {
		f.out, f.off = f.out[:0], 0
	}
	for len(in) > 0 {
		if f.bad {
			f.out = append(f.out, in...)
			return
		}
		if f.left > 0 {
			k := min(f.left, len(in))
			f.out = append(f.out, in[:k]...)
			in, f.left = in[k:], f.left-k
			continue
		}
		if f.skip > 0 {
			k := min(f.skip, len(in))
			in, f.skip = in[k:], f.skip-k
			continue
		}
		f.hdr = append(f.hdr, in[0])
		in = in[1:]
		if len(f.hdr) < 2 {
			continue
		}
		rl, n, ok := remainingLength(f.hdr[1:])
		switch {
		case !ok && len(f.hdr) == 5: // four length bytes, each saying more follow
			f.bad = true
			f.out = append(f.out, f.hdr...)
			f.hdr = f.hdr[:0]
			continue
		case !ok:
			continue
		case f.hdr[0]>>4 == packets.Puback && rl >= 2:
			// paho reads the id of a PUBACK whatever its flags, and
			// ignores what follows it (MQTT 5's reason code and
			// properties, which a broker may send a 3.1.1 client).
			if len(f.hdr) < 1+n+2 {
				continue // its id is still to come
			}
			if take(binary.BigEndian.Uint16(f.hdr[1+n:])) {
				f.skip = rl - 2
			} else {
				f.out = append(f.out, f.hdr...)
				f.left = rl - 2
			}
			f.hdr = f.hdr[:0]
			continue
		}
		f.out = append(f.out, f.hdr...)
		f.hdr = f.hdr[:0]
		f.left = rl
	}
}

// remainingLength decodes the variable-length remaining length at the
// start of b; ok is false while it is incomplete.
func remainingLength(b []byte) (v, n int, ok bool) {
	for i, c := range b {
		v |= int(c&0x7f) << (7 * i)
		if c&0x80 == 0 {
			return v, i + 1, true
		}
	}
	return 0, 0, false
}
