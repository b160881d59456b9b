package gateway

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/fieldgate/fieldgate/localbroker"
)

// notifier speaks systemd's notification protocol (sd_notify(3)) on
// $NOTIFY_SOCKET: READY=1, STATUS=…, WATCHDOG=1, RELOADING=1, STOPPING=1.
// Without $NOTIFY_SOCKET it does nothing.
type notifier struct {
	conn     *net.UnixConn
	watchdog time.Duration // $WATCHDOG_USEC for this process; 0: none
}

func newNotifier() *notifier {
	n := &notifier{}
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return n
	}
	if strings.HasPrefix(path, "@") { // abstract socket
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return n
	}
	n.conn = c
	if usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64); err == nil && usec > 0 {
		if pid := os.Getenv("WATCHDOG_PID"); pid == "" || pid == strconv.Itoa(os.Getpid()) {
			n.watchdog = time.Duration(usec) * time.Microsecond
		}
	}
	return n
}

func (n *notifier) send(state string) {
	if n.conn != nil {
		n.conn.Write([]byte(state))
	}
}

func (n *notifier) close() {
	if n.conn != nil {
		n.conn.Close()
	}
}

// watchdogProbeTopic is published to and received back by the gateway
// itself to show that the broker still moves messages.
const watchdogProbeTopic = "$fieldgate/watchdog"

// runWatchdog pings systemd every half watchdog period while the broker
// moves a message and the bridge loop has turned lately; a wedged loop
// stops the pings and systemd restarts the service. It also says what the
// gateway is doing in STATUS=.
func (g *Gateway) runWatchdog(ctx context.Context, n *notifier) {
	every := n.watchdog / 2
	if every <= 0 {
		every = 10 * time.Second // STATUS only
	}
	seen := make(chan struct{}, 1)
	g.broker.Subscribe(watchdogProbeTopic, 1<<20, func(localbroker.Message) {
		select {
		case seen <- struct{}{}:
		default:
		}
	})
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		n.send("STATUS=" + g.status())
		if n.watchdog > 0 && g.alive(seen, every) {
			n.send("WATCHDOG=1")
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// alive reports whether the broker delivered a probe within wait and the
// bridge loop turned within the watchdog period.
func (g *Gateway) alive(seen chan struct{}, wait time.Duration) bool {
	go g.broker.Publish(localbroker.Message{Topic: watchdogProbeTopic})
	select {
	case <-seen:
	case <-time.After(wait):
		g.log.Error("watchdog: the broker did not deliver its probe; not pinging systemd")
		return false
	}
	if g.bridge != nil {
		if age := time.Since(g.bridge.Heartbeat()); age > max(2*wait, 3*time.Second) { // it turns every second
			g.log.Error("watchdog: the bridge loop has not turned lately; not pinging systemd", "since", age.Round(time.Second))
			return false
		}
	}
	return true
}

// status is one line for systemctl status.
func (g *Gateway) status() string {
	if g.bridge == nil {
		return "broker only, no uplink"
	}
	st := g.bridge.Status()
	if st.Connected {
		return fmt.Sprintf("uplink connected to %s, %d queued, %d sent", st.Address, st.Queued, st.Sent)
	}
	return fmt.Sprintf("uplink down (%s), %d queued", st.LastError, st.Queued)
}
