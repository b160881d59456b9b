package localbroker

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"
	pahopk "github.com/eclipse/paho.mqtt.golang/packets"
)

// rules is an Authorizer that tightens and loosens the files' verdicts.
type rules struct{ seen chan ClientInfo }

func (r rules) Authenticate(c ClientInfo, _ []byte, builtin bool) bool {
	select {
	case r.seen <- c:
	default:
	}
	return builtin && c.Username != "mallory"
}

func (rules) AuthorizePublish(c ClientInfo, topic string, payload []byte, builtin bool) bool {
	if string(payload) == "forbidden" {
		return false
	}
	return builtin || topic == "granted/by/plugin"
}

func (rules) AuthorizeSubscribe(c ClientInfo, filter string, builtin bool) bool {
	return builtin && !strings.HasPrefix(filter, "secret/")
}

func pluginBroker(t *testing.T) (*Broker, chan ClientInfo) {
	t.Helper()
	hash, _ := HashPassword([]byte("pw"), 0)
	pw, err := ParsePasswordFile("pw", []byte("dev:"+hash+"\nmallory:"+hash+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	acl, err := ParseACL("acl", []byte("user dev\ntopic readwrite data/#\ntopic read secret/#\ntopic read granted/#\n"))
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan ClientInfo, 10)
	b, err := New(&Options{
		Listeners:  []Listener{{Address: "127.0.0.1:0"}},
		Security:   Security{Passwords: pw, ACL: acl},
		Authorizer: rules{seen},
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, seen
}

// The Authorizer has the last word: it refuses a user the password file
// lets in, a subscription and a payload the ACL allows, and allows a topic
// the ACL denies — with real MQTT 3.1.1 and 5 clients.
func TestAuthorizer(t *testing.T) {
	b, seen := pluginBroker(t)
	if cl, err := connect3(b, "m", "mallory", "pw"); err == nil {
		cl.Disconnect(0)
		t.Error("mallory got in")
	}
	cl, err := connect3(b, "d1", "dev", "pw")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Disconnect(0)
	// paho tries MQTT 3.1.1, then 3.1, so mallory is seen more than once.
	for range len(seen) {
		if ci := <-seen; !strings.HasPrefix(ci.Remote, "127.0.0.1:") || ci.Listener == "" || ci.ProtocolVersion < 3 || ci.ProtocolVersion > 4 || ci.Certificate != nil {
			t.Errorf("client info %+v", ci)
		}
	}

	got := make(chan string, 10)
	tok := cl.SubscribeMultiple(map[string]byte{"data/#": 1, "secret/#": 1, "granted/#": 1}, func(_ paho.Client, m paho.Message) { got <- m.Topic() + " " + string(m.Payload()) })
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	codes := tok.(*paho.SubscribeToken).Result()
	if codes["data/#"] != 1 || codes["secret/#"] != 0x80 || codes["granted/#"] != 1 {
		t.Errorf("SUBACK codes %v, want data/# 1, secret/# 0x80, granted/# 1", codes)
	}
	for _, p := range []struct{ topic, payload string }{{"data/a", "forbidden"}, {"granted/by/plugin", "ok"}, {"data/b", "fine"}} {
		if tok := cl.Publish(p.topic, 0, false, p.payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	// QoS 0, in order on one connection: the refused payload is never
	// delivered, and what the plugin granted is.
	for _, want := range []string{"granted/by/plugin ok", "data/b fine"} {
		select {
		case m := <-got:
			if m != want {
				t.Errorf("delivered %q, want %q", m, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%q was not delivered", want)
		}
	}

	// MQTT 5: a refused QoS 1 publish is answered with 0x87.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u, _ := url.Parse("mqtt://" + b.Addrs()[0])
	cm, err := autopaho.NewConnection(ctx, autopaho.ClientConfig{
		ServerUrls: []*url.URL{u}, ConnectUsername: "dev", ConnectPassword: []byte("pw"), KeepAlive: 30,
		ClientConfig: paho5.ClientConfig{ClientID: "d5"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cm.Disconnect(context.Background())
	if err := cm.AwaitConnection(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := cm.Publish(ctx, &paho5.Publish{Topic: "data/x", QoS: 1, Payload: []byte("forbidden")})
	if err == nil && (res == nil || res.ReasonCode != 0x87) {
		t.Errorf("MQTT 5 refused publish: %+v, want reason code 0x87", res)
	} else if err != nil && !strings.Contains(err.Error(), "135") && !strings.Contains(err.Error(), "not authorized") {
		t.Errorf("MQTT 5 refused publish: %v, want reason code 0x87", err)
	}
}

// A last will is held to the ACL when it is sent, as Mosquitto does (mochi
// does not): one on a topic its client may not write reaches nobody, one it
// may is delivered and handed to the forwarder for the bridge.
func TestWillACL(t *testing.T) {
	hash, _ := HashPassword([]byte("pw"), 0)
	pw, err := ParsePasswordFile("pw", []byte("dev:"+hash+"\nobs:"+hash+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	acl, err := ParseACL("acl", []byte("user dev\ntopic readwrite data/#\nuser obs\ntopic read #\n"))
	if err != nil {
		t.Fatal(err)
	}
	forwarded := make(chan string, 10)
	logged := logLines(make(chan string, 100))
	b, err := New(&Options{
		Listeners: []Listener{{Address: "127.0.0.1:0"}},
		Security:  Security{Passwords: pw, ACL: acl},
		Forward: func(m Message) (<-chan error, error) {
			forwarded <- m.Topic + " " + string(m.Payload)
			return nil, nil
		},
	}, slog.New(logged))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })

	obs, err := connect3(b, "obs", "obs", "pw")
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Disconnect(0)
	got := make(chan string, 10)
	if tok := obs.Subscribe("#", 1, func(_ paho.Client, m paho.Message) { got <- m.Topic() + " " + string(m.Payload()) }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	// Each device dies without a DISCONNECT, so its will is sent.
	for _, will := range []string{"forbidden/will", "data/will"} {
		c, err := net.Dial("tcp", b.Addrs()[0])
		if err != nil {
			t.Fatal(err)
		}
		cp := pahopk.NewControlPacket(pahopk.Connect).(*pahopk.ConnectPacket)
		cp.ProtocolName, cp.ProtocolVersion, cp.ClientIdentifier, cp.Keepalive = "MQTT", 4, "dev-"+strings.ReplaceAll(will, "/", "-"), 30
		cp.UsernameFlag, cp.Username, cp.PasswordFlag, cp.Password = true, "dev", true, []byte("pw")
		cp.WillFlag, cp.WillTopic, cp.WillMessage, cp.WillQos = true, will, []byte("gone"), 1
		if err := cp.Write(c); err != nil {
			t.Fatal(err)
		}
		ack, err := pahopk.ReadPacket(c)
		if err != nil || ack.(*pahopk.ConnackPacket).ReturnCode != 0 {
			t.Fatalf("connect with will %s: %v %v", will, ack, err)
		}
		c.Close()
	}
	// Both wills were handled: the forbidden one dropped (logged), the
	// other delivered. A message published after that reaches the
	// observer after anything delivered before it: nothing but the
	// allowed will may come first.
	logged.wait(t, "last will dropped")
	select {
	case m := <-got:
		if m != "data/will gone" {
			t.Fatalf("delivered %q, want data/will gone (forbidden/will must not be)", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no will was delivered")
	}
	if err := b.Publish(Message{Topic: "data/sentinel", Payload: []byte("end"), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m != "data/sentinel end" {
			t.Errorf("delivered %q before the sentinel (forbidden/will must not be)", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the sentinel was not delivered")
	}
	// The allowed will is forwarded (after its delivery, so possibly after
	// the sentinel); the forbidden one never is.
	for {
		select {
		case m := <-forwarded:
			switch m {
			case "data/will gone":
				return
			case "data/sentinel end":
				continue
			}
			t.Fatalf("forwarded %q, want data/will gone", m)
		case <-time.After(10 * time.Second):
			t.Fatal("the will was not handed to the forwarder")
		}
	}
}
