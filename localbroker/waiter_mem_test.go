package localbroker

import (
	"fmt"
	"path/filepath"
	"runtime"
	"testing"

	paho5 "github.com/eclipse/paho.golang/paho"
)

// A device that has published a message the gateway stores keeps a
// waiter goroutine for as long as it is connected (it acknowledges the
// device's stored publishes in turn), and its queue. Both are small: the
// stack once held the waiter's batch of 64 packets, 53 KB, so every such
// device cost 64 KB of stack, 32 MB for a site of 500.
func TestWaiterStackSmall(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes every stack frame larger")
	}
	b := interopBrokerForwarding(t, Limits{}, storingForward(t, filepath.Join(t.TempDir(), "outbox.db")))
	stats := func() runtime.MemStats {
		runtime.GC() // each cycle halves a stack less than a quarter used
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m
	}
	const n = 50
	var clients []*client5
	for i := range n {
		clients = append(clients, connect5(t, b, &paho5.Connect{ClientID: fmt.Sprint("dev-", i), CleanStart: true}))
	}
	before := stats()
	for _, c := range clients {
		c.pub(t, &paho5.Publish{Topic: topics5[0], QoS: 1, Payload: []byte("reading")})
	}
	b.gate.mu.Lock()
	waiters := len(b.gate.waiters)
	b.gate.mu.Unlock()
	if waiters != n {
		t.Fatalf("%d waiters, want one per device (%d)", waiters, n)
	}
	after := stats()
	per := float64(after.StackInuse-before.StackInuse) / n / 1024
	heap := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / n / 1024
	t.Logf("%.1f KB of stack, %.1f KB of heap per device that has published", per, heap)
	if per > 16 {
		t.Errorf("%.1f KB of stack per device's waiter, want at most 16", per)
	}
	// Its queue keeps room for 2 publishes while the device is quiet, not
	// 16 (a deferred publish is most of a kilobyte): 16.7 KB of heap per
	// device then.
	if heap > 10 {
		t.Errorf("%.1f KB of heap per device that has published, want at most 10", heap)
	}
}
