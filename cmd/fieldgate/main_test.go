package main

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestVersion(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"version"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	want := "fieldgate dev " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH + "\n"
	if out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}
}

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(good, []byte("[device]\nid = \"EGW-1\"\n"), 0o600)
	os.WriteFile(bad, []byte("[device]\nid = \"EGW-1\"\nbogus = 1\n\n[[sensor]]\nname = \"s\"\ndriver = \"nope\"\n"), 0o600)

	var out, errOut bytes.Buffer
	if code := run([]string{"check-config", "--config", good}, &out, &errOut); code != 0 {
		t.Errorf("good config: exit %d, stderr %q", code, errOut.String())
	}
	if want := good + ": ok\n"; out.String() != want {
		t.Errorf("good config: got %q, want %q", out.String(), want)
	}

	out.Reset()
	errOut.Reset()
	if code := run([]string{"check-config", "--config", bad}, &out, &errOut); code != 1 {
		t.Errorf("bad config: exit %d, want 1", code)
	}
	// Strict decoding stops at the unknown key; the sensor is not judged yet.
	if want := bad + ":3: device.bogus: unknown key\n"; errOut.String() != want {
		t.Errorf("bad config: got %q, want %q", errOut.String(), want)
	}
}

func TestUnknownCommand(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"frobnicate"}, &out, &errOut); code != 2 {
		t.Errorf("exit %d, want 2", code)
	}
	if !strings.Contains(errOut.String(), `unknown command "frobnicate"`) {
		t.Errorf("stderr %q does not name the command", errOut.String())
	}
}
