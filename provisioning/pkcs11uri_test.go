package provisioning

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParsePKCS11URI(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o700)
	pin := filepath.Join(dir, "pin")
	os.WriteFile(pin, []byte("4321\n"), 0o600)

	u, err := parsePKCS11URI("pkcs11:token=my%20token;object=device;type=private?module-path=/usr/lib/p11.so&pin-source=file:" + pin)
	if err != nil {
		t.Fatal(err)
	}
	if want := (pkcs11URI{Token: "my token", Object: "device", ModulePath: "/usr/lib/p11.so", Pin: "4321"}); u != want {
		t.Errorf("got %+v, want %+v", u, want)
	}
	os.Chmod(pin, 0o644)
	for _, tc := range []struct{ uri, want string }{
		{"pkcs11:token=t;object=o?module-path=/m.so&pin-source=file:" + pin, "has mode 0644"},
		{"pkcs11:token=t;object=o", "missing module-path"},
		{"pkcs11:object=o?module-path=/m.so", "missing token="},
		{"pkcs11:token=t?module-path=/m.so", "missing object="},
		{"pkcs11:token=t;object=o;colour=red?module-path=/m.so", `unknown attribute "colour"`},
		{"pkcs11:token=t;object?module-path=/m.so", "want name=value"},
	} {
		if _, err := parsePKCS11URI(tc.uri); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.uri, err, tc.want)
		}
	}
}

// A PIN never shows in an error, whatever is wrong with the URI.
func TestPKCS11URIErrorsHideThePIN(t *testing.T) {
	for _, uri := range []string{
		"pkcs11:token=t;object=o?modul-path=/m.so&pin-value=SECRET123",
		"pkcs11:token=t;colour=o?module-path=/m.so&pin-value=SECRET123",
		"pkcs11:object=o?module-path=/m.so&pin-value=SECRET123",
		"pkcs1:token=t;object=o?module-path=/m.so&pin-value=SECRET123",
	} {
		_, err := parsePKCS11URI(uri)
		if _, oerr := Open(uri, Options{StateDir: t.TempDir()}); oerr != nil {
			err = errors.Join(err, oerr)
		}
		if err == nil {
			t.Errorf("%s: no error", uri)
		} else if strings.Contains(err.Error(), "SECRET123") {
			t.Errorf("the PIN is in the error: %v", err)
		}
	}
}
