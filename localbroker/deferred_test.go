package localbroker

import (
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

func deferredWithID(id uint16) deferred {
	return deferred{pk: packets.Packet{PacketID: id}}
}

// The queue keeps the order across its growth and its wrapping round, is
// full at maxDeferred, and after close gives what is left, then nothing.
func TestDeferredQueue(t *testing.T) {
	q := newDeferredQueue()
	next, want := uint16(1), uint16(1)
	// Wrap the ring round before it grows, and grow it with its head
	// away from the start: put two, take one.
	for range 6 {
		for range 2 {
			if !q.put(deferredWithID(next)) {
				t.Fatal("full too soon")
			}
			next++
		}
		for range 1 {
			d, ok := q.take(false)
			if !ok || d.pk.PacketID != want {
				t.Fatalf("took %d (%v), want %d", d.pk.PacketID, ok, want)
			}
			want++
		}
	}
	for q.put(deferredWithID(next)) {
		next++
	}
	if got := int(next - want); got != maxDeferred {
		t.Errorf("full with %d queued, want %d", got, maxDeferred)
	}
	q.close()
	for ; want < next; want++ {
		d, ok := q.take(true)
		if !ok || d.pk.PacketID != want {
			t.Fatalf("took %d (%v), want %d", d.pk.PacketID, ok, want)
		}
	}
	if _, ok := q.take(true); ok {
		t.Error("a closed, empty queue gave a publish")
	}
}

// take waits for a put; a reader waiting for room is woken by a take.
func TestDeferredQueueWakes(t *testing.T) {
	q := newDeferredQueue()
	got := make(chan uint16)
	go func() {
		d, _ := q.take(true)
		got <- d.pk.PacketID
	}()
	q.put(deferredWithID(7))
	if id := <-got; id != 7 {
		t.Errorf("took %d, want 7", id)
	}
	for q.put(deferredWithID(1)) {
	}
	<-q.room // left by the take above
	go q.take(false)
	<-q.room
	if !q.put(deferredWithID(2)) {
		t.Error("no room after a take")
	}
}

// Emptied, the queue gives back room it has not needed for ten seconds,
// and keeps what it needed.
func TestDeferredQueueShrinks(t *testing.T) {
	q := newDeferredQueue()
	fill := func(n int) {
		for i := range n {
			q.put(deferredWithID(uint16(i)))
		}
		for range n {
			q.take(false)
		}
	}
	fill(1000)
	if len(q.buf) != 1024 {
		t.Fatalf("room for %d, want 1024", len(q.buf))
	}
	q.checked, q.most = time.Now().Add(-roomKept), 0
	fill(300) // more than a quarter: kept
	if len(q.buf) != 1024 {
		t.Errorf("room for %d after using 300 of it, want 1024 still", len(q.buf))
	}
	q.checked, q.most = time.Now().Add(-roomKept), 0
	fill(100)
	if len(q.buf) != 512 {
		t.Errorf("room for %d after using 100 of 1024, want 512", len(q.buf))
	}
}

// A queue left empty gives back all its room after roomKept, however
// large a burst made it.
func TestDeferredQueueIdle(t *testing.T) {
	q := newDeferredQueue()
	q.keep = 20 * time.Millisecond
	for i := range maxDeferred {
		q.put(deferredWithID(uint16(i)))
	}
	for range maxDeferred {
		q.take(false)
	}
	got := make(chan uint16)
	go func() {
		d, _ := q.take(true) // waits, empty, with room to give back
		got <- d.pk.PacketID
	}()
	pollUntil(t, "the idle queue to give its room back", func() bool {
		q.mu.Lock()
		defer q.mu.Unlock()
		return len(q.buf) == minDeferred
	})
	q.put(deferredWithID(9))
	if id := <-got; id != 9 {
		t.Errorf("took %d, want 9", id)
	}
}
