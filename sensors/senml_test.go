package sensors

import (
	"testing"
	"time"
)

func TestEncodeSenML(t *testing.T) {
	at := time.Date(2026, 11, 25, 3, 7, 21, 123_000_000, time.UTC)
	got, err := EncodeSenML("EGW-0001", "sim", at, Measurement{Quantity: "temperature", Unit: "Cel", Value: 21.5})
	if err != nil {
		t.Fatal(err)
	}
	want := `[{"bn":"EGW-0001/","bt":1795576041.123,"n":"sim/temperature","u":"Cel","v":21.5}]`
	if string(got) != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	// A value of zero is a value, not an absent one.
	got, err = EncodeSenML("EGW-0001", "door", at, Measurement{Quantity: "open", Value: 0})
	if err != nil {
		t.Fatal(err)
	}
	want = `[{"bn":"EGW-0001/","bt":1795576041.123,"n":"door/open","v":0}]`
	if string(got) != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}
