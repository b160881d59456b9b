package bridge

import (
	"encoding/json"
	"testing"
)

func TestWithSequence(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`[{"bn":"EGW-1/","n":"sim/temperature","u":"Cel","v":21.5}]`, `[{"seq":42,"bn":"EGW-1/","n":"sim/temperature","u":"Cel","v":21.5}]`},
		{` [ {"n":"a","v":1},{"n":"b","v":2}]`, ` [ {"seq":42,"n":"a","v":1},{"n":"b","v":2}]`},
		{`[{}]`, `[{"seq":42}]`},
		{`[{"seq":7,"v":1}]`, `[{"seq":7,"v":1}]`}, // already there
		{`on`, `on`}, // not SenML: untouched
		{`[1,2]`, `[1,2]`},
		{`[{"v":1}`, `[{"v":1}`}, // not valid JSON
		{`{"v":1}`, `{"v":1}`},
	} {
		got := string(WithSequence([]byte(tc.in), "seq", 42))
		if got != tc.want {
			t.Errorf("WithSequence(%s): got %s, want %s", tc.in, got, tc.want)
		}
		if json.Valid([]byte(tc.in)) && !json.Valid([]byte(got)) {
			t.Errorf("WithSequence(%s) = %s: no longer JSON", tc.in, got)
		}
	}
}
