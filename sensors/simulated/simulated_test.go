package simulated

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/fieldgate/fieldgate/sensors"
)

func TestSimulatedIsSmoothAndPlausible(t *testing.T) {
	start := time.Unix(1700000000, 0)
	now := start
	d := New("sim", func() time.Time { return now })
	var prev []sensors.Measurement
	minT, maxT := math.Inf(1), math.Inf(-1)
	for i := 0; i < 600; i++ { // one period, a second apart
		now = start.Add(time.Duration(i) * time.Second)
		ms, err := d.Sense(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) != 2 || ms[0].Quantity != "temperature" || ms[0].Unit != "Cel" || ms[1].Quantity != "humidity" || ms[1].Unit != "%RH" {
			t.Fatalf("got %+v, want temperature in Cel and humidity in %%RH", ms)
		}
		temp, rh := ms[0].Value, ms[1].Value
		if temp < 17 || temp > 25 || rh < 30 || rh > 60 {
			t.Fatalf("t=%ds: %v °C, %v %%RH: not a plausible indoor climate", i, temp, rh)
		}
		if prev != nil && (math.Abs(temp-prev[0].Value) > 0.2 || math.Abs(rh-prev[1].Value) > 0.5) {
			t.Fatalf("t=%ds: jumped from %v to %v: not smooth", i, prev, ms)
		}
		minT, maxT = min(minT, temp), max(maxT, temp)
		prev = ms
	}
	if maxT-minT < 4 {
		t.Errorf("temperature spans %v..%v over a period: want a visible cycle", minT, maxT)
	}
	other, _ := New("other", func() time.Time { return now }).Sense(context.Background())
	if other[0].Value == prev[0].Value {
		t.Errorf("two simulated sensors read the same %v: want them to differ", other[0].Value)
	}
}

func TestRegistered(t *testing.T) {
	if !sensors.Known("simulated") {
		t.Fatal("driver simulated is not registered")
	}
	s, err := sensors.Open("simulated", sensors.Config{Name: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Sense(context.Background()); err != nil {
		t.Error(err)
	}
}
