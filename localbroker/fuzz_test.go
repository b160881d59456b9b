package localbroker

import (
	"strings"
	"testing"
)

// The parsers of files a site hands us never panic, and what they accept
// behaves: run with go test -fuzz=FuzzACL ./localbroker (the seeds run in
// every go test).
func FuzzACL(f *testing.F) {
	f.Add(testACL, "bob", "b1", "sensors/t1/temperature")
	f.Add("topic #\nuser x\npattern deny %u/#\n", "", "c", "$SYS/x")
	f.Add("pattern readwrite a/%c/%u/+/#", "u+", "c#", "a/c/u/x/y")
	f.Fuzz(func(t *testing.T, data, user, id, topic string) {
		a, err := ParseACL("fuzz", []byte(data))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "localbroker: fuzz:") {
				t.Fatalf("error does not name the file and line: %v", err)
			}
			return
		}
		a.Check(user, id, topic, AccessRead)
		a.Check(user, id, topic, AccessWrite)
		a.CheckSubscribe(user, id, topic)
	})
}

func FuzzPasswordFile(f *testing.F) {
	h, _ := HashPassword([]byte("x"), 1)
	f.Add("a:"+h+"\n# c\n", "a", "x")
	f.Add("a:$6$AAAAAAAAAAAAAAAA$"+strings.Repeat("A", 88)+"\n", "a", "")
	f.Add("a:$7$0$$\n:\n", "", "")
	f.Fuzz(func(t *testing.T, data, user, pw string) {
		p, err := ParsePasswordFile("fuzz", []byte(data))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "localbroker: fuzz:") {
				t.Fatalf("error does not name the file and line: %v", err)
			}
			return
		}
		p.Verify(user, []byte(pw))
	})
}

func FuzzTopicMatch(f *testing.F) {
	f.Add("sensors/+/t", "sensors/a/t")
	f.Add("#", "$SYS/x")
	f.Add("a/#", "a")
	f.Fuzz(func(t *testing.T, filter, topic string) {
		m := MatchTopic(filter, topic)
		if checkFilter(filter) == nil && !strings.ContainsAny(filter, "+#") && m != (filter == topic) {
			t.Fatalf("a filter without wildcards matched %v a topic equal %v", m, filter == topic)
		}
		if m && checkFilter(filter) == nil && !overlap(filter, topic) && !strings.ContainsAny(topic, "+#") {
			t.Fatalf("%q matches %q but they do not overlap", filter, topic)
		}
	})
}
