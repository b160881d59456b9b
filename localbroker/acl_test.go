package localbroker

import "testing"

const testACL = `# anonymous clients
topic read public/#

user alice
topic readwrite sensors/#
topic deny sensors/secret/#
topic write $SYS/broker/log

user bob
topic read sensors/+/temperature

pattern write devices/%c/status
pattern readwrite users/%u/#
pattern deny users/%u/locked
`

func TestACLCheck(t *testing.T) {
	a, err := ParseACL("acl", []byte(testACL))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		user, id, topic string
		access          Access
		want            bool
		rule            string
	}{
		{"", "anon", "public/news", AccessRead, true, "acl:2: topic read public/#"},
		{"", "anon", "public/news", AccessWrite, false, "no rule allows it"},
		{"alice", "a1", "public/news", AccessRead, false, "no rule allows it"}, // anonymous rules are not alice's
		{"alice", "a1", "sensors/t1/temperature", AccessWrite, true, "acl:5: topic readwrite sensors/#"},
		{"alice", "a1", "sensors/secret/key", AccessRead, false, "acl:6: topic deny sensors/secret/#"}, // deny first, though written later
		{"alice", "a1", "$SYS/broker/log", AccessWrite, true, "acl:7: topic write $SYS/broker/log"},
		{"bob", "b1", "sensors/t1/temperature", AccessRead, true, "acl:10: topic read sensors/+/temperature"},
		{"bob", "b1", "sensors/t1/temperature", AccessWrite, false, "no rule allows it"},
		{"bob", "b1", "sensors/t1/humidity", AccessRead, false, "no rule allows it"},
		{"bob", "b1", "devices/b1/status", AccessWrite, true, "acl:12: pattern write devices/%c/status"},
		{"bob", "b1", "devices/b2/status", AccessWrite, false, "no rule allows it"},
		{"bob", "b1", "users/bob/inbox", AccessRead, true, "acl:13: pattern readwrite users/%u/#"},
		{"bob", "b1", "users/bob/locked", AccessWrite, false, "acl:14: pattern deny users/%u/locked"},
		{"bob", "b1", "users/alice/inbox", AccessRead, false, "no rule allows it"},
		{"", "anon", "devices/anon/status", AccessWrite, true, "acl:12: pattern write devices/%c/status"},
		{"", "anon", "users//inbox", AccessRead, false, "no rule allows it"}, // %u needs a username
		{"bob", "+", "devices/x/status", AccessWrite, false, "a client id or username with '+' or '#' gets nothing from patterns"},
		{"carol", "c1", "sensors/x", AccessRead, false, "no rule allows it"},
	} {
		got, rule := a.Check(tc.user, tc.id, tc.topic, tc.access)
		if got != tc.want || rule != tc.rule {
			t.Errorf("Check(%q, %q, %q, %d): got %v %q, want %v %q", tc.user, tc.id, tc.topic, tc.access, got, rule, tc.want, tc.rule)
		}
	}
}

func TestACLCheckSubscribe(t *testing.T) {
	a, err := ParseACL("acl", []byte(testACL))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		user, filter string
		want         bool
	}{
		{"bob", "sensors/#", true}, // overlaps sensors/+/temperature: deliveries are filtered
		{"bob", "#", true},         // likewise
		{"bob", "admin/#", false},  // nothing bob may read
		{"bob", "users/bob/+", true},
		{"", "public/+", true},
		{"", "+/news", true},
		{"", "private/#", false},
		{"alice", "$SYS/#", false}, // alice may write $SYS/broker/log, not read it
	} {
		if got, rule := a.CheckSubscribe(tc.user, "c", tc.filter); got != tc.want {
			t.Errorf("CheckSubscribe(%q, %q): got %v (%s), want %v", tc.user, tc.filter, got, rule, tc.want)
		}
	}
}

func TestACLParseErrors(t *testing.T) {
	for _, tc := range []struct{ data, want string }{
		{"topic\n", "localbroker: acl:1: topic: missing topic"},
		{"user\n", "localbroker: acl:1: user: missing username"},
		{"topic sometimes a/b\n", `localbroker: acl:1: topic: access "sometimes": want read, write, readwrite or deny`},
		{"\n\npattern read a/#/b\n", `localbroker: acl:3: pattern: "a/#/b": '#' must be the whole last level`},
		{"topicread a\n", `localbroker: acl:1: want topic, pattern or user, got "topicread"`},
	} {
		_, err := ParseACL("acl", []byte(tc.data))
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q: got %v, want %s", tc.data, err, tc.want)
		}
	}
}

func TestOverlap(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"a/+/c", "a/b/#", true},
		{"a/b", "a/#", true},
		{"a/b", "a/b/c", false},
		{"a/+", "a", false},
		{"#", "$SYS/x", false},
		{"$SYS/#", "$SYS/broker/+", true},
		{"+/x", "$SYS/x", false},
	} {
		if got := overlap(tc.a, tc.b); got != tc.want {
			t.Errorf("overlap(%q, %q): got %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}
