//go:build pkcs11

package provisioning

import (
	"os"
	"strings"
	"testing"

	"github.com/ThalesGroup/crypto11"

	"github.com/fieldgate/fieldgate/provisioning/softhsmtest"
)

func TestPKCS11Store(t *testing.T) {
	uri := softhsmtest.Token(t)
	state := t.TempDir()
	os.Chmod(state, 0o700)
	st, err := Open(uri, Options{StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if strings.Contains(st.String(), "1234") {
		t.Errorf("the store's name shows the PIN: %s", st)
	}
	testStore(t, st)

	// The key on the token is sensitive and cannot be extracted.
	k, err := st.Load(Current)
	if err != nil {
		t.Fatal(err)
	}
	ctx := st.(*pkcs11Store).ctx
	for _, a := range []struct {
		typ  crypto11.AttributeType
		want byte
	}{{crypto11.CkaSensitive, 1}, {crypto11.CkaExtractable, 0}, {crypto11.CkaToken, 1}} {
		attr, err := ctx.GetAttribute(k, a.typ)
		if err != nil {
			t.Fatal(err)
		}
		if len(attr.Value) != 1 || attr.Value[0] != a.want {
			t.Errorf("attribute %#x = %v, want %d", a.typ, attr.Value, a.want)
		}
	}
}

func TestPKCS11WrongPIN(t *testing.T) {
	uri := strings.Replace(softhsmtest.Token(t), "pin-value=1234", "pin-value=9999", 1)
	_, err := Open(uri, Options{StateDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "CKR_PIN_INCORRECT") {
		t.Fatalf("wrong PIN: got %v, want CKR_PIN_INCORRECT", err)
	}
	if strings.Contains(err.Error(), "9999") {
		t.Errorf("the error shows the PIN: %v", err)
	}
}
