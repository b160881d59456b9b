// Package outbox is the bridge's durable store-and-forward queue, on bbolt.
//
// Messages are appended per route and read back in order; a message is
// deleted only when the central broker has acknowledged it. Appends and
// deletions from every publisher are grouped into one transaction per
// commit interval, so the SD card sees a bounded number of fsyncs per
// second however many messages arrive. An append is reported done only once
// its transaction is on disk: that is when the local broker acknowledges
// the publish.
//
// The outbox is bounded by bytes, messages and age. When it is full, the
// route's policy decides: DropOldest makes room by deleting the oldest
// messages, Reject refuses the new one. Every drop is counted by reason.
package outbox

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/fieldgate/fieldgate/internal/crashguard"
)

// ErrFull is returned by Append under the Reject policy when the outbox is
// at one of its bounds.
var ErrFull = errors.New("outbox: full")

// ErrClosed is returned after Close.
var ErrClosed = errors.New("outbox: closed")

// errCorrupt marks a file that cannot be read as an outbox.
var errCorrupt = errors.New("corrupt")

// Policy says what happens to a new message when the outbox is full.
type Policy int

// Policies.
const (
	DropOldest Policy = iota // delete the oldest messages to make room
	Reject                   // refuse the new message
)

// ParsePolicy parses "drop-oldest" or "reject".
func ParsePolicy(s string) (Policy, error) {
	switch s {
	case "drop-oldest":
		return DropOldest, nil
	case "reject":
		return Reject, nil
	}
	return 0, fmt.Errorf("want drop-oldest or reject, got %q", s)
}

// Drop reasons, as counted in Stats.Dropped.
const (
	ReasonOverflow = "overflow" // deleted to make room (DropOldest)
	ReasonRejected = "rejected" // refused at Append (Reject)
	ReasonExpired  = "expired"  // older than MaxAge
	ReasonPurged   = "purged"   // deleted by Purge (fieldgate queue purge)
)

// Options configure an Outbox. The zero value of a field means its default.
type Options struct {
	CommitInterval time.Duration // default 50ms
	// MaxBatch commits early once this many operations are pending.
	// Default 4096.
	MaxBatch    int
	MaxBytes    int64         // default 256 MiB
	MaxMessages int           // 0: bounded by bytes and age only
	MaxAge      time.Duration // default 168h
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// ReadOnly opens the file for inspection only (fieldgate queue): it
	// is not created, not moved aside when corrupt, and Append and Ack
	// fail. It cannot be opened while a gateway holds it.
	ReadOnly bool
}

// ErrReadOnly is returned by Append on an outbox opened ReadOnly.
var ErrReadOnly = errors.New("outbox: opened read-only")

// Message is one stored message.
type Message struct {
	Seq     uint64 // assigned by Append; increases across all routes
	Route   string
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
	Time    time.Time // when it was appended
}

// Stats describe the outbox.
type Stats struct {
	Messages int
	Bytes    int64     // payload and topic bytes held
	Oldest   time.Time // of the oldest message held; zero when empty
	Routes   map[string]int
	Appended uint64
	Acked    uint64
	Dropped  map[string]uint64 // by reason
	Commits  uint64            // transactions written (each one fsyncs)
	// CommitTime is the time spent in transactions, in total: with
	// Commits, the mean commit latency.
	CommitTime time.Duration
}

// Outbox is an open outbox file.
type Outbox struct {
	db   *bolt.DB
	o    Options
	log  *slog.Logger
	path string

	q      *opQueue
	sendMu sync.RWMutex // held for reading while pushing onto q; Close takes it to close q
	// appendMu makes numbering an append and queueing it one step, so
	// that appends are committed in the order of their numbers: a reader
	// that has read up to N never sees a message below N appear later.
	appendMu sync.Mutex
	done     chan struct{} // closed when the committer has stopped

	id      string // random, made with the file: tells this outbox from an earlier one
	openSeq uint64 // the last sequence number assigned before Open

	mu      sync.Mutex
	seq     uint64 // last assigned; kept in the file, so it never goes back
	routes  map[string]*routeState
	st      Stats // counters; Messages/Bytes/Oldest/Routes are derived
	changed chan struct{}
	closed  bool
	pending int // appends not yet committed
	pendB   int64

	// Drops are logged at most once a minute per reason, with the count
	// since the last line.
	unlogged map[string]uint64
	lastLog  map[string]time.Time
}

type routeState struct {
	count int
	bytes int64
	// head is the time of the oldest message of the route, zero when
	// empty; kept so Stats and expiry need no disk read.
	head time.Time
}

type op struct {
	append *Message
	policy Policy
	done   chan error // for appends; nil for acks
	ack    []uint64   // seqs to delete
	thru   uint64     // delete every message of route up to this seq
	route  string
	purge  bool     // delete route, or every route when route is ""
	purged chan int // how many messages the purge deleted
}

var bucketPrefix = []byte("route:")

// The meta bucket holds the outbox's id and the last sequence number
// assigned, which must survive the outbox running empty.
var (
	metaBucket = []byte("meta")
	metaID     = []byte("id")
	metaSeq    = []byte("seq")
)

// Open opens or creates the outbox at path. A file that bbolt cannot read
// is moved aside to path.corrupt-<time> and a new one is started: a corrupt
// state file is reported, never a crash loop.
func Open(path string, o *Options, log *slog.Logger) (*Outbox, error) {
	var opts Options
	if o != nil {
		opts = *o
	}
	if opts.CommitInterval <= 0 {
		opts.CommitInterval = 50 * time.Millisecond
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 4096
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 256 << 20
	}
	if opts.MaxAge <= 0 {
		opts.MaxAge = 168 * time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	ob := &Outbox{o: opts, log: log, path: path, q: newOpQueue(opts.MaxBatch), done: make(chan struct{}), changed: make(chan struct{}),
		routes: map[string]*routeState{}, st: Stats{Dropped: map[string]uint64{}},
		unlogged: map[string]uint64{}, lastLog: map[string]time.Time{}}
	var db *bolt.DB
	var err error
	crashed := false
	if !opts.ReadOnly {
		if crashed, err = crashguard.Begin(path); err != nil {
			return nil, fmt.Errorf("outbox: open %s: %w", path, err)
		}
		defer crashguard.Done(path)
	}
	if crashed {
		// The last open of it killed the process: bbolt rebuilds the free
		// list in a goroutine of its own, and a damaged page panics there,
		// where no recover reaches. Not opened again.
		err = fmt.Errorf("%w: opening it stopped the gateway last time", errCorrupt)
	} else {
		db, err = ob.open()
	}
	if err != nil {
		if !errors.Is(err, errCorrupt) || opts.ReadOnly {
			return nil, fmt.Errorf("outbox: open %s: %w", path, err)
		}
		aside := fmt.Sprintf("%s.corrupt-%s", path, opts.Now().UTC().Format("20060102T150405Z"))
		if rerr := os.Rename(path, aside); rerr != nil {
			return nil, fmt.Errorf("outbox: %s is unreadable (%v) and cannot be moved aside: %w", path, err, rerr)
		}
		log.Error("outbox file is corrupt: moved aside, starting a new one; the messages it held are not delivered",
			"path", path, "moved_to", aside, "err", err)
		ob.routes = map[string]*routeState{}
		ob.seq, ob.id = 0, ""
		if db, err = ob.open(); err != nil {
			return nil, fmt.Errorf("outbox: open %s: %w", path, err)
		}
	}
	ob.db = db
	ob.openSeq = ob.seq
	if opts.ReadOnly {
		ob.closed = true // no committer: Append and Ack refuse
		close(ob.done)
		return ob, nil
	}
	go ob.commitLoop()
	return ob, nil
}

// open opens the file and loads the per-route counts. Damage that bbolt
// only finds while reading (it panics on a bad page) is an error here.
func (ob *Outbox) open() (db *bolt.DB, err error) {
	if ob.o.ReadOnly {
		if _, err := os.Stat(ob.path); err != nil {
			return nil, err
		}
	}
	// bbolt panics in Open itself on some damage: recover from the start.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", errCorrupt, r)
		}
		if err != nil && db != nil {
			db.Close()
			db = nil
		}
	}()
	db, err = bolt.Open(ob.path, 0o600, &bolt.Options{
		ReadOnly:       ob.o.ReadOnly,
		Timeout:        2 * time.Second,
		NoFreelistSync: true, // less to write per commit; rebuilt at open
		FreelistType:   bolt.FreelistMapType,
	})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("%w: is another fieldgate using it?", err)
		}
		var pe *os.PathError
		if errors.As(err, &pe) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %v", errCorrupt, err)
	}
	err = db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			if len(name) <= len(bucketPrefix) || string(name[:len(bucketPrefix)]) != string(bucketPrefix) {
				return nil
			}
			rs := &routeState{}
			route := string(name[len(bucketPrefix):])
			err := b.ForEach(func(k, v []byte) error {
				m, err := decode(k, v)
				if err != nil {
					return err
				}
				if rs.count == 0 {
					rs.head = m.Time
				}
				rs.count++
				rs.bytes += size(m)
				ob.seq = max(ob.seq, m.Seq)
				return nil
			})
			if err != nil {
				return fmt.Errorf("%w: route %q: %v", errCorrupt, route, err)
			}
			ob.routes[route] = rs
			return nil
		})
	})
	if err != nil {
		return db, err
	}
	return db, ob.loadMeta(db)
}

// loadMeta reads the outbox's id and last sequence number, and gives a
// new file an id. A damaged meta record costs at most the checkpoint (see
// ID), never the messages: it is logged and replaced.
func (ob *Outbox) loadMeta(db *bolt.DB) error {
	ob.id = ""
	read := func(tx *bolt.Tx) error {
		b := tx.Bucket(metaBucket)
		if b == nil {
			return nil
		}
		if v := b.Get(metaSeq); len(v) == 8 {
			ob.seq = max(ob.seq, binary.BigEndian.Uint64(v))
		} else if v != nil {
			ob.log.Warn("outbox: the last sequence number in the file is damaged: going on from the highest held", "path", ob.path, "record", fmt.Sprintf("%x", v))
		}
		if v := b.Get(metaID); len(v) == 32 {
			ob.id = string(v)
		}
		return nil
	}
	if ob.o.ReadOnly {
		return db.View(read)
	}
	if err := db.View(read); err != nil || ob.id != "" {
		return err
	}
	var id [16]byte
	rand.Read(id[:])
	ob.id = hex.EncodeToString(id[:])
	err := db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(metaBucket)
		if err != nil {
			return err
		}
		return b.Put(metaID, []byte(ob.id))
	})
	if err != nil {
		// A full disk, say: the id holds until the gateway stops, and the
		// next start makes another, which ignores this run's checkpoints.
		ob.log.Warn("outbox: cannot write the file's id: checkpoints of this run will not be recognised after a restart", "path", ob.path, "err", err)
	}
	return nil
}

// ID is a random identifier made when the outbox file was made. A new file
// (one started after a corrupt one was moved aside, say) has another, so
// sequence numbers recorded elsewhere can be told apart.
func (ob *Outbox) ID() string { return ob.id }

// LastSeq is the last sequence number assigned.
func (ob *Outbox) LastSeq() uint64 {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	return ob.seq
}

// Path is the outbox file's.
func (ob *Outbox) Path() string { return ob.path }

// OpenSeq is the last sequence number assigned before the outbox was
// opened: what an earlier run can have sent.
func (ob *Outbox) OpenSeq() uint64 { return ob.openSeq }

// Append queues m (its Route, Topic, Payload, QoS and Retain) for the next
// commit and returns a channel that yields nil once m is on disk, or the
// error that kept it off. Under Reject, a full outbox fails at once with
// ErrFull.
func (ob *Outbox) Append(m Message, p Policy) (<-chan error, error) {
	done := make(chan error, 1)
	ob.sendMu.RLock()
	defer ob.sendMu.RUnlock()
	ob.appendMu.Lock()
	defer ob.appendMu.Unlock()
	ob.mu.Lock()
	if ob.closed {
		ob.mu.Unlock()
		if ob.o.ReadOnly {
			return nil, ErrReadOnly
		}
		return nil, ErrClosed
	}
	if p == Reject && ob.fullLocked(size(&m)) {
		ob.st.Dropped[ReasonRejected]++
		ob.mu.Unlock()
		ob.logDrops(map[string]uint64{ReasonRejected: 1})
		return nil, ErrFull
	}
	ob.seq++
	m.Seq = ob.seq
	m.Time = ob.o.Now()
	ob.pending++
	ob.pendB += size(&m)
	ob.mu.Unlock()
	ob.q.push(op{append: &m, policy: p, done: done})
	return done, nil
}

func (ob *Outbox) isClosed() bool {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	return ob.closed
}

// Ack deletes acknowledged messages of route. The deletion is written with
// the next commit.
func (ob *Outbox) Ack(route string, seqs ...uint64) {
	if len(seqs) == 0 {
		return
	}
	ob.sendMu.RLock()
	defer ob.sendMu.RUnlock()
	if ob.isClosed() {
		return
	}
	ob.q.push(op{ack: seqs, route: route})
}

// AckThrough deletes every message of route with a sequence number up to
// seq: the central broker is known to hold them. The deletion is written
// with the next commit.
func (ob *Outbox) AckThrough(route string, seq uint64) {
	if seq == 0 {
		return
	}
	ob.sendMu.RLock()
	defer ob.sendMu.RUnlock()
	if ob.isClosed() {
		return
	}
	ob.q.push(op{thru: seq, route: route})
}

// fullLocked is full for what is on disk and what is waiting for a commit.
func (ob *Outbox) fullLocked(add int64) bool {
	return full(ob.routes, ob.o, ob.pending, ob.pendB+add)
}

// Read returns up to max messages of route with a sequence number greater
// than after, oldest first.
func (ob *Outbox) Read(route string, after uint64, max int) ([]Message, error) {
	var out []Message
	err := ob.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketName(route))
		if b == nil {
			return nil
		}
		c := b.Cursor()
		k, v := c.Seek(key(after + 1))
		var payloads []byte // one copy for the batch: v is only valid in the transaction
		for ; k != nil && len(out) < max; k, v = c.Next() {
			var prev string // the topic, mostly the same: not copied again
			if len(out) > 0 {
				prev = out[len(out)-1].Topic
			}
			m, err := decodeInto(k, v, prev)
			if err != nil {
				return err
			}
			m.Route = route
			if len(payloads)+len(m.Payload) > cap(payloads) {
				// Room for the rest of the batch if its payloads are
				// the size of this one, up to 64 KiB.
				n := min(len(m.Payload)*(max-len(out)), 64<<10)
				payloads = make([]byte, 0, n+len(m.Payload))
			}
			start := len(payloads)
			payloads = append(payloads, m.Payload...)
			m.Payload = payloads[start:len(payloads):len(payloads)]
			out = append(out, m)
		}
		return nil
	})
	return out, err
}

// Routes lists the routes that hold messages, sorted.
func (ob *Outbox) Routes() []string {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	var rs []string
	for r, s := range ob.routes {
		if s.count > 0 {
			rs = append(rs, r)
		}
	}
	sort.Strings(rs)
	return rs
}

// Purge deletes every message of route, or of all routes when route is
// empty, and returns how many it deleted. They are counted as dropped for
// ReasonPurged.
func (ob *Outbox) Purge(route string) (int, error) {
	if ob.o.ReadOnly {
		return 0, ErrReadOnly
	}
	res := make(chan int, 1)
	done := make(chan error, 1)
	ob.sendMu.RLock()
	if ob.isClosed() {
		ob.sendMu.RUnlock()
		return 0, ErrClosed
	}
	ob.q.push(op{purge: true, route: route, purged: res, done: done})
	ob.sendMu.RUnlock()
	if err := <-done; err != nil {
		return 0, err
	}
	return <-res, nil
}

// Changed returns a channel that is closed at the next commit.
func (ob *Outbox) Changed() <-chan struct{} {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	return ob.changed
}

// Stats returns a snapshot.
func (ob *Outbox) Stats() Stats {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	st := ob.st
	st.Dropped = map[string]uint64{}
	for k, v := range ob.st.Dropped {
		st.Dropped[k] = v
	}
	st.Routes = map[string]int{}
	for r, rs := range ob.routes {
		if rs.count == 0 {
			continue
		}
		st.Routes[r] = rs.count
		st.Messages += rs.count
		st.Bytes += rs.bytes
		if st.Oldest.IsZero() || rs.head.Before(st.Oldest) {
			st.Oldest = rs.head
		}
	}
	return st
}

// Close commits what is pending and closes the file.
func (ob *Outbox) Close() error {
	ob.mu.Lock()
	if ob.o.ReadOnly {
		ob.mu.Unlock()
		return ob.db.Close()
	}
	if ob.closed {
		ob.mu.Unlock()
		return nil
	}
	ob.closed = true
	ob.mu.Unlock()
	ob.sendMu.Lock()
	ob.q.close()
	ob.sendMu.Unlock()
	<-ob.done
	return ob.db.Close()
}

// commitLoop gathers operations and writes them in one transaction, at
// most one per commit interval (sooner when MaxBatch are pending). The
// interval is a rate, not a delay: after a quiet spell the first message
// is committed at once, and those that come while the disk is busy wait
// for the next turn.
func (ob *Outbox) commitLoop() {
	defer close(ob.done)
	var batch, retry []op
	var last time.Time // of the last commit
	for {
		<-ob.q.kick // something is queued
		if wait := time.Until(last.Add(ob.o.CommitInterval)); wait > 0 && !ob.q.ready() {
			timer := time.NewTimer(wait)
			for waiting := true; waiting; {
				select {
				case <-timer.C:
					waiting = false
				case <-ob.q.kick:
					waiting = !ob.q.ready()
				}
			}
			timer.Stop()
		}
		var closed bool
		batch, closed = ob.q.take(append(batch[:0], retry...))
		retry = ob.commit(batch)
		last = time.Now()
		if closed {
			return
		}
		if len(retry) > 0 { // acknowledgements to write again, next turn
			ob.q.wake()
		}
	}
}

// opQueue hands operations to the committer. It wakes the committer when
// it has no commit coming (the first operation after a quiet spell, or
// after a commit) and when a batch is full, not for each operation: a
// wake-up is a switch of threads, and at tens of thousands of messages a
// second they cost more than the commits.
type opQueue struct {
	mu     sync.Mutex
	room   sync.Cond // signalled when the committer takes what is queued
	ops    []op
	due    bool // the committer knows of ops
	closed bool
	kick   chan struct{}
	batch  int // MaxBatch
}

func newOpQueue(batch int) *opQueue {
	q := &opQueue{kick: make(chan struct{}, 1), batch: batch}
	q.room.L = &q.mu
	return q
}

// push queues o. It waits while two batches are queued already: the
// committer is behind, and that is the back pressure on publishers.
func (q *opQueue) push(o op) {
	q.mu.Lock()
	for len(q.ops) >= 2*q.batch && !q.closed {
		q.room.Wait()
	}
	q.ops = append(q.ops, o)
	wake := !q.due || len(q.ops) == q.batch
	q.due = true
	q.mu.Unlock()
	if wake {
		q.wake()
	}
}

func (q *opQueue) wake() {
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// ready tells whether a batch is full or the queue is closed: the
// committer then commits without waiting for its turn.
func (q *opQueue) ready() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.ops) >= q.batch || q.closed
}

// take appends what is queued, a batch at most, to into, and tells
// whether the queue is closed and empty (nothing more comes).
func (q *opQueue) take(into []op) ([]op, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := min(len(q.ops), q.batch)
	into = append(into, q.ops[:n]...)
	rest := copy(q.ops, q.ops[n:])
	clear(q.ops[rest:])
	q.ops = q.ops[:rest]
	q.due = rest > 0
	if rest > 0 {
		q.wake() // the next batch, in its turn
	}
	q.room.Broadcast()
	return into, q.closed && rest == 0
}

func (q *opQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.room.Broadcast()
	q.mu.Unlock()
	q.wake()
}

// commit writes a batch: deletions first, then expiry, then appends, each
// append making room for itself under DropOldest. When the transaction
// fails (a full disk), the appends' publishers are told, and the
// acknowledgements are returned to be tried again with the next batch.
func (ob *Outbox) commit(batch []op) (retry []op) {
	if len(batch) == 0 {
		return nil
	}
	// Work on a copy of the per-route state; it becomes the real one only
	// if the transaction commits.
	ob.mu.Lock()
	routes := make(map[string]*routeState, len(ob.routes))
	for r, rs := range ob.routes {
		c := *rs
		routes[r] = &c
	}
	ob.mu.Unlock()
	var acked uint64
	dropped := map[string]uint64{}
	var appended int64
	var pendingB int64 // of the batch's appends, as Append counted them
	for _, o := range batch {
		if o.append != nil {
			pendingB += size(o.append)
		}
	}
	var lastSeq uint64
	now := ob.o.Now()
	start := time.Now()

	err := ob.db.Update(func(tx *bolt.Tx) error {
		for _, o := range batch {
			if !o.purge {
				continue
			}
			n := 0
			for r, rs := range routes {
				if o.route != "" && r != o.route {
					continue
				}
				if tx.Bucket(bucketName(r)) != nil {
					if err := tx.DeleteBucket(bucketName(r)); err != nil {
						return err
					}
				}
				n += rs.count
				*rs = routeState{}
			}
			dropped[ReasonPurged] += uint64(n)
			o.purged <- n
		}
		for _, o := range batch {
			if o.thru == 0 {
				continue
			}
			rs := routes[o.route]
			if rs == nil {
				continue
			}
			n, err := deleteOldest(tx, o.route, rs, func(m *Message) bool { return m.Seq <= o.thru })
			if err != nil {
				return err
			}
			acked += n
		}
		for _, o := range batch {
			if o.ack == nil {
				continue
			}
			b := tx.Bucket(bucketName(o.route))
			if b == nil {
				continue
			}
			// One cursor for them all: a Get and a Delete would each
			// search the tree from its root, with a new cursor.
			c := b.Cursor()
			var k [8]byte
			for _, s := range o.ack {
				binary.BigEndian.PutUint64(k[:], s)
				ck, v := c.Seek(k[:])
				if !bytes.Equal(ck, k[:]) {
					continue // already dropped or acknowledged
				}
				sz, err := recordSize(ck, v)
				if err != nil {
					return err
				}
				if err := c.Delete(); err != nil {
					return err
				}
				rs := routes[o.route]
				rs.count--
				rs.bytes -= sz
				acked++
			}
		}
		// Expiry.
		for r, rs := range routes {
			if rs.count == 0 || now.Sub(rs.head) <= ob.o.MaxAge {
				continue
			}
			n, err := deleteOldest(tx, r, rs, func(m *Message) bool { return now.Sub(m.Time) > ob.o.MaxAge })
			if err != nil {
				return err
			}
			dropped[ReasonExpired] += n
		}
		buckets := map[string]*bolt.Bucket{} // of this transaction, by route
		for _, o := range batch {
			if o.append == nil {
				continue
			}
			m := o.append
			sz := size(m)
			if o.policy == DropOldest {
				for full(routes, ob.o, 0, sz) {
					n, err := dropGlobalOldest(tx, routes)
					if err != nil {
						return err
					}
					if n == 0 {
						break // the message alone is larger than the bound: keep it
					}
					dropped[ReasonOverflow] += n
				}
			}
			b := buckets[m.Route]
			if b == nil {
				var err error
				if b, err = tx.CreateBucketIfNotExists(bucketName(m.Route)); err != nil {
					return err
				}
				b.FillPercent = 0.95 // keys only grow: pack the pages
				buckets[m.Route] = b
			}
			if err := b.Put(key(m.Seq), encode(m)); err != nil {
				return err
			}
			rs := routes[m.Route]
			if rs == nil {
				rs = &routeState{}
				routes[m.Route] = rs
			}
			if rs.count == 0 {
				rs.head = m.Time
			}
			rs.count++
			rs.bytes += sz
			appended++
			lastSeq = max(lastSeq, m.Seq)
		}
		if lastSeq > 0 {
			b, err := tx.CreateBucketIfNotExists(metaBucket)
			if err != nil {
				return err
			}
			if v := b.Get(metaSeq); len(v) == 8 {
				lastSeq = max(lastSeq, binary.BigEndian.Uint64(v))
			}
			if err := b.Put(metaSeq, binary.BigEndian.AppendUint64(nil, lastSeq)); err != nil {
				return err
			}
		}
		for _, rs := range routes {
			if rs.count == 0 {
				rs.head = time.Time{}
			}
		}
		return nil
	})

	ob.mu.Lock()
	for _, o := range batch {
		if o.append != nil {
			ob.pending--
		}
	}
	ob.pendB -= pendingB
	if err == nil {
		ob.routes = routes
		ob.st.Appended += uint64(appended)
		ob.st.Acked += acked
		ob.st.Commits++
		ob.st.CommitTime += time.Since(start)
		for r, n := range dropped {
			ob.st.Dropped[r] += n
		}
	}
	close(ob.changed)
	ob.changed = make(chan struct{})
	ob.mu.Unlock()

	if err != nil {
		ob.log.Error("outbox commit failed: the batch's publishers are told, nothing acknowledged is lost", "err", err, "operations", len(batch))
		err = fmt.Errorf("outbox: commit: %w", err)
	}
	ob.logDrops(dropped)
	for _, o := range batch {
		if o.done != nil {
			o.done <- err
		}
		if err != nil && (o.ack != nil || o.thru != 0) {
			retry = append(retry, o)
		}
	}
	return retry
}

// full reports whether routes, with n more messages of b bytes, would be
// at or beyond a bound.
func full(routes map[string]*routeState, o Options, n int, b int64) bool {
	for _, rs := range routes {
		n += rs.count
		b += rs.bytes
	}
	return b > o.MaxBytes || (o.MaxMessages > 0 && n+1 > o.MaxMessages)
}

// dropGlobalOldest deletes the oldest message of all routes (the lowest
// sequence number) and returns how many it deleted (0 or 1).
func dropGlobalOldest(tx *bolt.Tx, routes map[string]*routeState) (uint64, error) {
	var oldest string
	var oldestSeq uint64
	for r, rs := range routes {
		if rs.count == 0 {
			continue
		}
		k, _ := tx.Bucket(bucketName(r)).Cursor().First()
		if k == nil {
			continue
		}
		if s := binary.BigEndian.Uint64(k); oldest == "" || s < oldestSeq {
			oldest, oldestSeq = r, s
		}
	}
	if oldest == "" {
		return 0, nil
	}
	first := true
	return deleteOldest(tx, oldest, routes[oldest], func(*Message) bool {
		ok := first
		first = false
		return ok
	})
}

// deleteOldest deletes messages from the head of route while pred holds,
// and updates rs.
func deleteOldest(tx *bolt.Tx, route string, rs *routeState, pred func(*Message) bool) (uint64, error) {
	b := tx.Bucket(bucketName(route))
	if b == nil {
		return 0, nil
	}
	var n uint64
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.First() {
		m, err := decode(k, v)
		if err != nil {
			return n, err
		}
		if !pred(m) {
			rs.head = m.Time
			return n, nil
		}
		if err := c.Delete(); err != nil {
			return n, err
		}
		rs.count--
		rs.bytes -= size(m)
		n++
	}
	rs.head = time.Time{}
	return n, nil
}

func bucketName(route string) []byte { return append(append([]byte(nil), bucketPrefix...), route...) }

func key(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

// size is what a message counts against MaxBytes.
func size(m *Message) int64 { return int64(len(m.Topic) + len(m.Payload)) }

// Record layout (value of key seq):
//
//	byte 0      format version (1)
//	byte 1      flags: bits 0-1 QoS, bit 2 retain
//	bytes 2-9   append time, Unix nanoseconds, big-endian
//	uvarint     topic length, then the topic
//	rest        payload
func encode(m *Message) []byte {
	b := make([]byte, 0, 10+binary.MaxVarintLen32+len(m.Topic)+len(m.Payload))
	flags := m.QoS & 3
	if m.Retain {
		flags |= 4
	}
	b = append(b, 1, flags)
	b = binary.BigEndian.AppendUint64(b, uint64(m.Time.UnixNano()))
	b = binary.AppendUvarint(b, uint64(len(m.Topic)))
	b = append(b, m.Topic...)
	return append(b, m.Payload...)
}

func decode(k, v []byte) (*Message, error) {
	m, err := decodeInto(k, v, "")
	if err != nil {
		return nil, err
	}
	return &m, nil
}

// decodeInto decodes a record, its payload in v. The topic is topic when
// they are the same, so that reading a batch copies it once.
func decodeInto(k, v []byte, topic string) (Message, error) {
	t, payload, err := split(k, v)
	if err != nil {
		return Message{}, err
	}
	m := Message{Seq: binary.BigEndian.Uint64(k), QoS: v[1] & 3, Retain: v[1]&4 != 0, Payload: payload, Topic: topic}
	m.Time = time.Unix(0, int64(binary.BigEndian.Uint64(v[2:10])))
	if string(t) != topic {
		m.Topic = string(t)
	}
	return m, nil
}

// split returns a record's topic and payload.
func split(k, v []byte) (topic, payload []byte, err error) {
	if len(k) != 8 || len(v) < 11 || v[0] != 1 {
		return nil, nil, fmt.Errorf("outbox: bad record %x", k)
	}
	n, w := binary.Uvarint(v[10:])
	if w <= 0 || uint64(len(v)-10-w) < n {
		return nil, nil, fmt.Errorf("outbox: bad record %x", k)
	}
	return v[10+w : 10+w+int(n)], v[10+w+int(n):], nil
}

// recordSize is what a record counts against MaxBytes (see size).
func recordSize(k, v []byte) (int64, error) {
	t, p, err := split(k, v)
	return int64(len(t) + len(p)), err
}

// logDrops logs drops, at most once a minute per reason.
func (ob *Outbox) logDrops(dropped map[string]uint64) {
	if len(dropped) == 0 {
		return
	}
	now := ob.o.Now()
	ob.mu.Lock()
	defer ob.mu.Unlock()
	for reason, n := range dropped {
		ob.unlogged[reason] += n
		if now.Sub(ob.lastLog[reason]) < time.Minute {
			continue
		}
		ob.log.Warn("outbox dropped messages", "reason", reason, "messages", ob.unlogged[reason], "total", ob.st.Dropped[reason])
		ob.unlogged[reason] = 0
		ob.lastLog[reason] = now
	}
}
