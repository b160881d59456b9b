package outbox

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// open opens an outbox in a temporary directory; the file's consistency is
// checked when the test ends.
func open(t *testing.T, path string, o *Options) *Outbox {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "outbox.db")
	}
	ob, err := Open(path, o, discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ob.Close()
		db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
		if err != nil {
			t.Errorf("reopen for check: %v", err)
			return
		}
		defer db.Close()
		if err := db.View(func(tx *bolt.Tx) error {
			for err := range tx.Check() {
				return err
			}
			return nil
		}); err != nil {
			t.Errorf("bbolt check: %v", err)
		}
	})
	return ob
}

func mustAppend(t *testing.T, ob *Outbox, route, topic string, p Policy) {
	t.Helper()
	done, err := ob.Append(Message{Route: route, Topic: topic, Payload: []byte("payload of " + topic), QoS: 1}, p)
	if err != nil {
		t.Fatalf("append %s: %v", topic, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("commit %s: %v", topic, err)
	}
}

func topics(ms []Message) []string {
	var ts []string
	for _, m := range ms {
		ts = append(ts, fmt.Sprintf("%d:%s", m.Seq, m.Topic))
	}
	return ts
}

func TestAppendReadAckReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "outbox.db")
	ob, err := Open(path, &Options{CommitInterval: time.Millisecond}, discard())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		mustAppend(t, ob, "a", fmt.Sprintf("a/%d", i), DropOldest)
		mustAppend(t, ob, "b", fmt.Sprintf("b/%d", i), DropOldest)
	}
	ms, err := ob.Read("a", 0, 3)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(topics(ms)), "[1:a/0 3:a/1 5:a/2]"; got != want {
		t.Errorf("read a: got %s, want %s", got, want)
	}
	if m := ms[0]; string(m.Payload) != "payload of a/0" || m.QoS != 1 || m.Retain || m.Route != "a" {
		t.Errorf("message: got %+v", m)
	}
	ob.Ack("a", 1, 3)
	ob.Ack("b", 2)
	if err := ob.Close(); err != nil {
		t.Fatal(err)
	}

	// What was committed survives a reopen, and sequence numbers go on.
	ob = open(t, path, &Options{CommitInterval: time.Millisecond})
	st := ob.Stats()
	if st.Messages != 7 || st.Routes["a"] != 3 || st.Routes["b"] != 4 {
		t.Errorf("after reopen: got %+v, want 7 messages, a:3 b:4", st)
	}
	ms, _ = ob.Read("a", 0, 10)
	if got, want := fmt.Sprint(topics(ms)), "[5:a/2 7:a/3 9:a/4]"; got != want {
		t.Errorf("read a after acks: got %s, want %s", got, want)
	}
	ms, _ = ob.Read("b", 4, 10)
	if got, want := fmt.Sprint(topics(ms)), "[6:b/2 8:b/3 10:b/4]"; got != want {
		t.Errorf("read b after seq 4: got %s, want %s", got, want)
	}
	mustAppend(t, ob, "a", "a/5", DropOldest)
	ms, _ = ob.Read("a", 9, 10)
	if got, want := fmt.Sprint(topics(ms)), "[11:a/5]"; got != want {
		t.Errorf("after reopen, a new message: got %s, want %s", got, want)
	}
}

// Appends from many publishers share one transaction. The first one,
// after a quiet spell, goes at once; the rest wait for the interval, or
// here, for the batch to fill.
func TestGroupCommit(t *testing.T) {
	ob := open(t, "", &Options{CommitInterval: time.Hour, MaxBatch: 999})
	mustAppend(t, ob, "first", "alone", DropOldest)
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for p := range 9 {
		wg.Go(func() {
			var dones []<-chan error
			for i := range 111 {
				done, err := ob.Append(Message{Route: "r", Topic: fmt.Sprintf("p%d/%d", p, i)}, DropOldest)
				if err != nil {
					errs <- err
					return
				}
				dones = append(dones, done)
			}
			for _, d := range dones {
				if err := <-d; err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := ob.Stats()
	if st.Commits != 2 || st.Messages != 1000 {
		t.Errorf("got %d commits for %d messages, want 2 commits (1, then 999 together) for 1000", st.Commits, st.Messages)
	}
	// Per publisher, the order of appends is the order on disk.
	ms, _ := ob.Read("r", 0, 999)
	next := map[byte]int{}
	for _, m := range ms {
		var p, i int
		fmt.Sscanf(m.Topic, "p%d/%d", &p, &i)
		if i != next[byte(p)] {
			t.Fatalf("publisher %d: message %d stored before %d", p, i, next[byte(p)])
		}
		next[byte(p)]++
	}
}

func TestDropOldest(t *testing.T) {
	ob := open(t, "", &Options{CommitInterval: time.Millisecond, MaxMessages: 5})
	for i := range 8 {
		route := "a"
		if i%3 == 2 {
			route = "b"
		}
		mustAppend(t, ob, route, fmt.Sprintf("m%d", i), DropOldest)
	}
	// m0..m7 went in; the three oldest of all routes (m0, m1 of a; m2 of b) made room.
	a, _ := ob.Read("a", 0, 10)
	b, _ := ob.Read("b", 0, 10)
	if got, want := fmt.Sprint(topics(a), topics(b)), "[4:m3 5:m4 7:m6 8:m7] [6:m5]"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	if st := ob.Stats(); st.Dropped[ReasonOverflow] != 3 || st.Messages != 5 {
		t.Errorf("stats: got %+v, want 3 dropped for overflow and 5 held", st)
	}
}

func TestDropOldestByBytes(t *testing.T) {
	// Each message is 2+13 = 15 bytes ("mN" and "payload of mN").
	ob := open(t, "", &Options{CommitInterval: time.Millisecond, MaxBytes: 45})
	for i := range 5 {
		mustAppend(t, ob, "a", fmt.Sprintf("m%d", i), DropOldest)
	}
	a, _ := ob.Read("a", 0, 10)
	if got, want := fmt.Sprint(topics(a)), "[3:m2 4:m3 5:m4]"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	if st := ob.Stats(); st.Bytes != 45 || st.Dropped[ReasonOverflow] != 2 {
		t.Errorf("stats: got %+v, want 45 bytes held, 2 dropped", st)
	}
}

func TestReject(t *testing.T) {
	ob := open(t, "", &Options{CommitInterval: time.Millisecond, MaxMessages: 3})
	for i := range 3 {
		mustAppend(t, ob, "a", fmt.Sprintf("m%d", i), Reject)
	}
	if _, err := ob.Append(Message{Route: "a", Topic: "m3"}, Reject); !errors.Is(err, ErrFull) {
		t.Fatalf("fourth append: got %v, want ErrFull", err)
	}
	a, _ := ob.Read("a", 0, 10)
	if got, want := fmt.Sprint(topics(a)), "[1:m0 2:m1 3:m2]"; got != want {
		t.Errorf("got %s, want %s: a rejected message must not displace others", got, want)
	}
	if st := ob.Stats(); st.Dropped[ReasonRejected] != 1 {
		t.Errorf("got %v, want 1 rejected", st.Dropped)
	}
	// Once a message is acknowledged there is room again.
	ob.Ack("a", 1)
	mustAppend(t, ob, "b", "x", DropOldest) // a commit after the ack
	if _, err := ob.Append(Message{Route: "a", Topic: "m3"}, Reject); !errors.Is(err, ErrFull) {
		t.Errorf("with a:2 + b:1 held: got %v, want ErrFull", err)
	}
}

func TestExpiry(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	ob := open(t, "", &Options{CommitInterval: time.Millisecond, MaxAge: time.Hour, Now: clock})
	mustAppend(t, ob, "a", "old1", DropOldest)
	mustAppend(t, ob, "b", "old2", DropOldest)
	advance(50 * time.Minute)
	mustAppend(t, ob, "a", "young", DropOldest)
	advance(20 * time.Minute) // old ones are 70 min old now
	mustAppend(t, ob, "b", "new", DropOldest)
	a, _ := ob.Read("a", 0, 10)
	b, _ := ob.Read("b", 0, 10)
	if got, want := fmt.Sprint(topics(a), topics(b)), "[3:young] [4:new]"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	st := ob.Stats()
	if st.Dropped[ReasonExpired] != 2 {
		t.Errorf("got %v, want 2 expired", st.Dropped)
	}
	if want := now.Add(-20 * time.Minute); !st.Oldest.Equal(want) {
		t.Errorf("oldest: got %v, want %v", st.Oldest, want)
	}
}

func TestCorruptFileMovedAside(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "outbox.db")
	junk := make([]byte, 64<<10)
	for i := range junk {
		junk[i] = byte(i * 7)
	}
	if err := os.WriteFile(path, junk, 0o600); err != nil {
		t.Fatal(err)
	}
	ob := open(t, path, &Options{CommitInterval: time.Millisecond})
	mustAppend(t, ob, "a", "fresh", DropOldest)
	aside, _ := filepath.Glob(path + ".corrupt-*")
	if len(aside) != 1 {
		t.Fatalf("got %v, want one outbox.db.corrupt-<time>", aside)
	}
	if data, _ := os.ReadFile(aside[0]); len(data) != len(junk) {
		t.Errorf("the corrupt file was not kept as it was")
	}
}

func TestLockedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "outbox.db")
	open(t, path, nil)
	_, err := Open(path, nil, discard())
	if err == nil || !errors.Is(err, berrors.ErrTimeout) {
		t.Fatalf("second open: got %v, want a lock timeout", err)
	}
	if aside, _ := filepath.Glob(path + ".corrupt-*"); len(aside) != 0 {
		t.Errorf("a locked file was moved aside: %v", aside)
	}
}

func TestReadOnlyAndPurge(t *testing.T) {
	path := filepath.Join(t.TempDir(), "outbox.db")
	if _, err := Open(path, &Options{ReadOnly: true}, discard()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("read-only open of a missing file: got %v, want not exist", err)
	}
	ob := open(t, path, &Options{CommitInterval: time.Millisecond})
	for i := range 4 {
		mustAppend(t, ob, []string{"a", "b"}[i%2], fmt.Sprintf("m%d", i), DropOldest)
	}
	// Held by a running gateway: inspection says so instead of waiting.
	if _, err := Open(path, &Options{ReadOnly: true}, discard()); !errors.Is(err, berrors.ErrTimeout) {
		t.Errorf("read-only open of a held file: got %v, want a lock timeout", err)
	}
	n, err := ob.Purge("a")
	if err != nil || n != 2 {
		t.Fatalf("purge a: got %d, %v; want 2", n, err)
	}
	if st := ob.Stats(); st.Messages != 2 || st.Routes["b"] != 2 || st.Dropped[ReasonPurged] != 2 {
		t.Errorf("after purge: %+v", st)
	}
	ob.Close()

	ro, err := Open(path, &Options{ReadOnly: true}, discard())
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if st := ro.Stats(); st.Messages != 2 {
		t.Errorf("read-only stats: got %+v, want 2 messages", st)
	}
	ms, err := ro.Read("b", 0, 10)
	if got, want := fmt.Sprint(topics(ms)), "[2:m1 4:m3]"; err != nil || got != want {
		t.Errorf("read-only read: got %s, %v; want %s", got, err, want)
	}
	if _, err := ro.Append(Message{Route: "b"}, DropOldest); !errors.Is(err, ErrReadOnly) {
		t.Errorf("append read-only: got %v, want ErrReadOnly", err)
	}
}

// A full disk fails the commit: the appends of that batch are told, what
// was committed before stays, and the outbox works again once there is room.
func TestFullDisk(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=512k"); err != nil {
		t.Skipf("cannot mount a small tmpfs to fill (needs root): %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	path := filepath.Join(dir, "outbox.db")
	ob := open(t, path, &Options{CommitInterval: time.Millisecond, MaxBytes: 1 << 30})
	payload := make([]byte, 4096)
	committed := 0
	var failure error
	for i := 0; i < 1000 && failure == nil; i++ {
		done, err := ob.Append(Message{Route: "r", Topic: fmt.Sprintf("t/%d", i), Payload: payload, QoS: 1}, DropOldest)
		if err != nil {
			t.Fatal(err)
		}
		if failure = <-done; failure == nil {
			committed++
		}
	}
	if failure == nil || !strings.Contains(failure.Error(), "no space left on device") {
		t.Fatalf("after %d commits: got %v, want no space left on device", committed, failure)
	}
	if st := ob.Stats(); st.Messages != committed {
		t.Errorf("stats after the failure: %d messages, want the %d committed", st.Messages, committed)
	}
	// Room is made (here: the file system grows, as when an operator
	// clears the partition), and the outbox works again.
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_REMOUNT, "size=4m"); err != nil {
		t.Fatal(err)
	}
	ms, err := ob.Read("r", 0, committed/2)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		ob.Ack("r", m.Seq)
	}
	done, err := ob.Append(Message{Route: "r", Topic: "after", Payload: payload, QoS: 1}, DropOldest)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Errorf("append once there is room again: %v", err)
	}
	ob.Close()
	ob = open(t, path, nil)
	if st := ob.Stats(); st.Messages != committed-len(ms)+1 {
		t.Errorf("after reopening: %d messages, want %d", st.Messages, committed-len(ms)+1)
	}
}

// An open that killed the process (bbolt rebuilds the free list in a
// goroutine of its own, where a panic on a damaged page cannot be
// recovered) is not tried again: the next start moves the file aside.
func TestOpenThatCrashedMovedAside(t *testing.T) {
	path := filepath.Join(t.TempDir(), "outbox.db")
	ob := open(t, path, &Options{CommitInterval: time.Millisecond})
	mustAppend(t, ob, "a", "old", DropOldest)
	ob.Close()
	os.WriteFile(path+".opening", nil, 0o600) // as a process that died in Open leaves it
	ob = open(t, path, &Options{CommitInterval: time.Millisecond})
	if aside, _ := filepath.Glob(path + ".corrupt-*"); len(aside) != 1 {
		t.Fatalf("got %v, want one outbox.db.corrupt-<time>", aside)
	}
	if st := ob.Stats(); st.Messages != 0 {
		t.Errorf("the new outbox holds %d messages", st.Messages)
	}
	if _, err := os.Stat(path + ".opening"); !os.IsNotExist(err) {
		t.Errorf("the opening mark is still there: %v", err)
	}
}

// Sequence numbers never go back, even when the outbox ran empty before a
// restart: a consumer that drops duplicates by them, and a checkpoint that
// names them, would otherwise take new messages for old ones.
func TestSequenceSurvivesEmptyOutbox(t *testing.T) {
	path := filepath.Join(t.TempDir(), "outbox.db")
	ob, err := Open(path, &Options{CommitInterval: time.Millisecond}, discard())
	if err != nil {
		t.Fatal(err)
	}
	id := ob.ID()
	if len(id) != 32 {
		t.Fatalf("ID %q: want 32 hex digits", id)
	}
	for i := range 3 {
		mustAppend(t, ob, "a", fmt.Sprintf("a/%d", i), DropOldest)
	}
	ob.Ack("a", 1, 2, 3)
	if err := ob.Close(); err != nil {
		t.Fatal(err)
	}
	ob = open(t, path, &Options{CommitInterval: time.Millisecond})
	if st := ob.Stats(); st.Messages != 0 {
		t.Fatalf("after reopen: %d messages, want none", st.Messages)
	}
	if ob.ID() != id {
		t.Errorf("ID changed across a reopen: %s, then %s", id, ob.ID())
	}
	if ob.LastSeq() != 3 {
		t.Errorf("LastSeq after reopen = %d, want 3", ob.LastSeq())
	}
	mustAppend(t, ob, "a", "a/3", DropOldest)
	if ob.OpenSeq() != 3 || ob.LastSeq() != 4 {
		t.Errorf("OpenSeq, LastSeq = %d, %d after one append; want 3, 4", ob.OpenSeq(), ob.LastSeq())
	}
	if ms, _ := ob.Read("a", 0, 10); fmt.Sprint(topics(ms)) != "[4:a/3]" {
		t.Errorf("the first message after an empty restart: got %v, want [4:a/3]", topics(ms))
	}
	if other := open(t, "", nil); other.ID() == id {
		t.Errorf("two outbox files share the ID %s", id)
	}
}

// AckThrough deletes a route's messages up to a sequence number, and no
// other route's.
func TestAckThrough(t *testing.T) {
	ob := open(t, "", &Options{CommitInterval: time.Millisecond})
	for i := range 4 {
		mustAppend(t, ob, "a", fmt.Sprintf("a/%d", i), DropOldest) // 1 3 5 7
		mustAppend(t, ob, "b", fmt.Sprintf("b/%d", i), DropOldest) // 2 4 6 8
	}
	changed := ob.Changed()
	ob.AckThrough("a", 5)
	ob.AckThrough("nosuch", 5)
	<-changed
	if ms, _ := ob.Read("a", 0, 10); fmt.Sprint(topics(ms)) != "[7:a/3]" {
		t.Errorf("a after AckThrough 5: got %v, want [7:a/3]", topics(ms))
	}
	if ms, _ := ob.Read("b", 0, 10); len(ms) != 4 {
		t.Errorf("b after AckThrough of a: got %v, want all four", topics(ms))
	}
	if st := ob.Stats(); st.Acked != 3 || st.Messages != 5 || st.Routes["a"] != 1 {
		t.Errorf("stats: got %+v, want 3 acked, 5 held, a:1", st)
	}
}

// Appends from many publishers at once are committed in the order of
// their sequence numbers: a reader that follows the outbox by sequence
// number, as the uplink does, skips none of them.
func TestConcurrentAppendsInOrder(t *testing.T) {
	ob := open(t, "", &Options{CommitInterval: 100 * time.Microsecond, MaxBatch: 3})
	const writers, each = 16, 500
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				if _, err := ob.Append(Message{Route: "r", Topic: fmt.Sprintf("w%d/%d", w, i), QoS: 1}, DropOldest); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	read := map[uint64]bool{}
	var cursor uint64
	for len(read) < writers*each {
		changed := ob.Changed()
		ms, err := ob.Read("r", cursor, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			read[m.Seq] = true
			cursor = m.Seq
		}
		if len(ms) == 0 {
			if st := ob.Stats(); st.Messages == writers*each && cursor == ob.LastSeq() {
				break
			}
			<-changed
		}
	}
	wg.Wait()
	missed := 0
	for s := uint64(1); s <= ob.LastSeq(); s++ {
		if !read[s] {
			missed++
		}
	}
	if missed > 0 {
		t.Errorf("a reader following the sequence numbers missed %d of %d messages: committed below what it had read", missed, writers*each)
	}
}
