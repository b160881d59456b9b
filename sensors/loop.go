package sensors

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Publisher takes a reading to the local broker.
type Publisher interface {
	Publish(topic string, payload []byte, qos byte, retain bool) error
}

// Entry is one sensor the loop polls.
type Entry struct {
	Name     string
	Sensor   Sensor
	Interval time.Duration
	QoS      byte
}

// LoopOptions configure a Loop.
type LoopOptions struct {
	DeviceID  string
	Publisher Publisher
	Entries   []Entry
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Loop polls sensors and publishes their readings on
// sensors/<name>/<quantity>.
type Loop struct {
	o   LoopOptions
	log *slog.Logger

	mu     sync.Mutex
	health map[string]string // by sensor: "ok", "failing: …", or "starting"
}

// NewLoop returns a Loop; Run starts it.
func NewLoop(o LoopOptions, log *slog.Logger) *Loop {
	if o.Now == nil {
		o.Now = time.Now
	}
	l := &Loop{o: o, log: log, health: map[string]string{}}
	for _, e := range o.Entries {
		l.health[e.Name] = "starting"
	}
	return l
}

// Health returns each sensor's state: "ok", "starting", or "failing: "
// and the last error.
func (l *Loop) Health() map[string]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	h := make(map[string]string, len(l.health))
	for k, v := range l.health {
		h[k] = v
	}
	return h
}

func (l *Loop) setHealth(name string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.health[name] = "failing: " + err.Error()
	} else {
		l.health[name] = "ok"
	}
}

// Run polls every sensor at its interval until ctx ends, then halts them.
// A sensor that fails does not stop the others.
func (l *Loop) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, e := range l.o.Entries {
		wg.Go(func() { l.poll(ctx, e) })
	}
	wg.Wait()
	for _, e := range l.o.Entries {
		if err := e.Sensor.Halt(); err != nil {
			l.log.Warn("sensor halt failed", "sensor", e.Name, "err", err)
		}
	}
	return nil
}

func (l *Loop) poll(ctx context.Context, e Entry) {
	t := time.NewTicker(e.Interval)
	defer t.Stop()
	failing := false
	for {
		err := l.readOnce(ctx, e)
		if ctx.Err() == nil {
			l.setHealth(e.Name, err)
		}
		switch {
		case err != nil && !failing && ctx.Err() == nil:
			// Logged when it starts failing and when it recovers, not on
			// every tick: journald lives on the SD card.
			l.log.Warn("sensor read failed", "sensor", e.Name, "err", err)
			failing = true
		case err == nil && failing:
			l.log.Info("sensor recovered", "sensor", e.Name)
			failing = false
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

func (l *Loop) readOnce(ctx context.Context, e Entry) error {
	rctx, cancel := context.WithTimeout(ctx, e.Interval)
	defer cancel()
	at := l.o.Now()
	ms, err := e.Sensor.Sense(rctx)
	if err != nil {
		return err
	}
	for _, m := range ms {
		payload, err := EncodeSenML(l.o.DeviceID, e.Name, at, m)
		if err != nil {
			return fmt.Errorf("encode %s: %w", m.Quantity, err)
		}
		topic := "sensors/" + e.Name + "/" + m.Quantity
		if err := l.o.Publisher.Publish(topic, payload, e.QoS, false); err != nil {
			return fmt.Errorf("publish %s: %w", topic, err)
		}
	}
	return nil
}
