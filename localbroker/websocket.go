package localbroker

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// wsListener serves MQTT over WebSocket (ws, or wss on a TLS listener,
// RFC 6455 with the "mqtt" subprotocol) on the same listener stack as the
// TCP listeners: connections tracked for Close, TLS with the CRL and
// reload, a deadline for the CONNECT, and writes that do not wait for a
// slow client. (mochi's own WebSocket listener opens its address itself,
// only once it serves, and writes straight to the socket.)
type wsListener struct {
	id  string
	ln  net.Listener
	tls bool
	// byCertificate tells whether clients are named by their
	// certificates (use_identity_as_username, use_subject_as_username).
	byCertificate func() bool
	srv           *http.Server
	upgrader      websocket.Upgrader
	maxPacket     uint32
	timeout       time.Duration // for the CONNECT
	establish     listeners.EstablishFn
}

func newWSListener(id string, ln net.Listener, isTLS bool, byCertificate func() bool, maxPacket uint32, timeout time.Duration, log *slog.Logger) *wsListener {
	l := &wsListener{id: id, ln: ln, tls: isTLS, byCertificate: byCertificate, maxPacket: maxPacket, timeout: timeout}
	l.upgrader = websocket.Upgrader{
		Subprotocols: []string{"mqtt"},
		// A browser sends the page's Origin. A page on a site dashboard
		// may connect with a password, as to Mosquitto; but where the
		// client certificate names the client, any page the browser
		// opens could connect as the device whose certificate the
		// browser holds: a request from a page is refused there.
		CheckOrigin: func(r *http.Request) bool {
			return r.Header.Get("Origin") == "" || !l.byCertificate()
		},
	}
	l.srv = &http.Server{
		Handler: l,
		// A request that comes slowly holds its connection for the
		// CONNECT's time at most; one that is not an upgrade is answered,
		// and the connection closed (no keep-alive, below).
		ReadHeaderTimeout: timeout,
		MaxHeaderBytes:    8 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	l.srv.SetKeepAlivesEnabled(false) // one request a connection: the upgrade
	return l
}

func (l *wsListener) ID() string      { return l.id }
func (l *wsListener) Address() string { return l.ln.Addr().String() }
func (l *wsListener) Protocol() string {
	if l.tls {
		return "wss"
	}
	return "ws"
}
func (l *wsListener) Init(*slog.Logger) error { return nil } // bound in New

// Serve serves until Close; mochi calls it in a goroutine of its own.
func (l *wsListener) Serve(establish listeners.EstablishFn) {
	l.establish = establish
	l.srv.Serve(l.ln)
}

// Close stops taking connections (http.Server.Close closes the listener;
// the upgraded connections are mochi's) and closes the clients.
func (l *wsListener) Close(closeClients listeners.CloseFn) {
	l.srv.Close()
	closeClients(l.id)
}

// ServeHTTP upgrades a request and hands the connection to mochi, for as
// long as the client stays.
func (l *wsListener) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c, err := l.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // Upgrade has answered
	}
	defer c.Close()
	nc := c.NetConn()
	nc.SetDeadline(time.Now().Add(l.timeout)) // mochi's keepalive replaces it after the CONNECT
	l.establish(l.id, &corkConn{Conn: &wsConn{Conn: nc, ws: c}, maxPacket: l.maxPacket})
}

// wsConn is a WebSocket connection as the byte stream mochi reads and
// writes: each write one binary message; reads run on across messages.
type wsConn struct {
	net.Conn // the upgraded connection: addresses, deadlines, Close
	ws       *websocket.Conn
	r        io.Reader  // the message being read
	wmu      sync.Mutex // gorilla takes one writer at a time
}

// errTextMessage ends a connection that sends a text message: MQTT is
// carried in binary ones [MQTT-6.0.0-1].
var errTextMessage = errors.New("websocket: a text message; MQTT wants binary")

func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			op, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if op != websocket.BinaryMessage {
				return 0, errTextMessage
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

// Write sends p as one binary message.
func (c *wsConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}
