package provisioning

import (
	"os"
	"strings"
	"testing"

	"github.com/fieldgate/fieldgate/provisioning/pkitest"
)

func TestLoadSignerAndCertificate(t *testing.T) {
	ca := pkitest.NewCA(t, "Test CA")
	dev := ca.Client(t, "EGW-1")
	other := ca.Client(t, "EGW-2")

	signer, err := LoadSigner("file:" + dev.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ClientCertificate(signer, dev.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Leaf.Subject.CommonName != "EGW-1" {
		t.Errorf("leaf CN: got %q, want EGW-1", cert.Leaf.Subject.CommonName)
	}
	// Another device's certificate does not go with this key.
	if _, err := ClientCertificate(signer, other.CertFile); err == nil || !strings.Contains(err.Error(), `certificate (CN "EGW-2") does not match the device key`) {
		t.Errorf("mismatched pair: got %v, want a mismatch error", err)
	}
}

func TestLoadSignerRefusesLooseFile(t *testing.T) {
	ca := pkitest.NewCA(t, "Test CA")
	dev := ca.Client(t, "EGW-1")
	if err := os.Chmod(dev.KeyFile, 0o640); err != nil {
		t.Fatal(err)
	}
	_, err := LoadSigner("file:" + dev.KeyFile)
	if want := "has mode 0640: it must not be accessible by group or others"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("got %v, want an error containing %q", err, want)
	}
}

func TestLoadSignerBadInput(t *testing.T) {
	dir := t.TempDir()
	notPEM := dir + "/junk.key"
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ uri, want string }{
		{"/var/lib/fieldgate/device.key", "want a URI such as file:"},
		{"tpm:/dev/tpmrm0", `key store "tpm" is not supported by this build`},
		{"file:" + dir + "/absent.key", "no such file or directory"},
		{"file:" + notPEM, "no PEM block"},
	} {
		if _, err := LoadSigner(tc.uri); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("LoadSigner(%q): got %v, want an error containing %q", tc.uri, err, tc.want)
		}
	}
}
