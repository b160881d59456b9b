package localbroker

import (
	"sync"
	"time"
)

// maxDeferred is how many publishes one client may have waiting their
// turn (see waiter). Beyond it the client's reader waits: the disk is
// behind. It is several commits' worth at full speed, so a fast publisher
// is not held to a commit's round trip.
const maxDeferred = 4096

// minDeferred is the room a queue starts with and keeps (a deferred
// publish is most of a kilobyte, kept for every device that has published
// while it stays connected).
const minDeferred = 2

// roomKept is how long a queue keeps room it does not use.
const roomKept = 10 * time.Second

// deferredQueue holds a client's deferred publishes, oldest first, for its
// waiter. It grows with what the client has waiting (a deferred publish
// is most of a kilobyte) and gives room back when it has not needed it for
// a while: back to its smallest once it has been empty for roomKept, and
// by halves while a quarter of it is all it uses. A device that sent a
// burst once does not keep room for thousands.
type deferredQueue struct {
	mu     sync.Mutex
	buf    []deferred // a ring, of a power of two
	head   int
	n      int
	closed bool
	// most is the most held since checked; checked is when.
	most    int
	checked time.Time

	ready chan struct{} // something was queued, or the queue closed
	room  chan struct{} // something was taken, or the queue closed
	idle  *time.Timer   // the waiter's, while it waits with room to give back
	keep  time.Duration // roomKept
}

func newDeferredQueue() *deferredQueue {
	return &deferredQueue{buf: make([]deferred, minDeferred), ready: make(chan struct{}, 1), room: make(chan struct{}, 1), checked: time.Now(), keep: roomKept}
}

// put queues d, telling false when the queue is full.
func (q *deferredQueue) put(d deferred) bool {
	q.mu.Lock()
	if q.n == len(q.buf) {
		if len(q.buf) >= maxDeferred {
			q.mu.Unlock()
			return false
		}
		q.resize(2 * len(q.buf))
	}
	q.buf[(q.head+q.n)&(len(q.buf)-1)] = d
	q.n++
	q.most = max(q.most, q.n)
	q.mu.Unlock()
	signal(q.ready)
	return true
}

// take returns the oldest publish queued. With wait, it waits for one;
// ok is false when there is none (with wait: the queue is closed and
// empty).
func (q *deferredQueue) take(wait bool) (d deferred, ok bool) {
	for {
		q.mu.Lock()
		if q.n > 0 {
			d = q.buf[q.head]
			q.buf[q.head] = deferred{}
			q.head = (q.head + 1) & (len(q.buf) - 1)
			q.n--
			if q.n == 0 {
				q.head = 0
				q.shrink()
			}
			q.mu.Unlock()
			signal(q.room)
			return d, true
		}
		closed, spare := q.closed, len(q.buf) > minDeferred
		q.mu.Unlock()
		if closed || !wait {
			return deferred{}, false
		}
		if !spare {
			<-q.ready
			continue
		}
		if q.idle == nil {
			q.idle = time.NewTimer(q.keep)
		} else {
			q.idle.Reset(q.keep)
		}
		select {
		case <-q.ready:
			q.idle.Stop()
		case <-q.idle.C:
			q.mu.Lock()
			if q.n == 0 {
				q.buf, q.head = make([]deferred, minDeferred), 0
				q.most, q.checked = 0, time.Now()
			}
			q.mu.Unlock()
		}
	}
}

// shrink halves the empty queue's room when a quarter of it was all it
// needed for the last roomKept.
func (q *deferredQueue) shrink() {
	if now := time.Now(); now.Sub(q.checked) >= q.keep {
		if len(q.buf) > minDeferred && q.most <= len(q.buf)/4 {
			q.buf = make([]deferred, len(q.buf)/2)
		}
		q.most, q.checked = 0, now
	}
}

// resize moves what is queued into room for size publishes.
func (q *deferredQueue) resize(size int) {
	buf := make([]deferred, size)
	for i := range q.n {
		buf[i] = q.buf[(q.head+i)&(len(q.buf)-1)]
	}
	q.buf, q.head = buf, 0
}

// close ends the queue: take returns what is left, then nothing.
func (q *deferredQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	signal(q.ready)
	signal(q.room)
}

// signal wakes whoever waits on ch, once.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
