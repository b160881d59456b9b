package sensors

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// script is a sensor that answers from a list, then repeats its last answer.
type script struct {
	mu     sync.Mutex
	steps  []step
	halted bool
}

type step struct {
	ms  []Measurement
	err error
}

func (s *script) Sense(ctx context.Context) ([]Measurement, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.steps[0]
	if len(s.steps) > 1 {
		s.steps = s.steps[1:]
	}
	return st.ms, st.err
}

func (s *script) Halt() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.halted = true
	return nil
}

type published struct {
	topic   string
	payload string
	qos     byte
}

type chanPublisher chan published

func (c chanPublisher) Publish(topic string, payload []byte, qos byte, retain bool) error {
	c <- published{topic, string(payload), qos}
	return nil
}

func TestLoopPublishesAndSurvivesFailures(t *testing.T) {
	at := time.Unix(1700000000, 0)
	good := &script{steps: []step{
		{ms: []Measurement{{Quantity: "temperature", Unit: "Cel", Value: 20}, {Quantity: "humidity", Unit: "%RH", Value: 40}}},
	}}
	flaky := &script{steps: []step{
		{err: errors.New("i2c: nack")},
		{err: errors.New("i2c: nack")},
		{ms: []Measurement{{Quantity: "pressure", Unit: "Pa", Value: 101325}}},
	}}
	pub := make(chanPublisher, 100)
	l := NewLoop(LoopOptions{
		DeviceID:  "EGW-1",
		Publisher: pub,
		Now:       func() time.Time { return at },
		Entries: []Entry{
			{Name: "good", Sensor: good, Interval: 10 * time.Millisecond, QoS: 1},
			{Name: "flaky", Sensor: flaky, Interval: 10 * time.Millisecond},
		},
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- l.Run(ctx) }()

	want := map[string]published{
		"sensors/good/temperature": {"sensors/good/temperature", `[{"bn":"EGW-1/","bt":1700000000,"n":"good/temperature","u":"Cel","v":20}]`, 1},
		"sensors/good/humidity":    {"sensors/good/humidity", `[{"bn":"EGW-1/","bt":1700000000,"n":"good/humidity","u":"%RH","v":40}]`, 1},
		"sensors/flaky/pressure":   {"sensors/flaky/pressure", `[{"bn":"EGW-1/","bt":1700000000,"n":"flaky/pressure","u":"Pa","v":101325}]`, 0},
	}
	deadline := time.After(10 * time.Second)
	for len(want) > 0 {
		select {
		case p := <-pub:
			w, ok := want[p.topic]
			if !ok {
				continue // a repeat
			}
			if p != w {
				t.Errorf("got %+v, want %+v", p, w)
			}
			delete(want, p.topic)
		case <-deadline:
			t.Fatalf("never published: %v", want)
		}
	}
	h := l.Health()
	if h["good"] != "ok" {
		t.Errorf("health of good: %q, want ok", h["good"])
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	if !good.halted || !flaky.halted {
		t.Error("sensors not halted when the loop stopped")
	}
}
