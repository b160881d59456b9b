package sensors

import (
	"encoding/json"
	"time"
)

// Record is one SenML record (RFC 8428 §4). Fieldgate's packs hold one
// record each: base name (the device id and a '/'), base time (the time of
// acquisition, in seconds since the Unix epoch), name ("<sensor>/<quantity>"),
// unit and value.
type Record struct {
	BaseName string  `json:"bn,omitempty"`
	BaseTime float64 `json:"bt,omitempty"`
	Name     string  `json:"n"`
	Unit     string  `json:"u,omitempty"`
	Value    float64 `json:"v"`
}

// EncodeSenML returns the SenML JSON pack for measurement m of sensor name
// on device deviceID, acquired at t.
func EncodeSenML(deviceID, name string, t time.Time, m Measurement) ([]byte, error) {
	return json.Marshal([]Record{{
		BaseName: deviceID + "/",
		BaseTime: float64(t.UnixMilli()) / 1e3,
		Name:     name + "/" + m.Quantity,
		Unit:     m.Unit,
		Value:    m.Value,
	}})
}
