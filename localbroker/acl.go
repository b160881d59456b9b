package localbroker

import (
	"fmt"
	"os"
	"strings"
)

// Access is what a client wants to do with a topic.
type Access int

// Accesses. A rule grants read, write or both; deny takes everything away.
const (
	AccessRead  Access = 1
	AccessWrite Access = 2
)

// ACL is a Mosquitto acl_file, with Mosquitto 2.0's semantics:
//
//   - "topic [read|write|readwrite|deny] TOPIC" lines before any "user"
//     line are for anonymous clients; after "user NAME", for NAME;
//   - "pattern [read|write|readwrite|deny] TOPIC" lines are for every
//     client, with %c replaced by its client id and %u by its username (a
//     pattern with %u does not apply to anonymous clients, and a client
//     whose id or username holds '+' or '#' gets nothing from patterns);
//   - the access defaults to readwrite; deny rules are looked at first;
//   - a rule's filter matches topics as an MQTT subscription does, and a
//     topic rule matches a $ topic only if it starts with '$' itself;
//   - what no rule allows is denied.
type ACL struct {
	name     string
	users    map[string][]aclRule // "" is anonymous
	patterns []aclRule
}

type aclRule struct {
	filter string
	access Access // 0: deny
	line   int
	text   string
}

// LoadACL reads an acl_file.
func LoadACL(path string) (*ACL, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("localbroker: acl file: %w", err)
	}
	return ParseACL(path, data)
}

// ParseACL parses an acl_file's contents; name is used in errors
// ("NAME:LINE: reason") and in the rules Check reports.
func ParseACL(name string, data []byte) (*ACL, error) {
	a := &ACL{name: name, users: map[string][]aclRule{}}
	user, anon := "", true
	for i, raw := range strings.Split(string(data), "\n") {
		line := strings.TrimRight(raw, " \t\r")
		if line == "" || line[0] == '#' {
			continue
		}
		kind, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		switch kind {
		case "user":
			if rest == "" {
				return nil, fmt.Errorf("localbroker: %s:%d: user: missing username", name, i+1)
			}
			user, anon = rest, false
		case "topic", "pattern":
			r, err := parseRule(rest)
			if err != nil {
				return nil, fmt.Errorf("localbroker: %s:%d: %s: %v", name, i+1, kind, err)
			}
			r.line, r.text = i+1, line
			if kind == "pattern" {
				a.patterns = addRule(a.patterns, r)
			} else {
				u := user
				if anon {
					u = ""
				}
				a.users[u] = addRule(a.users[u], r)
			}
		default:
			return nil, fmt.Errorf("localbroker: %s:%d: want topic, pattern or user, got %q", name, i+1, kind)
		}
	}
	return a, nil
}

// addRule puts deny rules before the others, as Mosquitto does.
func addRule(rs []aclRule, r aclRule) []aclRule {
	if r.access != 0 {
		return append(rs, r)
	}
	i := 0
	for i < len(rs) && rs[i].access == 0 {
		i++
	}
	return append(rs[:i], append([]aclRule{r}, rs[i:]...)...)
}

func parseRule(rest string) (aclRule, error) {
	r := aclRule{access: AccessRead | AccessWrite}
	first, topic, hasTopic := strings.Cut(rest, " ")
	if !hasTopic {
		topic, first = first, ""
	}
	topic = strings.TrimSpace(topic)
	switch first {
	case "":
	case "read":
		r.access = AccessRead
	case "write":
		r.access = AccessWrite
	case "readwrite":
		r.access = AccessRead | AccessWrite
	case "deny":
		r.access = 0
	default:
		return r, fmt.Errorf("access %q: want read, write, readwrite or deny", first)
	}
	if topic == "" {
		return r, fmt.Errorf("missing topic")
	}
	if err := checkFilter(topic); err != nil {
		return r, err
	}
	r.filter = topic
	return r, nil
}

// Check reports whether the client may access topic, and the rule that
// decided: "FILE:LINE: text", or "no rule allows it". An empty user is an
// anonymous client.
func (a *ACL) Check(user, clientID, topic string, access Access) (bool, string) {
	for _, r := range a.users[user] {
		if strings.HasPrefix(topic, "$") && !strings.HasPrefix(r.filter, "$") {
			continue
		}
		if ok, decided := r.decide(r.filter, topic, access); decided {
			return ok, a.where(r)
		}
	}
	if len(a.patterns) > 0 && (strings.ContainsAny(user, "+#") || strings.ContainsAny(clientID, "+#")) {
		return false, "a client id or username with '+' or '#' gets nothing from patterns"
	}
	for _, r := range a.patterns {
		if strings.Contains(r.filter, "%u") && user == "" {
			continue
		}
		f := strings.ReplaceAll(strings.ReplaceAll(r.filter, "%c", clientID), "%u", user)
		if ok, decided := r.decide(f, topic, access); decided {
			return ok, a.where(r)
		}
	}
	return false, "no rule allows it"
}

// decide says whether r decides on topic: a matching deny rule denies, a
// matching rule with the access allows, anything else passes.
func (r aclRule) decide(filter, topic string, access Access) (allowed, decided bool) {
	if !MatchTopic(filter, topic) {
		return false, false
	}
	if r.access == 0 {
		return false, true
	}
	if access&r.access == access {
		return true, true
	}
	return false, false
}

func (a *ACL) where(r aclRule) string { return fmt.Sprintf("%s:%d: %s", a.name, r.line, r.text) }

// checkFilter checks an MQTT topic filter: '#' only as the whole last
// level, '+' only as a whole level.
func checkFilter(f string) error {
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return fmt.Errorf("%q: '#' must be the whole last level", f)
		}
		if strings.Contains(l, "+") && l != "+" {
			return fmt.Errorf("%q: '+' must be a whole level", f)
		}
	}
	return nil
}

// MatchTopic reports whether topic matches filter (MQTT 3.1.1 §4.7). The
// bridge has its own (bridge.Match: the two packages do not import each
// other); a test in gateway checks that they agree.
// Wildcards at the first level do not match topics starting with '$'.
// A filter matches itself, so a subscription is judged by the same rules.
func MatchTopic(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	for {
		f, frest, fmore := strings.Cut(filter, "/")
		if f == "#" {
			return true
		}
		t, trest, tmore := strings.Cut(topic, "/")
		if f != "+" && f != t {
			return false
		}
		if !fmore || !tmore {
			return fmore == tmore || (fmore && frest == "#")
		}
		filter, topic = frest, trest
	}
}

// CheckSubscribe reports whether a subscription to filter could ever
// deliver anything: whether a rule granting read overlaps it. Mosquitto
// 2.0 accepts every subscription and filters each message on delivery;
// Fieldgate filters on delivery too (Check with AccessRead), and also
// refuses at once, with a reason code, a subscription that no rule lets
// receive anything.
func (a *ACL) CheckSubscribe(user, clientID, filter string) (bool, string) {
	for _, r := range a.users[user] {
		if r.access&AccessRead != 0 && overlap(r.filter, filter) {
			return true, a.where(r)
		}
	}
	if len(a.patterns) > 0 && !strings.ContainsAny(user, "+#") && !strings.ContainsAny(clientID, "+#") {
		for _, r := range a.patterns {
			if strings.Contains(r.filter, "%u") && user == "" {
				continue
			}
			f := strings.ReplaceAll(strings.ReplaceAll(r.filter, "%c", clientID), "%u", user)
			if r.access&AccessRead != 0 && overlap(f, filter) {
				return true, a.where(r)
			}
		}
	}
	return false, "no rule allows reading anything it matches"
}

// overlap reports whether some topic matches both filters.
func overlap(a, b string) bool {
	if strings.HasPrefix(a, "$") != strings.HasPrefix(b, "$") &&
		!(strings.HasPrefix(a, "$") && !strings.HasPrefix(b, "+") && !strings.HasPrefix(b, "#")) &&
		!(strings.HasPrefix(b, "$") && !strings.HasPrefix(a, "+") && !strings.HasPrefix(a, "#")) {
		return false
	}
	for {
		x, arest, amore := strings.Cut(a, "/")
		y, brest, bmore := strings.Cut(b, "/")
		if x == "#" || y == "#" {
			return true
		}
		if x != "+" && y != "+" && x != y {
			return false
		}
		if !amore || !bmore {
			return amore == bmore || (amore && arest == "#") || (bmore && brest == "#")
		}
		a, b = arest, brest
	}
}
