package gateway

import (
	"errors"
	"strings"
	"testing"

	"github.com/fieldgate/fieldgate/bridge"
	"github.com/fieldgate/fieldgate/localbroker"
)

// A configuration file never makes the parser panic, and every error names
// the file: run with go test -fuzz=FuzzParseConfig ./gateway.
func FuzzParseConfig(f *testing.F) {
	f.Add("[device]\nid = \"a\"\n[[sensor]]\nname = \"s\"\ndriver = \"simulated\"\ninterval = \"1s\"\n")
	f.Add("[device]\n[bridge]\naddress = [\"ssl://h:1\"]\n[[bridge.route]]\nlocal = \"#\"\n[bridge.outbox]\nmax_bytes = \"1GiB\"\n")
	f.Add("[[broker.listener]]\naddress = \"0.0.0.0:1\"\ntls_cert = \"/nonexistent\"\n")
	f.Fuzz(func(t *testing.T, data string) {
		_, err := ParseConfig("f.toml", []byte(data))
		if err == nil {
			return
		}
		errs := []error{err}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			errs = j.Unwrap()
		}
		for _, e := range errs {
			var ce *ConfigError
			if !errors.As(e, &ce) || !strings.HasPrefix(e.Error(), "f.toml") {
				t.Fatalf("error %q is not a ConfigError naming the file", e)
			}
		}
	})
}

// The broker and the bridge each match topics (they do not import each
// other); they must agree.
func FuzzTopicMatchersAgree(f *testing.F) {
	for _, s := range [][2]string{{"sensors/#", "sensors"}, {"+/+", "/x"}, {"#", "$SYS/a"}, {"a/+/c", "a//c"}, {"$SYS/#", "$SYS"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, filter, topic string) {
		if b, l := bridge.Match(filter, topic), localbroker.MatchTopic(filter, topic); b != l {
			t.Fatalf("Match(%q, %q): bridge %v, localbroker %v", filter, topic, b, l)
		}
	})
}
