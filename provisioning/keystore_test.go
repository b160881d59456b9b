package provisioning

import (
	"strings"
	"testing"

	"github.com/fieldgate/fieldgate/provisioning/pkitest"
)

func TestLoadSignerAndCertificate(t *testing.T) {
	ca := pkitest.NewCA(t, "Test CA")
	dev := ca.Client(t, "EGW-1")
	other := ca.Client(t, "EGW-2")

	signer, err := LoadSigner("file:"+dev.KeyFile, Options{})
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
