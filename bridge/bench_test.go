package bridge

// Benchmarks for make bench. They print figures, side by side with a
// Mosquitto bridge where Mosquitto does the same job; none of them fails on
// a time.

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/time/rate"

	"github.com/fieldgate/fieldgate/bridge/mosquittotest"
	"github.com/fieldgate/fieldgate/bridge/outbox"
	"github.com/fieldgate/fieldgate/provisioning/pkitest"
)

var payload64 = []byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")

// BenchmarkOutboxAppend: appends from 10 publishers as fast as they come,
// each waiting for its message to be on disk. Reports commits (each one
// fsyncs the data and the meta page) per message.
func BenchmarkOutboxAppend(b *testing.B) {
	ob, err := outbox.Open(filepath.Join(b.TempDir(), "outbox.db"), nil, discard())
	if err != nil {
		b.Fatal(err)
	}
	defer ob.Close()
	b.SetBytes(int64(len(payload64)))
	b.ResetTimer()
	var wg sync.WaitGroup
	per := b.N/10 + 1
	for range 10 {
		wg.Go(func() {
			var last <-chan error
			for range per {
				done, err := ob.Append(outbox.Message{Route: "r", Topic: "sensors/t", Payload: payload64, QoS: 1}, outbox.DropOldest)
				if err != nil {
					b.Error(err)
					return
				}
				last = done
			}
			<-last
		})
	}
	wg.Wait()
	b.StopTimer()
	st := ob.Stats()
	b.ReportMetric(float64(st.Commits)/float64(st.Appended), "commits/msg")
	b.ReportMetric(float64(st.Appended)/b.Elapsed().Seconds(), "msg/s")
}

// BenchmarkOutboxAt10kps: 10,000 messages a second, as a busy site might
// send; the figure is fsyncs per message (two per bbolt commit). Mosquitto
// does no fsync for its queue at all: it writes its whole state every
// autosave_interval and loses what came since on power loss.
func BenchmarkOutboxAt10kps(b *testing.B) {
	ob, err := outbox.Open(filepath.Join(b.TempDir(), "outbox.db"), nil, discard())
	if err != nil {
		b.Fatal(err)
	}
	defer ob.Close()
	lim := rate.NewLimiter(10000, 100)
	var dones []<-chan error
	for range b.N {
		lim.Wait(context.Background())
		done, err := ob.Append(outbox.Message{Route: "r", Topic: "sensors/t", Payload: payload64, QoS: 1}, outbox.DropOldest)
		if err != nil {
			b.Fatal(err)
		}
		dones = append(dones, done)
	}
	for _, d := range dones {
		<-d
	}
	st := ob.Stats()
	b.ReportMetric(2*float64(st.Commits)/float64(st.Appended), "fsyncs/msg")
	if st.Commits > 0 {
		b.ReportMetric(float64(st.CommitTime.Microseconds())/float64(st.Commits), "µs/commit")
	}
}

// BenchmarkDrain50k: a 50,000-message backlog (64-byte QoS 1) held while
// the central broker was away is delivered once it is back; the figure is
// the drain rate from the first message's arrival to the last's, at a
// subscriber on the central broker.
func BenchmarkDrain50k(b *testing.B) {
	const n = 50000
	b.Run("fieldgate", func(b *testing.B) {
		for range b.N {
			ca := pkitest.NewCA(b, "Central CA")
			srv, obs, dev := ca.Server(b, "central"), ca.Client(b, "observer"), ca.Client(b, "EGW-BENCH")
			central := mosquittotest.Start(b, mosquittotest.Options{CAFile: ca.CertFile, CertFile: srv.CertFile, KeyFile: srv.KeyFile, Extra: centralExtra})
			arrived := make(chan paho.Message, n+100)
			central.SubscribeQoS(b, "observer", obs.CertFile, obs.KeyFile, ca.CertFile, "devices/#", 0, arrived)
			proxy := mosquittotest.NewProxy(b, central.Addr)
			proxy.Block()
			br, ob := benchBridge(b, ca, dev, proxy.Addr)
			var last <-chan error
			for range n {
				stored, err := br.Forward("sensors/t", payload64, 1, false)
				if err != nil {
					b.Fatal(err)
				}
				last = stored
			}
			<-last
			if st := ob.Stats(); st.Messages != n {
				b.Fatalf("outbox holds %d, want %d", st.Messages, n)
			}
			proxy.Unblock()
			reportDrain(b, arrived, n, "devices/EGW-BENCH/status")
		}
	})
	b.Run("mosquitto", func(b *testing.B) {
		for range b.N {
			ca := pkitest.NewCA(b, "Central CA")
			srv, obs, dev := ca.Server(b, "central"), ca.Client(b, "observer"), ca.Client(b, "EGW-MOSQ")
			centralPort := mosquittotest.FreePort(b)
			edge := mosquittotest.StartBridge(b, mosquittotest.BridgeOptions{
				CAFile: ca.CertFile, CertFile: dev.CertFile, KeyFile: dev.KeyFile,
				CentralPort: centralPort, Topic: `sensors/# out 1 "" devices/EGW-MOSQ/`,
			})
			publishQoS1(b, edge.Addr, n)
			central := mosquittotest.Start(b, mosquittotest.Options{CAFile: ca.CertFile, CertFile: srv.CertFile, KeyFile: srv.KeyFile, Port: centralPort, Extra: centralExtra})
			arrived := make(chan paho.Message, n+100)
			central.SubscribeQoS(b, "observer", obs.CertFile, obs.KeyFile, ca.CertFile, "devices/#", 0, arrived)
			reportDrain(b, arrived, n, "")
		}
	})
}

// benchBridge runs a bridge with a fresh outbox towards addr until the
// benchmark ends.
func benchBridge(b *testing.B, ca *pkitest.CA, dev pkitest.Pair, addr string) (*Bridge, *outbox.Outbox) {
	b.Helper()
	ob, err := outbox.Open(filepath.Join(b.TempDir(), "outbox.db"), &outbox.Options{MaxBytes: 1 << 30}, discard())
	if err != nil {
		b.Fatal(err)
	}
	br, err := New(Options{
		Addresses:    []string{"ssl://" + addr},
		TLS:          clientTLS(b, ca, dev),
		ClientID:     "EGW-BENCH",
		Outbox:       ob,
		Routes:       []Route{{Local: "sensors/#", Direction: Out, Prefix: "devices/EGW-BENCH/", QoS: 1}},
		StatusTopic:  "devices/EGW-BENCH/status",
		ReconnectMin: 10 * time.Millisecond,
		ReconnectMax: 100 * time.Millisecond,
	}, discard())
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); br.Run(ctx) }()
	b.Cleanup(func() { cancel(); <-done; ob.Close() })
	return br, ob
}

// publishQoS1 publishes n 64-byte QoS 1 messages on sensors/t to the
// broker at addr and waits for every PUBACK.
func publishQoS1(b *testing.B, addr string, n int) {
	b.Helper()
	cl := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID("bench-pub").SetAutoReconnect(false))
	if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatalf("connect: %v", tok.Error())
	}
	defer cl.Disconnect(0)
	toks := make(chan paho.Token, 256)
	go func() {
		defer close(toks)
		for range n {
			toks <- cl.Publish("sensors/t", 1, false, payload64)
		}
	}()
	for tok := range toks {
		if !tok.WaitTimeout(time.Minute) || tok.Error() != nil {
			b.Fatalf("publish: %v", tok.Error())
		}
	}
}

// reportDrain waits for n messages (ignoring the status topic) and
// reports the drain rate from the first arrival to the last.
func reportDrain(b *testing.B, arrived <-chan paho.Message, n int, ignore string) {
	b.Helper()
	var first time.Time
	got := 0
	deadline := time.After(5 * time.Minute)
	for got < n {
		select {
		case m := <-arrived:
			if m.Topic() == ignore {
				continue
			}
			if got == 0 {
				first = time.Now()
			}
			got++
		case <-deadline:
			b.Fatalf("%d of %d arrived", got, n)
		}
	}
	d := time.Since(first)
	b.ReportMetric(d.Seconds(), "drain-s")
	b.ReportMetric(float64(n)/d.Seconds(), "msg/s")
}
