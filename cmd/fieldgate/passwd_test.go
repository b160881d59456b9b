package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldgate/fieldgate/bridge/mosquittotest"
	"github.com/fieldgate/fieldgate/localbroker"
)

func passwd(t *testing.T, stdin string, args ...string) (int, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := cmdPasswd(args, strings.NewReader(stdin), &out, &errOut)
	return code, errOut.String()
}

// fieldgate passwd writes what a real Mosquitto accepts, and edits files
// the real mosquitto_passwd wrote.
func TestPasswdCommand(t *testing.T) {
	mp := mosquittotest.Binary(t, "mosquitto_passwd")
	pub := mosquittotest.Binary(t, "mosquitto_pub")
	file := filepath.Join(t.TempDir(), "passwd")

	if code, e := passwd(t, "", "-c", "-b", file, "alice", "s3cret"); code != 0 {
		t.Fatalf("-c -b: %d %s", code, e)
	}
	if code, e := passwd(t, "hunter2\n", file, "bob"); code != 0 { // password from stdin
		t.Fatalf("add bob: %d %s", code, e)
	}
	if code, e := passwd(t, "", "-H", "sha512", "-b", file, "carol", "legacy"); code != 0 {
		t.Fatalf("-H sha512: %d %s", code, e)
	}
	// The real mosquitto_passwd edits the same file.
	if out, err := exec.Command(mp, "-b", file, "dave", "d4ve").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd -b: %v %s", err, out)
	}
	if code, e := passwd(t, "", "-D", file, "bob"); code != 0 {
		t.Fatalf("-D: %d %s", code, e)
	}
	if code, e := passwd(t, "", "-D", file, "nobody"); code != 1 || !strings.Contains(e, "user nobody not found") {
		t.Errorf("-D of an unknown user: %d %q", code, e)
	}
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %o, want 0600", fi.Mode().Perm())
	}
	data, _ := os.ReadFile(file)
	if !strings.Contains(string(data), "carol:$6$") || !strings.Contains(string(data), "alice:$7$101$") {
		t.Errorf("file:\n%s\nwant alice as $7$ and carol as $6$", data)
	}

	// Fieldgate reads it...
	p, err := localbroker.LoadPasswordFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for user, pw := range map[string]string{"alice": "s3cret", "carol": "legacy", "dave": "d4ve"} {
		if !p.Verify(user, []byte(pw)) {
			t.Errorf("%s does not verify", user)
		}
	}
	if p.Verify("bob", []byte("hunter2")) {
		t.Error("bob was deleted but verifies")
	}
	// ...and so does a real Mosquitto.
	port := mosquittotest.FreePort(t)
	mosquittotest.StartConf(t, port, fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous false\npassword_file %s\n", port, file))
	login := func(user, pw string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return exec.CommandContext(ctx, pub, "-h", "127.0.0.1", "-p", fmt.Sprint(port), "-u", user, "-P", pw, "-t", "t", "-m", "x", "-q", "1").Run()
	}
	for user, pw := range map[string]string{"alice": "s3cret", "carol": "legacy", "dave": "d4ve"} {
		if err := login(user, pw); err != nil {
			t.Errorf("Mosquitto refused %s: %v", user, err)
		}
	}
	if err := login("alice", "wrong"); err == nil {
		t.Error("Mosquitto accepted a wrong password")
	}
}

func TestPasswdConvertAndUsage(t *testing.T) {
	file := filepath.Join(t.TempDir(), "passwd")
	os.WriteFile(file, []byte("# site users\nplc:plain-pw\nhmi:other\n"), 0o600)
	if code, e := passwd(t, "", "-U", file); code != 0 {
		t.Fatalf("-U: %d %s", code, e)
	}
	data, _ := os.ReadFile(file)
	if !strings.HasPrefix(string(data), "# site users\nplc:$7$") {
		t.Errorf("after -U:\n%s", data)
	}
	p, err := localbroker.LoadPasswordFile(file)
	if err != nil || !p.Verify("plc", []byte("plain-pw")) || !p.Verify("hmi", []byte("other")) {
		t.Errorf("converted file: %v", err)
	}
	for _, args := range [][]string{{}, {"-c", "-D", file, "x"}, {"-H", "md5", "-b", file, "u", "p"}, {"-b", file, "u"}} {
		if code, _ := passwd(t, "", args...); code != 2 {
			t.Errorf("passwd %v: exit %d, want 2 (usage)", args, code)
		}
	}
	if code, e := passwd(t, "", "-b", file, "a:b", "pw"); code != 1 || !strings.Contains(e, "must not be empty or contain ':'") {
		t.Errorf("user with ':': %d %q", code, e)
	}
}

func TestACLTestCommand(t *testing.T) {
	file := filepath.Join(t.TempDir(), "acl")
	os.WriteFile(file, []byte("user plc\ntopic write sensors/#\n\npattern read devices/%c/cmd\n"), 0o600)
	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"--user", "plc", "--client-id", "p1", "--topic", "sensors/a", "--access", "write"}, 0, "allowed: " + file + ":2: topic write sensors/#\n"},
		{[]string{"--user", "plc", "--client-id", "p1", "--topic", "sensors/a", "--access", "read"}, 1, "denied: no rule allows it\n"},
		{[]string{"--user", "plc", "--client-id", "p1", "--topic", "devices/p1/cmd"}, 0, "allowed: " + file + ":4: pattern read devices/%c/cmd\n"},
		{[]string{"--client-id", "p1", "--topic", "devices/+/cmd", "--access", "subscribe"}, 0, "allowed: " + file + ":4: pattern read devices/%c/cmd\n"},
	} {
		var out, errOut bytes.Buffer
		code := cmdACL(append([]string{"test", "--acl", file}, tc.args...), &out, &errOut)
		if code != tc.code || out.String() != tc.out {
			t.Errorf("acl test %v: exit %d %q %s, want %d %q", tc.args, code, out.String(), errOut.String(), tc.code, tc.out)
		}
	}
}
