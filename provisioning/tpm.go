package provisioning

import (
	"crypto"
	"crypto/ecdsa"
	"encoding/asn1"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
	"github.com/google/go-tpm/tpm2/transport/tcp"

	"github.com/fieldgate/fieldgate/internal/atomicfile"
)

// tpmStore keeps an ECC P-256 key inside a TPM 2.0. The key is created by
// the TPM under its storage root key (the TCG reference ECC SRK, recreated
// from its template when needed) with fixedTPM, fixedParent and
// sensitiveDataOrigin: it cannot be exported, and the blob on disk is only
// usable by this TPM.
type tpmStore struct {
	uri string
	dir string // where the blobs live
	// owner is given the blobs written (nil: the process's user).
	owner *Owner
	tpm   transport.TPMCloser
	mu    sync.Mutex
	srk   *tpm2.CreatePrimaryResponse
}

const tpmBlobName = "device-key.tpm"

func openTPM(uri, rest string, opt Options) (Store, error) {
	var t transport.TPMCloser
	var err error
	switch {
	case strings.HasPrefix(rest, "tcp://"):
		// A simulator speaking the TPM reference implementation's TCP
		// protocol (swtpm socket --server type=tcp): commands on this port,
		// the platform port on the next.
		addr := strings.TrimPrefix(rest, "tcp://")
		host, port, perr := net.SplitHostPort(addr)
		p, aerr := strconv.Atoi(port)
		if perr != nil || aerr != nil {
			return nil, fmt.Errorf("provisioning: key %q: want tpm:tcp://HOST:PORT", uri)
		}
		t, err = tcp.Open(tcp.Config{CommandAddress: addr, PlatformAddress: net.JoinHostPort(host, strconv.Itoa(p+1))})
	case strings.HasPrefix(rest, "/"):
		t, err = linuxtpm.Open(rest)
	default:
		return nil, fmt.Errorf("provisioning: key %q: want tpm:/dev/tpmrm0 or tpm:tcp://HOST:PORT", uri)
	}
	if err != nil {
		return nil, fmt.Errorf("provisioning: %s: %w", uri, err)
	}
	return &tpmStore{uri: uri, dir: opt.StateDir, owner: opt.Owner, tpm: retryTPM{t}}, nil
}

func (s *tpmStore) String() string { return s.uri }

func (s *tpmStore) blobPath(slot Slot) string {
	p := filepath.Join(s.dir, tpmBlobName)
	if slot == Pending {
		p += ".next"
	}
	return p
}

func (s *tpmStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srk != nil {
		tpm2.FlushContext{FlushHandle: s.srk.ObjectHandle}.Execute(s.tpm)
	}
	return s.tpm.Close()
}

// parent returns the storage root key, creating it (from the fixed
// template, so always the same key) on first use.
func (s *tpmStore) parent() (tpm2.AuthHandle, error) {
	if s.srk == nil {
		rsp, err := tpm2.CreatePrimary{
			PrimaryHandle: tpm2.TPMRHOwner,
			InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
		}.Execute(s.tpm)
		if err != nil {
			return tpm2.AuthHandle{}, fmt.Errorf("provisioning: %s: creating the storage root key: %w", s.uri, err)
		}
		s.srk = rsp
	}
	return tpm2.AuthHandle{Handle: s.srk.ObjectHandle, Name: s.srk.Name, Auth: tpm2.PasswordAuth(nil)}, nil
}

var tpmKeyTemplate = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgECC,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		SignEncrypt:         true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Scheme: tpm2.TPMTECCScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
		},
		CurveID: tpm2.TPMECCNistP256,
	}),
}

// The blob file: a PEM block holding the TPM2B_PUBLIC and TPM2B_PRIVATE
// that TPM2_Create returned, as the TPM marshals them. The private part is
// encrypted by the TPM under the storage root key.
const tpmPEMType = "FIELDGATE TPM2 KEY"

func (s *tpmStore) Generate(slot Slot, kt KeyType) (crypto.Signer, error) {
	if kt != "" && kt != ECDSAP256 {
		return nil, fmt.Errorf("provisioning: %s: key type %q: a TPM key is %s", s.uri, kt, ECDSAP256)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	parent, err := s.parent()
	if err != nil {
		return nil, err
	}
	rsp, err := tpm2.Create{ParentHandle: parent, InPublic: tpm2.New2B(tpmKeyTemplate)}.Execute(s.tpm)
	if err != nil {
		return nil, fmt.Errorf("provisioning: %s: creating the key: %w", s.uri, err)
	}
	blob := append(tpm2.Marshal(rsp.OutPublic), tpm2.Marshal(rsp.OutPrivate)...)
	if err := atomicfile.MkdirAllOwned(s.dir, 0o700, s.owner); err != nil {
		return nil, fmt.Errorf("provisioning: %w", err)
	}
	if err := atomicfile.WriteFileOwned(s.blobPath(slot), pem.EncodeToMemory(&pem.Block{Type: tpmPEMType, Bytes: blob}), 0o600, s.owner); err != nil {
		return nil, fmt.Errorf("provisioning: writing the TPM key blob: %w", err)
	}
	return s.load(rsp.OutPublic, rsp.OutPrivate)
}

func (s *tpmStore) Load(slot Slot) (crypto.Signer, error) {
	path := s.blobPath(slot)
	if err := CheckPrivate(path); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("provisioning: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != tpmPEMType {
		return nil, fmt.Errorf("provisioning: %s: not a %q PEM block", path, tpmPEMType)
	}
	pubBytes, rest, err := splitTPM2B(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("provisioning: %s: public part: %w", path, err)
	}
	privBytes, _, err := splitTPM2B(rest)
	if err != nil {
		return nil, fmt.Errorf("provisioning: %s: private part: %w", path, err)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](pubBytes)
	if err != nil {
		return nil, fmt.Errorf("provisioning: %s: public part: %w", path, err)
	}
	priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](privBytes)
	if err != nil {
		return nil, fmt.Errorf("provisioning: %s: private part: %w", path, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.load(*pub, *priv)
}

// splitTPM2B cuts one TPM2B structure (a 2-byte size, then that many
// bytes) from the start of b.
func splitTPM2B(b []byte) (one, rest []byte, err error) {
	if len(b) < 2 {
		return nil, nil, io.ErrUnexpectedEOF
	}
	n := 2 + int(binary.BigEndian.Uint16(b))
	if len(b) < n {
		return nil, nil, io.ErrUnexpectedEOF
	}
	return b[:n], b[n:], nil
}

// load checks that the TPM takes the key and returns its signer. The key
// is loaded for each signature and flushed after it, so a TPM without a
// resource manager (a simulator, a TPM reached without /dev/tpmrm0) never
// runs out of object slots. s.mu is held.
func (s *tpmStore) load(pub tpm2.TPM2BPublic, priv tpm2.TPM2BPrivate) (crypto.Signer, error) {
	contents, err := pub.Contents()
	if err != nil {
		return nil, fmt.Errorf("provisioning: %s: %w", s.uri, err)
	}
	pk, err := tpm2.Pub(*contents)
	if err != nil {
		return nil, fmt.Errorf("provisioning: %s: %w", s.uri, err)
	}
	ecpk, ok := pk.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("provisioning: %s: key is %T, want ECDSA", s.uri, pk)
	}
	k := &tpmSigner{s: s, pub: pub, priv: priv, pk: ecpk}
	h, err := k.loadKey()
	if err != nil {
		return nil, err
	}
	tpm2.FlushContext{FlushHandle: h.Handle}.Execute(s.tpm)
	return k, nil
}

func (s *tpmStore) Promote() error {
	if err := atomicfile.Rename(s.blobPath(Pending), s.blobPath(Current)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("provisioning: %s: %w in the pending slot", s, ErrNoKey)
		}
		return fmt.Errorf("provisioning: %w", err)
	}
	return nil
}

type tpmSigner struct {
	s    *tpmStore
	pub  tpm2.TPM2BPublic
	priv tpm2.TPM2BPrivate
	pk   *ecdsa.PublicKey
}

func (k *tpmSigner) Public() crypto.PublicKey { return k.pk }

// loadKey loads the key under the storage root key. If the TPM lost the
// root key (it was reset), it is made again once. s.mu is held.
func (k *tpmSigner) loadKey() (tpm2.NamedHandle, error) {
	for attempt := 0; ; attempt++ {
		parent, err := k.s.parent()
		if err != nil {
			return tpm2.NamedHandle{}, err
		}
		rsp, err := tpm2.Load{ParentHandle: parent, InPublic: k.pub, InPrivate: k.priv}.Execute(k.s.tpm)
		if err == nil {
			return tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}, nil
		}
		if attempt == 0 && isHandleError(err) {
			k.s.srk = nil
			continue
		}
		return tpm2.NamedHandle{}, fmt.Errorf("provisioning: %s: loading the key (was it made by another TPM?): %w", k.s.uri, err)
	}
}

// isHandleError tells whether err says a handle is not loaded.
func isHandleError(err error) bool {
	return errors.Is(err, tpm2.TPMRCHandle) || errors.Is(err, tpm2.TPMRCReferenceH0)
}

// Sign signs a digest with the TPM, returning an ASN.1 ECDSA signature as
// crypto/ecdsa does.
func (k *tpmSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	var alg tpm2.TPMAlgID
	switch opts.HashFunc() {
	case crypto.SHA256:
		alg = tpm2.TPMAlgSHA256
	case crypto.SHA384:
		alg = tpm2.TPMAlgSHA384
	case crypto.SHA512:
		alg = tpm2.TPMAlgSHA512
	default:
		return nil, fmt.Errorf("provisioning: %s: cannot sign with hash %v", k.s.uri, opts.HashFunc())
	}
	k.s.mu.Lock()
	defer k.s.mu.Unlock()
	h, err := k.loadKey()
	if err != nil {
		return nil, err
	}
	defer tpm2.FlushContext{FlushHandle: h.Handle}.Execute(k.s.tpm)
	rsp, err := tpm2.Sign{
		KeyHandle: h,
		Digest:    tpm2.TPM2BDigest{Buffer: digest},
		InScheme: tpm2.TPMTSigScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: alg}),
		},
		Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
	}.Execute(k.s.tpm)
	if err != nil {
		return nil, fmt.Errorf("provisioning: %s: signing: %w", k.s.uri, err)
	}
	sig, err := rsp.Signature.Signature.ECDSA()
	if err != nil {
		return nil, fmt.Errorf("provisioning: %s: %w", k.s.uri, err)
	}
	return asn1.Marshal(struct{ R, S *big.Int }{
		new(big.Int).SetBytes(sig.SignatureR.Buffer),
		new(big.Int).SetBytes(sig.SignatureS.Buffer),
	})
}

// retryTPM resends a command the TPM answered with TPM_RC_RETRY, YIELDED
// or TESTING: the TPM was busy and asks to be asked again.
type retryTPM struct{ transport.TPMCloser }

func (r retryTPM) Send(cmd []byte) ([]byte, error) {
	delay := 10 * time.Millisecond
	for attempt := 0; ; attempt++ {
		rsp, err := r.TPMCloser.Send(cmd)
		if err != nil || len(rsp) < 10 || attempt == 8 {
			return rsp, err
		}
		switch tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10])) {
		case tpm2.TPMRCRetry, tpm2.TPMRCYielded, tpm2.TPMRCTesting:
			time.Sleep(delay) // the TPM's own back-off, not a wait for an event
			delay *= 2
			continue
		}
		return rsp, nil
	}
}
