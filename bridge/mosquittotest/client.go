package mosquittotest

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// Subscribe connects a client with the given certificate and sends every
// message on filter to out, until the test ends. It returns once the
// subscription is acknowledged.
func (b *Broker) Subscribe(t testing.TB, clientID, certFile, keyFile, caFile, filter string, out chan<- paho.Message) paho.Client {
	t.Helper()
	return b.SubscribeQoS(t, clientID, certFile, keyFile, caFile, filter, 1, out)
}

// SubscribeQoS is Subscribe at the given QoS. A benchmark's observer takes
// QoS 0 so that the central broker's own acknowledgements to it are not
// what limits the rate measured; the benchmark still counts every message.
func (b *Broker) SubscribeQoS(t testing.TB, clientID, certFile, keyFile, caFile, filter string, qos byte, out chan<- paho.Message) paho.Client {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)
	opts := paho.NewClientOptions().AddBroker(b.URL).SetClientID(clientID).
		SetTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots, MinVersion: tls.VersionTLS12}).
		SetAutoReconnect(false).SetOrderMatters(true)
	cl := paho.NewClient(opts)
	if tok := cl.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: connect: %v", clientID, tok.Error())
	}
	if tok := cl.Subscribe(filter, qos, func(_ paho.Client, m paho.Message) { out <- m }); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: subscribe: %v", clientID, tok.Error())
	}
	t.Cleanup(func() { cl.Disconnect(0) })
	return cl
}
