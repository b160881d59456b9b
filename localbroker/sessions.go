package localbroker

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
	bolt "go.etcd.io/bbolt"
)

// sessionStore keeps persistent sessions in bbolt so that they survive a
// restart: the client (with its will and the time it went away), its
// subscriptions, and its QoS 1 and 2 messages, both those in flight and
// those queued while it was away. Clean sessions (3.1.1 clean session,
// MQTT 5 session expiry 0) are never written.
//
// It is ours rather than mochi's hooks/storage/bolt: that hook commits (and
// fsyncs) once per event, keeps clean sessions too, and fails Init on a
// damaged file. Here changes are gathered in memory, the last change of a
// record wins, and they are committed at most once per sessionFlush; a
// message acknowledged within that time costs no write at all, nor does
// a clean session coming or going (the store knows which records are in
// the file, and deletes only those). A power cut loses at most the last
// second's changes.
//
// mochi resends a resumed session's messages sorted by the low 16 bits of
// their creation second, which mixes up messages queued in the same
// second; the store remembers the order in which each message was queued
// and puts that order back before mochi resends them.
type sessionStore struct {
	mqtt.HookBase
	// aside tells whether the broker's message with a packet id is set
	// aside while a QoS 1 publish of the client with that id is processed
	// (packetids.go): mochi's acknowledgement of that publish, made and
	// completed under the same id, is not the stored message's. Nil: none.
	aside     func(cl *mqtt.Client, id uint16) bool
	db        *bolt.DB
	log       *slog.Logger
	srv       *mqtt.Server
	now       func() time.Time
	expiry    time.Duration // for sessions that set none; 0: never
	maxQueued int

	// persists holds, by client, whether its session outlives its
	// connection (*atomic.Bool), for the hooks that run on other
	// goroutines than the client's reader: mochi's reader changes the
	// session expiry when a DISCONNECT sets it, so they may not read it.
	persists sync.Map

	mu      sync.Mutex
	pending map[string]sessionWrite // by bucket and key
	drops   map[string]bool         // clients whose records go before pending is applied
	seq     uint64                  // order of inflight records
	seqs    map[string]map[uint16]uint64
	away    map[string]int64 // persistent sessions whose client is away: expiry, unix seconds
	loaded  sessionData      // handed to mochi at start
	// disk holds, by client id, the pending keys of the records that are
	// in the file or may be (their commit is under way or failed): a
	// record that never reached it is deleted without a commit.
	disk map[string]map[string]bool

	flushing  bool      // a commit is under way
	failed    int       // commits failed in a row
	errLogged time.Time // when a failed commit was last logged

	// For tests: the commits made; how often to flush (sessionFlush);
	// a func called at the end of each commit's transaction, whose error
	// fails the commit as ENOSPC or EIO would.
	commits    int
	flushEvery time.Duration
	failCommit func(*bolt.Tx) error

	// expiring is held by expireAway while it ends a session, and taken
	// by every connect before mochi looks its client id up (see
	// expireAway).
	expiring sync.Mutex

	kick chan struct{}
	stop chan struct{}
	done chan struct{}
}

// sessionWrite is one pending change; a nil value deletes the record.
type sessionWrite struct {
	bucket []byte
	key    []byte
	client string
	value  storage.Serializable
}

type sessionData struct {
	clients  []storage.Client
	subs     []storage.Subscription
	inflight []storage.Message
}

// sessionRecord is what is stored for a client.
type sessionRecord struct {
	Client storage.Client `json:"client"`
	// Disconnected is when the client went away, unix seconds; 0 while
	// it is connected.
	Disconnected int64 `json:"disconnected,omitempty"`
}

func (r sessionRecord) MarshalBinary() ([]byte, error)  { return json.Marshal(r) }
func (r *sessionRecord) UnmarshalBinary(b []byte) error { return json.Unmarshal(b, r) }

var (
	sessionClients  = []byte("clients")
	sessionSubs     = []byte("subscriptions")
	sessionInflight = []byte("inflight")
)

// sessionFlush is how often session changes are committed.
const sessionFlush = time.Second

// sessionErrorLog is how often a commit that keeps failing is logged.
const sessionErrorLog = time.Minute

// sessionExpiryCheck is how often sessions whose client is away are
// checked for expiry.
const sessionExpiryCheck = 30 * time.Second

// sessionOptions configure a sessionStore.
type sessionOptions struct {
	// Expiry bounds sessions that set no expiry of their own: 3.1.1
	// sessions, and MQTT 5 ones that asked for 0xFFFFFFFF. 0: never.
	Expiry    time.Duration
	MaxQueued int
	Now       func() time.Time
}

func openSessionStore(path string, srv *mqtt.Server, o sessionOptions, log *slog.Logger) (*sessionStore, error) {
	s := &sessionStore{
		log: log, srv: srv, now: o.Now, expiry: o.Expiry, maxQueued: o.MaxQueued,
		pending: map[string]sessionWrite{}, drops: map[string]bool{}, disk: map[string]map[string]bool{},
		seqs: map[string]map[uint16]uint64{}, away: map[string]int64{},
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		flushEvery: sessionFlush,
	}
	if s.now == nil {
		s.now = time.Now
	}
	db, err := openStateFile(path, "session store", [][]byte{sessionClients, sessionSubs, sessionInflight}, s.load, log)
	if err != nil {
		return nil, err
	}
	s.db = db
	s.flush() // what load left out
	go s.writer()
	return s, nil
}

// load reads the stored sessions, leaving out those that expired while
// the broker was stopped and the messages beyond maxQueued; what it
// leaves out is deleted at the first commit.
func (s *sessionStore) load(tx *bolt.Tx) error {
	s.loaded = sessionData{}
	clear(s.away)
	clear(s.seqs)
	clear(s.disk)
	clear(s.pending)
	clear(s.drops)
	now := s.now().Unix()
	expired := 0
	err := tx.Bucket(sessionClients).ForEach(func(k, v []byte) error {
		var r sessionRecord
		if err := r.UnmarshalBinary(v); err != nil || r.Client.ID != string(k) {
			s.log.Warn("stored session unreadable: dropped", "client_id", string(k), "err", err)
			s.drops[string(k)] = true
			return nil
		}
		if r.Disconnected == 0 { // connected when the broker stopped
			r.Disconnected = now
		}
		until := r.Disconnected + s.expirySeconds(&r.Client)
		if until <= now {
			expired++
			s.drops[r.Client.ID] = true
			return nil
		}
		s.away[r.Client.ID] = until
		s.onDisk(r.Client.ID, "c"+r.Client.ID)
		s.loaded.clients = append(s.loaded.clients, r.Client)
		return nil
	})
	if err != nil {
		return err
	}
	err = tx.Bucket(sessionSubs).ForEach(func(k, v []byte) error {
		var sub storage.Subscription
		if err := sub.UnmarshalBinary(v); err != nil {
			s.log.Warn("stored subscription unreadable: dropped", "err", err)
			s.pending["s"+string(k)] = sessionWrite{bucket: sessionSubs, key: k}
			return nil
		}
		if _, ok := s.away[sub.Client]; ok {
			s.onDisk(sub.Client, "s"+string(k))
			s.loaded.subs = append(s.loaded.subs, sub)
		} else {
			s.drops[sub.Client] = true
		}
		return nil
	})
	if err != nil {
		return err
	}
	queued := map[string]int{}
	over := 0
	err = tx.Bucket(sessionInflight).ForEach(func(k, v []byte) error {
		var m storage.Message
		err := m.UnmarshalBinary(v)
		if _, ok := s.away[m.Client]; err != nil || !ok || queued[m.Client] >= s.maxQueued || transientAck(packets.Packet{FixedHeader: m.FixedHeader}) {
			if err == nil && ok && !transientAck(packets.Packet{FixedHeader: m.FixedHeader}) {
				over++
			}
			s.pending["i"+string(k)] = sessionWrite{bucket: sessionInflight, key: k}
			return nil
		}
		queued[m.Client]++
		seq := binary.BigEndian.Uint64(k[len(k)-8:])
		s.seq = max(s.seq, seq)
		s.seqFor(m.Client)[m.PacketID] = seq
		s.onDisk(m.Client, "i"+string(k))
		s.loaded.inflight = append(s.loaded.inflight, m)
		return nil
	})
	if err != nil {
		return err
	}
	if n := len(s.loaded.clients); n > 0 || expired > 0 || over > 0 {
		s.log.Info("persistent sessions restored", "sessions", n, "messages", len(s.loaded.inflight), "expired", expired, "dropped_over_max_queued", over)
	}
	return nil
}

// expirySeconds is how long c's session lives once it has gone away.
func (s *sessionStore) expirySeconds(c *storage.Client) int64 {
	if c.ProtocolVersion == 5 && c.Properties.SessionExpiryInterval != math.MaxUint32 {
		return int64(c.Properties.SessionExpiryInterval)
	}
	if s.expiry == 0 {
		return math.MaxInt64 / 2
	}
	return int64(s.expiry / time.Second)
}

func (s *sessionStore) ID() string { return "fieldgate-sessions" }

func (s *sessionStore) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablish, mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnSubscribed,
		mqtt.OnUnsubscribed, mqtt.OnQosPublish, mqtt.OnQosComplete, mqtt.OnQosDropped,
		mqtt.OnClientExpired, mqtt.OnWillSent,
		mqtt.StoredClients, mqtt.StoredSubscriptions, mqtt.StoredInflightMessages:
		return true
	}
	return false
}

// persistent reports whether cl's session outlives its connection, for
// the client's reader (or a client restored at start, which has none).
// Other goroutines ask isPersistent.
func persistent(cl *mqtt.Client) bool {
	if cl.Net.Inline {
		return false
	}
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

// isPersistent is persistent, as the client's reader last saw it.
func (s *sessionStore) isPersistent(cl *mqtt.Client) bool {
	if v, ok := s.persists.Load(cl); ok {
		return v.(*atomic.Bool).Load()
	}
	return persistent(cl)
}

// notePersistent records persistent(cl) as its session is established;
// only cl's reader calls it.
func (s *sessionStore) notePersistent(cl *mqtt.Client) {
	p := new(atomic.Bool)
	p.Store(persistent(cl))
	s.persists.Store(cl, p)
}

func (s *sessionStore) StoredClients() ([]storage.Client, error) { return s.loaded.clients, nil }

func (s *sessionStore) StoredSubscriptions() ([]storage.Subscription, error) {
	return s.loaded.subs, nil
}

func (s *sessionStore) StoredInflightMessages() ([]storage.Message, error) {
	v := s.loaded.inflight
	s.loaded = sessionData{} // mochi has them now
	return v, nil
}

// OnSessionEstablish puts a resumed session's messages back in the order
// they were queued before mochi resends them. mochi copies them from the
// old client right after this hook (inheritClientSession), whether or not
// the old connection is closed yet: a device whose link died usually
// comes back before the broker has noticed, so it often is not.
func (s *sessionStore) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	// Back: expireAway no longer ends the session, or has ended it.
	s.expiring.Lock()
	s.mu.Lock()
	delete(s.away, cl.ID)
	s.mu.Unlock()
	s.expiring.Unlock()
	old, ok := s.srv.Clients.Get(cl.ID)
	if ok && old.Closed() {
		s.persists.Delete(old) // an away session, replaced by cl (a connected one's OnDisconnect does it)
	}
	if pk.Connect.Clean || !ok {
		return
	}
	pks := old.State.Inflight.GetAll(false)
	if len(pks) == 0 {
		return
	}
	s.mu.Lock()
	seqs := s.seqs[cl.ID]
	sort.SliceStable(pks, func(i, j int) bool {
		a, aok := seqs[pks[i].PacketID]
		b, bok := seqs[pks[j].PacketID]
		if aok != bok {
			return aok // known order first
		}
		if !aok {
			return pks[i].Created < pks[j].Created
		}
		return a < b
	})
	s.mu.Unlock()
	// mochi sorts on uint16(Created): give the messages consecutive
	// seconds ending just before now, so that they sort in order and
	// before what is queued from now on (also a single one: a message
	// queued for the new connection before mochi resends is resent with
	// them, and would tie with one of this second). (mochi's maximum message
	// expiry counts from Created too: it restarts here; the broker sets
	// that maximum out of reach. An MQTT 5 message's own expiry is
	// kept in Expiry, which this leaves alone.)
	now := time.Now().Unix()
	base := now - int64(len(pks))
	if uint16(base) > uint16(now) { // the low 16 bits wrap in between
		base = now - int64(uint16(now))
	}
	for i, p := range pks {
		// The old connection may still be open and take an
		// acknowledgement in between: put back only what is still
		// there as it was (a message acknowledged just after this is
		// sent once more, marked DUP).
		cur, ok := old.State.Inflight.Get(p.PacketID)
		if !ok || cur.FixedHeader.Type != p.FixedHeader.Type {
			continue
		}
		cur.Created = base + int64(i)
		old.State.Inflight.Set(cur)
	}
}

// OnSessionEstablished writes the session as it now is: a clean one
// deletes what was stored for the client id; a persistent one replaces it
// with the subscriptions and messages the connection took over. Those
// messages keep the sequence numbers they were queued with (mochi's list
// is in the order of Created's low 16 bits, which is not always theirs);
// only ones the store did not know get new numbers, after them.
func (s *sessionStore) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.away, cl.ID)
	seqs := s.seqs[cl.ID]
	s.drop(cl.ID)
	s.notePersistent(cl)
	if !persistent(cl) {
		return
	}
	s.putClient(cl, 0)
	for _, sub := range cl.State.Subscriptions.GetAll() {
		s.putSub(cl.ID, sub, sub.Qos)
	}
	pks := cl.State.Inflight.GetAll(false)
	kept := s.seqFor(cl.ID)
	for _, p := range pks {
		if seq, ok := seqs[p.PacketID]; ok {
			kept[p.PacketID] = seq
		}
	}
	for _, p := range pks {
		s.putInflight(cl.ID, p)
	}
	s.wake()
}

func (s *sessionStore) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	takenOver := cl.IsTakenOver() || errors.Is(cl.StopCause(), packets.ErrSessionTakenOver)
	if expire || takenOver {
		s.persists.Delete(cl) // mochi forgets the client
	} else if v, ok := s.persists.Load(cl); ok {
		v.(*atomic.Bool).Store(persistent(cl)) // a DISCONNECT may have ended the session
	}
	if cl.Net.Conn == nil || takenOver {
		return // a restored session, the inline client, or a client id taken over
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if expire {
		s.drop(cl.ID)
	} else if persistent(cl) {
		r := s.putClient(cl, s.now().Unix())
		s.away[cl.ID] = r.Disconnected + s.expirySeconds(&r.Client)
	}
	s.wake()
}

// OnWillSent stores the client without its will, once it is sent.
func (s *sessionStore) OnWillSent(cl *mqtt.Client, _ packets.Packet) {
	if !s.isPersistent(cl) || cl.Net.Conn == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.putClient(cl, s.now().Unix())
	s.wake()
}

func (s *sessionStore) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	if !s.isPersistent(cl) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range pk.Filters {
		if i < len(codes) && codes[i] < packets.ErrUnspecifiedError.Code {
			s.putSub(cl.ID, f, codes[i])
		}
	}
	s.wake()
}

func (s *sessionStore) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	if !s.isPersistent(cl) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range pk.Filters {
		k := subKey(cl.ID, f.Filter)
		s.del("s"+string(k), sessionWrite{bucket: sessionSubs, key: k, client: cl.ID})
	}
	s.wake()
}

func (s *sessionStore) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	// A client taken over: mochi copied the message to the connection
	// that took it over, which stores the session as it is once it is
	// established, or the message is moved to it (takeoverHook.rehome).
	if cl.IsTakenOver() || !s.isPersistent(cl) || s.aside != nil && s.aside(cl, pk.PacketID) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.putInflight(cl.ID, pk)
	s.wake()
}

func (s *sessionStore) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	// A client taken over: mochi clears the messages it copied to the
	// connection that took it over, which stores them once it is
	// established; until then the records stay.
	if cl.IsTakenOver() || !s.isPersistent(cl) || s.aside != nil && s.aside(cl, pk.PacketID) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	seqs := s.seqs[cl.ID]
	seq, ok := seqs[pk.PacketID]
	if !ok {
		return
	}
	delete(seqs, pk.PacketID)
	k := inflightKey(cl.ID, seq)
	s.del("i"+string(k), sessionWrite{bucket: sessionInflight, key: k, client: cl.ID})
	s.wake()
}

func (s *sessionStore) OnQosDropped(cl *mqtt.Client, pk packets.Packet) { s.OnQosComplete(cl, pk) }

func (s *sessionStore) OnClientExpired(cl *mqtt.Client) {
	s.persists.Delete(cl)
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.away, cl.ID)
	s.drop(cl.ID)
	s.wake()
}

// expireAway ends the sessions whose client has been away longer than
// their expiry. mochi does it too, but counts from the restart for a
// session restored at start, and does not know persistent_client_expiration.
//
// A client that comes back while its session is being ended must not be
// ended with it: Clients.Delete(id) would take the new connection out of
// mochi's list (it would get no message) and drop would delete the
// session it has just stored. So each session is ended holding
// s.expiring, after checking again that its client is still away, and a
// connect takes s.expiring in OnSessionEstablish, which mochi calls before
// it looks the client id up (inheritClientSession) and adds the new
// client: a client that comes back either took itself off s.away first
// and is left alone, or waits, then finds no session and starts a clean
// one. s.mu cannot be held instead: UnsubscribeClient and ClearInflights
// call the hook's OnUnsubscribed and OnQosDropped, which take it. No test
// makes the interleaving happen on purpose (it would need the connect to
// stop between mochi's calls).
func (s *sessionStore) expireAway(now time.Time) {
	s.mu.Lock()
	var ids []string
	for id, until := range s.away {
		if until <= now.Unix() {
			ids = append(ids, id)
		}
	}
	s.mu.Unlock()
	for _, id := range ids {
		if s.expireOne(id, now) {
			s.log.Info("persistent session expired: its client stayed away", "client_id", id)
		}
	}
}

// expireOne ends client id's session if it is still away and expired.
func (s *sessionStore) expireOne(id string, now time.Time) bool {
	s.expiring.Lock()
	defer s.expiring.Unlock()
	s.mu.Lock()
	until, away := s.away[id]
	s.mu.Unlock()
	if !away || until > now.Unix() {
		return false // back since
	}
	cl, ok := s.srv.Clients.Get(id)
	if ok && !cl.Closed() {
		return false
	}
	if ok {
		s.srv.UnsubscribeClient(cl)
		cl.ClearInflights()
		s.srv.Clients.Delete(id)
		s.persists.Delete(cl) // mochi's OnClientExpired will not come for it
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.away, id)
	s.drop(id)
	s.wake()
	return true
}

// The following hold s.mu.

func (s *sessionStore) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// drop deletes everything stored for client id.
func (s *sessionStore) drop(id string) {
	for k, w := range s.pending {
		if w.client == id {
			delete(s.pending, k)
		}
	}
	delete(s.seqs, id)
	if len(s.disk[id]) > 0 {
		s.drops[id] = true
	}
}

// del deletes the record w names, pending under key k: a commit if it
// may be in the file, else only the write not made yet.
func (s *sessionStore) del(k string, w sessionWrite) {
	if s.disk[w.client][k] {
		s.pending[k] = w
	} else {
		delete(s.pending, k)
	}
}

// onDisk notes that client id's record pending under key k is, or may
// be, in the file.
func (s *sessionStore) onDisk(id, k string) {
	m, ok := s.disk[id]
	if !ok {
		m = map[string]bool{}
		s.disk[id] = m
	}
	m[k] = true
}

func (s *sessionStore) seqFor(id string) map[uint16]uint64 {
	m, ok := s.seqs[id]
	if !ok {
		m = map[uint16]uint64{}
		s.seqs[id] = m
	}
	return m
}

func (s *sessionStore) putClient(cl *mqtt.Client, disconnected int64) sessionRecord {
	p := cl.Properties.Props
	r := sessionRecord{Disconnected: disconnected, Client: storage.Client{
		ID:              cl.ID,
		T:               storage.ClientKey,
		Remote:          cl.Net.Remote,
		Listener:        cl.Net.Listener,
		Username:        slices.Clone(cl.Properties.Username),
		Clean:           cl.Properties.Clean,
		ProtocolVersion: cl.Properties.ProtocolVersion,
		Properties: storage.ClientProperties{
			SessionExpiryInterval:     p.SessionExpiryInterval,
			SessionExpiryIntervalFlag: p.SessionExpiryIntervalFlag,
			AuthenticationMethod:      p.AuthenticationMethod,
			AuthenticationData:        slices.Clone(p.AuthenticationData),
			RequestProblemInfo:        p.RequestProblemInfo,
			RequestProblemInfoFlag:    p.RequestProblemInfoFlag,
			RequestResponseInfo:       p.RequestResponseInfo,
			ReceiveMaximum:            p.ReceiveMaximum,
			TopicAliasMaximum:         p.TopicAliasMaximum,
			User:                      slices.Clone(p.User),
			MaximumPacketSize:         p.MaximumPacketSize,
		},
		Will: storage.ClientWill(cl.Properties.Will),
	}}
	k := []byte(cl.ID)
	s.pending["c"+cl.ID] = sessionWrite{bucket: sessionClients, key: k, client: cl.ID, value: &r}
	return r
}

func (s *sessionStore) putSub(id string, f packets.Subscription, qos byte) {
	k := subKey(id, f.Filter)
	s.pending["s"+string(k)] = sessionWrite{bucket: sessionSubs, key: k, client: id, value: &storage.Subscription{
		T:                 storage.SubscriptionKey,
		Client:            id,
		Filter:            f.Filter,
		Qos:               qos,
		Identifier:        f.Identifier,
		RetainHandling:    f.RetainHandling,
		RetainAsPublished: f.RetainAsPublished,
		NoLocal:           f.NoLocal,
	}}
}

// putInflight stores pk under the sequence number its packet id has, or a
// new one: a message resent keeps its place.
func (s *sessionStore) putInflight(id string, pk packets.Packet) {
	if transientAck(pk) {
		return
	}
	seqs := s.seqFor(id)
	seq, ok := seqs[pk.PacketID]
	if !ok {
		s.seq++
		seq = s.seq
		seqs[pk.PacketID] = seq
	}
	k := inflightKey(id, seq)
	s.pending["i"+string(k)] = sessionWrite{bucket: sessionInflight, key: k, client: id, value: &storage.Message{
		T:           storage.InflightKey,
		Client:      id,
		Origin:      pk.Origin,
		FixedHeader: pk.FixedHeader,
		TopicName:   pk.TopicName,
		Payload:     pk.Payload,
		Created:     pk.Created,
		PacketID:    pk.PacketID,
		Properties: storage.MessageProperties{
			PayloadFormat:          pk.Properties.PayloadFormat,
			PayloadFormatFlag:      pk.Properties.PayloadFormatFlag,
			MessageExpiryInterval:  pk.Properties.MessageExpiryInterval,
			ContentType:            pk.Properties.ContentType,
			ResponseTopic:          pk.Properties.ResponseTopic,
			CorrelationData:        pk.Properties.CorrelationData,
			SubscriptionIdentifier: pk.Properties.SubscriptionIdentifier,
			User:                   pk.Properties.User,
		},
	}}
}

// clientPrefix starts every key of client id's records; the length makes
// one id's prefix no other id's.
func clientPrefix(id string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(id))), id...)
}

func subKey(id, filter string) []byte { return append(clientPrefix(id), filter...) }

func inflightKey(id string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(clientPrefix(id), seq)
}

// writer commits pending changes at most once per sessionFlush, and
// checks the sessions whose client is away for expiry.
func (s *sessionStore) writer() {
	defer close(s.done)
	var due <-chan time.Time
	expiry := time.NewTicker(sessionExpiryCheck)
	defer expiry.Stop()
	for {
		select {
		case <-s.stop:
			if err := s.flush(); err != nil {
				s.log.Error("persistent sessions not saved at shutdown", "err", err)
			}
			return
		case <-s.kick:
			if due == nil {
				s.mu.Lock()
				every := s.flushEvery
				s.mu.Unlock()
				due = time.After(every)
			}
		case <-due:
			due = nil
			s.flush() // logged, and tried again

		case <-expiry.C:
			s.expireAway(s.now())
		}
	}
}

// flush commits the pending changes. If the commit fails (a full or
// failing card) they are put back, under any made since, and tried again
// at the next flush: a delete lost would bring back an ended session or
// an acknowledged message, a write lost would lose a queued one. The
// error is logged at most once per sessionErrorLog while it lasts.
func (s *sessionStore) flush() error {
	s.mu.Lock()
	pending, drops, failCommit := s.pending, s.drops, s.failCommit
	if len(pending) == 0 && len(drops) == 0 {
		s.mu.Unlock()
		return nil
	}
	s.pending, s.drops = map[string]sessionWrite{}, map[string]bool{}
	s.flushing = true
	for k, w := range pending {
		if w.value != nil {
			s.onDisk(w.client, k) // from now on it may be
		}
	}
	s.mu.Unlock()
	err := s.db.Update(func(tx *bolt.Tx) error {
		for id := range drops {
			if err := tx.Bucket(sessionClients).Delete([]byte(id)); err != nil {
				return err
			}
			p := clientPrefix(id)
			for _, b := range [][]byte{sessionSubs, sessionInflight} {
				c := tx.Bucket(b).Cursor()
				for k, _ := c.Seek(p); k != nil && len(k) >= len(p) && string(k[:len(p)]) == string(p); k, _ = c.Seek(p) {
					if err := c.Delete(); err != nil {
						return err
					}
				}
			}
		}
		for _, w := range pending {
			b := tx.Bucket(w.bucket)
			if w.value == nil {
				if err := b.Delete(w.key); err != nil {
					return err
				}
				continue
			}
			v, err := w.value.MarshalBinary()
			if err != nil {
				s.log.Warn("session record not saved", "client_id", w.client, "err", err)
				continue
			}
			if err := b.Put(w.key, v); err != nil {
				return err
			}
		}
		if failCommit != nil {
			return failCommit(tx)
		}
		return nil
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	s.flushing = false
	if err == nil {
		s.commits++
		for id := range drops {
			delete(s.disk, id)
		}
		for k, w := range pending { // applied after the drops
			if w.value != nil {
				s.onDisk(w.client, k)
			} else if m := s.disk[w.client]; m != nil {
				delete(m, k)
				if len(m) == 0 {
					delete(s.disk, w.client)
				}
			}
		}
		if s.failed > 0 {
			s.log.Info("persistent sessions saved again", "failed_commits", s.failed)
			s.failed = 0
		}
		return nil
	}
	for k, w := range pending {
		if _, newer := s.pending[k]; newer || s.drops[w.client] {
			continue // changed since, or its client's records dropped since
		}
		s.pending[k] = w
	}
	for id := range drops {
		s.drops[id] = true
	}
	s.failed++
	if now := s.now(); s.failed == 1 || now.Sub(s.errLogged) >= sessionErrorLog {
		s.errLogged = now
		s.log.Error("persistent sessions not saved: trying again", "changes", len(s.pending)+len(s.drops), "failed_commits", s.failed, "err", err)
	}
	s.wake()
	return err
}

// close commits what is pending and closes the file; mochi has stopped
// calling the hook by then.
func (s *sessionStore) close() error {
	close(s.stop)
	<-s.done
	return s.db.Close()
}

// transientAck tells a PUBACK or PUBCOMP the broker sends: mochi holds one
// only while writing it, so it is never a session's state (one left by a
// failed write would end another flow when sent again).
func transientAck(pk packets.Packet) bool {
	return pk.FixedHeader.Type == packets.Puback || pk.FixedHeader.Type == packets.Pubcomp
}
