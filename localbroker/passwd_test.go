package localbroker

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldgate/fieldgate/bridge/mosquittotest"
)

func TestPasswordFileFromMosquittoPasswd(t *testing.T) {
	bin := mosquittotest.Binary(t, "mosquitto_passwd")
	path := filepath.Join(t.TempDir(), "passwd")
	for _, args := range [][]string{
		{"-c", "-b", path, "alice", "s3cret"},
		{"-b", path, "bob", "hunter2"},
	} {
		if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_passwd %v: %v\n%s", args, err, out)
		}
	}
	data, _ := os.ReadFile(path)
	if !strings.Contains(string(data), "alice:$7$101$") {
		t.Fatalf("mosquitto_passwd wrote %q, want $7$ hashes", data)
	}
	p, err := LoadPasswordFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		user, pw string
		want     bool
	}{
		{"alice", "s3cret", true},
		{"bob", "hunter2", true},
		{"alice", "hunter2", false},
		{"alice", "", false},
		{"carol", "s3cret", false},
	} {
		if got := p.Verify(tc.user, []byte(tc.pw)); got != tc.want {
			t.Errorf("Verify(%s, %s): got %v, want %v", tc.user, tc.pw, got, tc.want)
		}
	}
	if got := fmt.Sprint(p.Users()); got != "[alice bob]" {
		t.Errorf("Users: got %s", got)
	}
}

// A $6$ line as Mosquitto 1.x wrote it: SHA-512 of the password then the
// salt. The hash was made with
//
//	printf 'legacy0123456789ab' | openssl dgst -sha512 -binary | base64
func TestPasswordFileSHA512(t *testing.T) {
	line := "old:$6$MDEyMzQ1Njc4OWFi$o+kR64O3R9PIRAxj/pouFubH2DpGd/QHCgnAHw+gTru54VOqAOzQtUlYQ3pgNcUzyhfoF5eZLv3spn06FR8NnA==\n"
	p, err := ParsePasswordFile("pw", []byte("# migrated from 1.6\n\n"+line))
	if err != nil {
		t.Fatal(err)
	}
	if !p.Verify("old", []byte("legacy")) || p.Verify("old", []byte("Legacy")) {
		t.Error("$6$ hash not verified as SHA-512(password || salt)")
	}
}

func TestPasswordFileErrors(t *testing.T) {
	good, _ := HashPassword([]byte("x"), 0)
	for _, tc := range []struct{ data, want string }{
		{"alice\n", "localbroker: pw:1: want user:hash"},
		{"a:" + good + "\n# c\na:" + good + "\n", `localbroker: pw:3: user "a" is listed twice`},
		{"a:plaintext\n", `localbroker: pw:1: user "a": not a $6$ or $7$ hash (make it with mosquitto_passwd or fieldgate passwd)`},
		{"a:$7$x$AAAA$BBBB\n", `localbroker: pw:1: user "a": bad iteration count "x"`},
		{"a:$7$101$AAAA$BBBB\n", `localbroker: pw:1: user "a": bad salt: want 12 bytes in base64`},
	} {
		_, err := ParsePasswordFile("pw", []byte(tc.data))
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q: got %v, want %s", tc.data, err, tc.want)
		}
	}
}

// What HashPassword writes, a real Mosquitto accepts.
func TestHashPasswordAcceptedByMosquitto(t *testing.T) {
	pub := mosquittotest.Binary(t, "mosquitto_pub")
	h, err := HashPassword([]byte("s3cret"), 0)
	if err != nil {
		t.Fatal(err)
	}
	pw := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(pw, []byte("alice:"+h+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	port := mosquittotest.FreePort(t)
	m := mosquittotest.StartConf(t, port, fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous false\npassword_file %s\n", port, pw))
	run := func(password string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return exec.CommandContext(ctx, pub, "-h", "127.0.0.1", "-p", fmt.Sprint(port), "-u", "alice", "-P", password, "-t", "t", "-m", "x", "-q", "1").Run()
	}
	if err := run("s3cret"); err != nil {
		t.Errorf("right password refused by Mosquitto: %v\n%s", err, m.Log())
	}
	if err := run("wrong"); err == nil {
		t.Error("wrong password accepted by Mosquitto")
	}
}
