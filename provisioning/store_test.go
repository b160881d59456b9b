package provisioning

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fieldgate/fieldgate/provisioning/tpmtest"
)

// testStore is what every key store must do: make a key that signs, open
// it again, and renew it through the pending slot.
func testStore(t *testing.T, st Store) {
	t.Helper()
	if _, err := st.Load(Current); !errors.Is(err, ErrNoKey) {
		t.Fatalf("Load(Current) of an empty store: got %v, want ErrNoKey", err)
	}
	k1, err := st.Generate(Current, ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	checkSigns(t, k1)

	// Opened again (a new handle, as after a restart), the same key.
	again, err := st.Load(Current)
	if err != nil {
		t.Fatal(err)
	}
	if !SamePublicKey(again.Public(), k1.Public()) {
		t.Fatal("Load(Current) returned another key than Generate made")
	}
	checkSigns(t, again)

	// A CSR signed by the store's key verifies: proof of possession.
	csrPEM, err := CreateCSR(again, "EGW-STORE-1")
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(csrPEM)
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatalf("CSR signature: %v", err)
	}
	if csr.Subject.CommonName != "EGW-STORE-1" || !SamePublicKey(csr.PublicKey, k1.Public()) {
		t.Fatalf("CSR: CN %q, same key %v", csr.Subject.CommonName, SamePublicKey(csr.PublicKey, k1.Public()))
	}

	// Renewal: a pending key beside the current one, which stays in use
	// until Promote.
	if _, err := st.Load(Pending); !errors.Is(err, ErrNoKey) {
		t.Fatalf("Load(Pending) before a renewal: got %v, want ErrNoKey", err)
	}
	k2, err := st.Generate(Pending, ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	if SamePublicKey(k2.Public(), k1.Public()) {
		t.Fatal("the pending key is the current key")
	}
	if cur, err := st.Load(Current); err != nil || !SamePublicKey(cur.Public(), k1.Public()) {
		t.Fatalf("after Generate(Pending), Load(Current): %v, same as before: %v", err, err == nil && SamePublicKey(cur.Public(), k1.Public()))
	}
	if err := st.Promote(); err != nil {
		t.Fatal(err)
	}
	cur, err := st.Load(Current)
	if err != nil {
		t.Fatal(err)
	}
	if !SamePublicKey(cur.Public(), k2.Public()) {
		t.Fatal("after Promote, the current key is not the renewed one")
	}
	checkSigns(t, cur)
	if _, err := st.Load(Pending); !errors.Is(err, ErrNoKey) {
		t.Fatalf("Load(Pending) after Promote: got %v, want ErrNoKey", err)
	}
	if err := st.Promote(); !errors.Is(err, ErrNoKey) {
		t.Fatalf("Promote with nothing pending: got %v, want ErrNoKey", err)
	}
}

func checkSigns(t *testing.T, k crypto.Signer) {
	t.Helper()
	digest := sha256.Sum256([]byte("fieldgate"))
	sig, err := k.Sign(nil, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	pub, ok := k.Public().(*ecdsa.PublicKey)
	if !ok {
		t.Fatalf("public key is %T, want ECDSA", k.Public())
	}
	if pub.Curve.Params().Name != "P-256" {
		t.Errorf("curve %s, want P-256", pub.Curve.Params().Name)
	}
	if !ecdsa.VerifyASN1(pub, digest[:], sig) {
		t.Fatal("signature does not verify with the public key")
	}
}

func TestFileStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state") // created by Generate, 0700
	st, err := Open("file:"+dir+"/device.key", Options{})
	if err != nil {
		t.Fatal(err)
	}
	testStore(t, st)
	for path, want := range map[string]os.FileMode{dir: 0o700, dir + "/device.key": 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %04o, want %04o", path, fi.Mode().Perm(), want)
		}
	}
	// The key file is PKCS#8, readable by openssl and the like.
	data, _ := os.ReadFile(dir + "/device.key")
	if block, _ := pem.Decode(data); block == nil || block.Type != "PRIVATE KEY" {
		t.Errorf("key file is not a PKCS#8 PEM block")
	}
}

func TestFileStoreRSA(t *testing.T) {
	st, err := Open("file:"+t.TempDir()+"/k/device.key", Options{})
	if err != nil {
		t.Fatal(err)
	}
	k, err := st.Generate(Current, RSA2048)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CreateCSR(k, "EGW-RSA"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Generate(Current, "dsa"); err == nil {
		t.Error("key type dsa accepted")
	}
}

// A key that others could read or replace is refused, as ssh does.
func TestFileStoreRefusesLoosePermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "k")
	st, _ := Open("file:"+dir+"/device.key", Options{})
	if _, err := st.Generate(Current, ""); err != nil {
		t.Fatal(err)
	}
	check := func(what, want string) {
		t.Helper()
		_, err := st.Load(Current)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want an error containing %q", what, err, want)
		}
	}
	os.Chmod(dir+"/device.key", 0o640)
	check("key mode 0640", "file "+dir+"/device.key has mode 0640: it must not be accessible by group or others (chmod 600)")
	os.Chmod(dir+"/device.key", 0o600)
	os.Chmod(dir, 0o755)
	check("directory mode 0755", "directory "+dir+" has mode 0755: it must not be accessible by group or others (chmod 700)")
	os.Chmod(dir, 0o700)
	if _, err := st.Load(Current); err != nil {
		t.Fatalf("back to 0600 in 0700: %v", err)
	}
	if os.Geteuid() == 0 {
		// Owned by someone else than the service user.
		os.Chown(dir+"/device.key", 4242, 4242)
		check("key owned by uid 4242", "is owned by uid 4242, not by the service user (uid 0)")
	}
}

func TestOpenBadURIs(t *testing.T) {
	for _, tc := range []struct{ uri, want string }{
		{"/var/lib/fieldgate/device.key", "want a URI such as file:"},
		{"file:device.key", "want an absolute path after file:"},
		{"vault:x", `unknown key store "vault"`},
		{"tpm:localhost:2321", "want tpm:/dev/tpmrm0 or tpm:tcp://HOST:PORT"},
		{"tpm:/nonexistent/tpmrm0", "no such file or directory"},
	} {
		if st, err := Open(tc.uri, Options{}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open(%q): got %v, %v; want an error containing %q", tc.uri, st, err, tc.want)
		}
	}
	for _, tc := range []struct{ uri, want string }{
		{"tpm:localhost:2321", "want tpm:/dev/tpmrm0 or tpm:tcp://HOST:PORT"},
		{"file:rel", "want an absolute path"},
		{"pkcs11:object=x", "pkcs11"},
	} {
		if err := CheckURI(tc.uri); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckURI(%q): got %v, want an error containing %q", tc.uri, err, tc.want)
		}
	}
}

func TestFileStoreLoadBadFile(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o700)
	os.WriteFile(dir+"/junk.key", []byte("hello"), 0o600)
	_, err := LoadSigner("file:"+dir+"/junk.key", Options{})
	if want := "no PEM block"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("got %v, want %q", err, want)
	}
	_, err = LoadSigner("file:"+dir+"/absent.key", Options{})
	if !errors.Is(err, ErrNoKey) || !strings.Contains(err.Error(), "no such file or directory") {
		t.Errorf("absent key: got %v, want ErrNoKey naming the file", err)
	}
}

func TestTPMStore(t *testing.T) {
	uri := tpmtest.Start(t)
	state := t.TempDir()
	os.Chmod(state, 0o700)
	st, err := Open(uri, Options{StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	testStore(t, st)

	// On disk: only the TPM's wrapped blob, mode 0600, no private key.
	data, err := os.ReadFile(filepath.Join(state, tpmBlobName))
	if err != nil {
		t.Fatal(err)
	}
	if block, _ := pem.Decode(data); block == nil || block.Type != tpmPEMType {
		t.Fatalf("blob is not a %q PEM block", tpmPEMType)
	}
	if _, err := ParsePrivateKey("blob", data); err == nil {
		t.Fatal("the TPM blob parses as a software private key")
	}
	// The key's attributes: fixedTPM, fixedParent, sensitiveDataOrigin.
	a := tpmKeyTemplate.ObjectAttributes
	if !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin {
		t.Fatalf("key template attributes %+v", a)
	}

	// A second connection (a restart of the gateway) loads the same key.
	st.Close()
	st2, err := Open(uri, Options{StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	k, err := st2.Load(Current)
	if err != nil {
		t.Fatal(err)
	}
	checkSigns(t, k)
}

// A blob made by one TPM is useless on another: the key cannot be moved.
func TestTPMBlobIsBoundToItsTPM(t *testing.T) {
	state := t.TempDir()
	os.Chmod(state, 0o700)
	a, err := Open(tpmtest.Start(t), Options{StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := a.Generate(Current, ""); err != nil {
		t.Fatal(err)
	}
	b, err := Open(tpmtest.Start(t), Options{StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, err = b.Load(Current)
	if want := "loading the key (was it made by another TPM?)"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("loading another TPM's blob: got %v, want %q", err, want)
	}
	if _, err := a.Generate(Current, RSA2048); err == nil {
		t.Error("a TPM store made an RSA key; it only makes ECDSA P-256")
	}
}
