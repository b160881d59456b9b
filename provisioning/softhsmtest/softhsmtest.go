// Package softhsmtest makes a SoftHSM2 token for tests, reachable as a
// pkcs11: key store URI.
package softhsmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Modules are where distributions install SoftHSM2's PKCS#11 library.
var Modules = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib64/pkcs11/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
}

// Token initialises a fresh token labelled "fieldgate" (user PIN 1234) in a
// temporary directory, points SOFTHSM2_CONF at it for the rest of the test
// (child processes inherit it), and returns the key store URI of the
// object label "device" on it. Without SoftHSM2 the test is skipped, or
// fails when FIELDGATE_REQUIRE_PEERS=1.
func Token(t testing.TB) string {
	t.Helper()
	module := ""
	for _, m := range Modules {
		if _, err := os.Stat(m); err == nil {
			module = m
			break
		}
	}
	util, err := exec.LookPath("softhsm2-util")
	if module == "" || err != nil {
		if os.Getenv("FIELDGATE_REQUIRE_PEERS") == "1" {
			t.Fatal("SoftHSM2 is not installed (run .ci/deps)")
		}
		t.Skip("SoftHSM2 is not installed; run .ci/deps or make test")
	}
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+tokens+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", conf)
	out, err := exec.Command(util, "--init-token", "--free", "--label", "fieldgate", "--pin", "1234", "--so-pin", "12345678").CombinedOutput()
	if err != nil {
		t.Fatalf("softhsm2-util --init-token: %v: %s", err, out)
	}
	return fmt.Sprintf("pkcs11:token=fieldgate;object=device?module-path=%s&pin-value=1234", module)
}
