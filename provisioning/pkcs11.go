//go:build pkcs11

package provisioning

import (
	"crypto"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ThalesGroup/crypto11"

	"github.com/fieldgate/fieldgate/internal/atomicfile"
)

const pkcs11Supported = true

// pkcs11Store keeps the key in a PKCS#11 token (an ATECC608 through
// cryptoauthlib, tpm2-pkcs11, an HSM; SoftHSM2 in the tests), generated
// there as sensitive and not extractable. The key is found by its label:
// the URI's object, or object.next after a renewal (tokens cannot rename an
// object through crypto11, so the label in use is written to a small file
// under state_dir).
type pkcs11Store struct {
	uri    string
	u      pkcs11URI
	ctx    *crypto11.Context
	marker string
	owner  *Owner // given the marker file (nil: the process's user)
}

func openPKCS11(uri string, opt Options) (Store, error) {
	u, err := parsePKCS11URI(uri)
	if err != nil {
		return nil, err
	}
	ctx, err := crypto11.Configure(&crypto11.Config{Path: u.ModulePath, TokenLabel: u.Token, TokenSerial: u.Serial, Pin: u.Pin})
	if err != nil {
		return nil, fmt.Errorf("provisioning: %s: %w", RedactURI(uri), err)
	}
	return &pkcs11Store{uri: uri, u: u, ctx: ctx, marker: filepath.Join(opt.StateDir, "pkcs11-object"), owner: opt.Owner}, nil
}

func (s *pkcs11Store) String() string { return RedactURI(s.uri) }
func (s *pkcs11Store) Close() error   { return s.ctx.Close() }

// label returns the object label of slot.
func (s *pkcs11Store) label(slot Slot) (string, error) {
	cur := s.u.Object
	data, err := os.ReadFile(s.marker)
	switch {
	case err == nil:
		if l := strings.TrimSpace(string(data)); l == s.u.Object || l == s.u.Object+".next" {
			cur = l
		}
	case !errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("provisioning: %w", err)
	}
	if slot == Current {
		return cur, nil
	}
	if cur == s.u.Object {
		return s.u.Object + ".next", nil
	}
	return s.u.Object, nil
}

// find returns the key pair labelled label, or nil.
func (s *pkcs11Store) find(label string) (crypto11.Signer, error) {
	ks, err := s.ctx.FindKeyPairs(nil, []byte(label))
	if err != nil {
		return nil, fmt.Errorf("provisioning: %s: %w", s, err)
	}
	if len(ks) == 0 {
		return nil, nil
	}
	return ks[0], nil
}

func (s *pkcs11Store) Load(slot Slot) (crypto.Signer, error) {
	label, err := s.label(slot)
	if err != nil {
		return nil, err
	}
	k, err := s.find(label)
	if err != nil {
		return nil, err
	}
	if k == nil {
		return nil, fmt.Errorf("provisioning: %s: %w (no key pair labelled %q on the token)", s, ErrNoKey, label)
	}
	return k, nil
}

func (s *pkcs11Store) Generate(slot Slot, kt KeyType) (crypto.Signer, error) {
	if kt != "" && kt != ECDSAP256 {
		return nil, fmt.Errorf("provisioning: %s: key type %q: a token key is %s", s, kt, ECDSAP256)
	}
	label, err := s.label(slot)
	if err != nil {
		return nil, err
	}
	if old, err := s.find(label); err != nil {
		return nil, err
	} else if old != nil {
		if err := old.Delete(); err != nil {
			return nil, fmt.Errorf("provisioning: %s: deleting the old %s key: %w", s, slot, err)
		}
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	k, err := s.ctx.GenerateECDSAKeyPairWithLabel(id, []byte(label), elliptic.P256())
	if err != nil {
		return nil, fmt.Errorf("provisioning: %s: generating the key: %w", s, err)
	}
	return k, nil
}

func (s *pkcs11Store) Promote() error {
	cur, err := s.label(Current)
	if err != nil {
		return err
	}
	next, err := s.label(Pending)
	if err != nil {
		return err
	}
	if k, err := s.find(next); err != nil {
		return err
	} else if k == nil {
		return fmt.Errorf("provisioning: %s: %w in the pending slot", s, ErrNoKey)
	}
	// The old key goes first, the marker moves second: cut short in
	// between, the current slot is empty and the pending key is the one
	// the installed certificate is for, which LoadIdentity finishes. The
	// other way round would leave the old key under the pending label.
	if old, err := s.find(cur); err != nil {
		return err
	} else if old != nil {
		if err := old.Delete(); err != nil {
			return fmt.Errorf("provisioning: %s: deleting the old key: %w", s, err)
		}
	}
	if err := atomicfile.MkdirAllOwned(filepath.Dir(s.marker), 0o700, s.owner); err != nil {
		return fmt.Errorf("provisioning: %w", err)
	}
	if err := atomicfile.WriteFileOwned(s.marker, []byte(next+"\n"), 0o600, s.owner); err != nil {
		return fmt.Errorf("provisioning: %w", err)
	}
	return nil
}
