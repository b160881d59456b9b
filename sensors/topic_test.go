package sensors

import "testing"

func TestExpandTopic(t *testing.T) {
	for _, tc := range []struct{ tmpl, want string }{
		{DefaultTopic, "sensors/room/temperature"},
		{"site/%d/%n/%q", "site/EGW-1/room/temperature"},
		{"a/100%%/%q", "a/100%/temperature"},
	} {
		if got := ExpandTopic(tc.tmpl, "EGW-1", "room", "temperature"); got != tc.want {
			t.Errorf("ExpandTopic(%q): got %q, want %q", tc.tmpl, got, tc.want)
		}
	}
}

func TestCheckTopic(t *testing.T) {
	for _, tc := range []struct{ tmpl, want string }{
		{DefaultTopic, ""},
		{"site/%d/boiler/%q", ""},
		{"sensors/%n", `sensors: "sensors/%n": no %q: each quantity needs a topic of its own`},
		{"sensors/%n/%x", `sensors: "sensors/%n/%x": unknown %x (want %n, %q, %d or %%)`},
		{"sensors/%q/%", `sensors: "sensors/%q/%": a lone % at the end (want %n, %q, %d or %%)`},
		{"sensors/+/%q", `sensors: "sensors/+/%q": no wildcards in a topic`},
		{"$SYS/%q", `sensors: "$SYS/%q": topics starting with $ are the broker's`},
	} {
		got := ""
		if err := CheckTopic(tc.tmpl); err != nil {
			got = err.Error()
		}
		if got != tc.want {
			t.Errorf("CheckTopic(%q): got %q, want %q", tc.tmpl, got, tc.want)
		}
	}
}
