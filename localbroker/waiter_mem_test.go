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
// device's stored publishes in turn). Its stack is small: it once held
// the waiter's batch of 64 packets, 53 KB, so every such device cost
// 64 KB of stack, 32 MB for a site of 500.
func TestWaiterStackSmall(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes every stack frame larger")
	}
	b := interopBrokerForwarding(t, Limits{}, storingForward(t, filepath.Join(t.TempDir(), "outbox.db")))
	stacks := func() uint64 {
		runtime.GC() // each cycle halves a stack less than a quarter used
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.StackInuse
	}
	const n = 50
	var clients []*client5
	for i := range n {
		clients = append(clients, connect5(t, b, &paho5.Connect{ClientID: fmt.Sprint("dev-", i), CleanStart: true}))
	}
	before := stacks()
	for _, c := range clients {
		c.pub(t, &paho5.Publish{Topic: topics5[0], QoS: 1, Payload: []byte("reading")})
	}
	b.gate.mu.Lock()
	waiters := len(b.gate.waiters)
	b.gate.mu.Unlock()
	if waiters != n {
		t.Fatalf("%d waiters, want one per device (%d)", waiters, n)
	}
	per := float64(stacks()-before) / n / 1024
	t.Logf("%.1f KB of stack per device that has published", per)
	if per > 16 {
		t.Errorf("%.1f KB of stack per device's waiter, want at most 16", per)
	}
}
