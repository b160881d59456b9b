package bridge

import (
	"bytes"
	"encoding/json"
	"strconv"
)

// WithSequence returns payload with "field":seq added to the first record
// when payload is a SenML JSON pack (an array of objects), and payload
// unchanged otherwise. A field already there is left alone.
func WithSequence(payload []byte, field string, seq uint64) []byte {
	p := bytes.TrimLeft(payload, " \t\r\n")
	if len(p) < 2 || p[0] != '[' {
		return payload
	}
	rest := bytes.TrimLeft(p[1:], " \t\r\n")
	if len(rest) == 0 || rest[0] != '{' || !json.Valid(payload) {
		return payload
	}
	var first map[string]json.RawMessage
	if dec := json.NewDecoder(bytes.NewReader(p[1:])); dec.Decode(&first) != nil {
		return payload
	} else if _, ok := first[field]; ok {
		return payload
	}
	key, _ := json.Marshal(field)
	at := len(payload) - len(rest) + 1 // just after the first '{'
	out := make([]byte, 0, len(payload)+len(key)+24)
	out = append(out, payload[:at]...)
	out = append(out, key...)
	out = append(out, ':')
	out = strconv.AppendUint(out, seq, 10)
	if inner := bytes.TrimLeft(payload[at:], " \t\r\n"); len(inner) > 0 && inner[0] != '}' {
		out = append(out, ',')
	}
	return append(out, payload[at:]...)
}
