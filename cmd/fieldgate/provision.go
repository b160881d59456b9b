package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/fieldgate/fieldgate/gateway"
	"github.com/fieldgate/fieldgate/internal/atomicfile"
	"github.com/fieldgate/fieldgate/provisioning"
	"github.com/fieldgate/fieldgate/provisioning/pki"
)

const provisionUsage = `usage: fieldgate provision <command> [--config FILE] [flags]

commands:
  csr      make the device key in the configured store (if there is none) and a CSR
  install  install the certificate the factory signed, after checking it
  show     print the device's identity: key store, certificate, expiry
  renew    make a new key beside the current one and a CSR for it; the old
           pair stays in use until the new certificate is installed
`

func cmdProvision(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, provisionUsage)
		return 2
	}
	cmds := map[string]func([]string, io.Writer, io.Writer) error{
		"csr": provisionCSR, "install": provisionInstall, "show": provisionShow, "renew": provisionRenew,
	}
	name, rest := args[0], args[1:]
	cmd, ok := cmds[name]
	if !ok {
		if name == "-h" || name == "--help" || name == "help" {
			fmt.Fprint(stdout, provisionUsage)
			return 0
		}
		fmt.Fprintf(stderr, "fieldgate provision: unknown command %q\n\n%s", name, provisionUsage)
		return 2
	}
	err := cmd(rest, stdout, stderr)
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	}
	var ce *gateway.ConfigError
	if errors.As(err, &ce) || isJoined(err) {
		printConfigError(stderr, err)
		return 1
	}
	fmt.Fprintf(stderr, "fieldgate provision %s: %s\n", name, strings.TrimPrefix(err.Error(), "provisioning: "))
	return 1
}

func isJoined(err error) bool {
	_, ok := err.(interface{ Unwrap() []error })
	return ok
}

var errUsage = errors.New("usage")

// provisionFlags parses a provision command's flags, with --config.
func provisionFlags(name string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("provision "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs, configFlag(fs)
}

func parseProvision(fs *flag.FlagSet, args []string, stderr io.Writer, required ...string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = f.Value.String() != "" })
	for _, r := range required {
		if !set[r] {
			fmt.Fprintf(stderr, "fieldgate %s: --%s is required\n", fs.Name(), r)
			return errUsage
		}
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "fieldgate %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return errUsage
	}
	return nil
}

// deviceIdentity is a provision command's view of the configuration and
// the key store it names.
type deviceIdentity struct {
	cfg *gateway.Config
	st  provisioning.Store
	// owner is given every file written under the service's directories
	// (nil: left to the user running the command).
	owner *provisioning.Owner
}

func openIdentity(path string, stderr io.Writer) (*deviceIdentity, error) {
	cfg, err := gateway.LoadConfigForProvisioning(path)
	if err != nil {
		return nil, err
	}
	if cfg.Identity.Key == "" {
		return nil, fmt.Errorf("%s: identity.key is not set: it names the key store (file:…, tpm:…, pkcs11:…)", path)
	}
	// Run as root (an installer), what is written is given to the service
	// user — the owner of state_dir — as it is created: the gateway
	// refuses key files another user owns.
	var owner *provisioning.Owner
	if uid, gid := provisioning.ServiceUser(cfg.Device.StateDir); uid != os.Geteuid() {
		owner = &provisioning.Owner{UID: uid, GID: gid}
		fmt.Fprintf(stderr, "writing the device's files as uid %d, the owner of %s, which the service runs as\n", uid, cfg.Device.StateDir)
	}
	st, err := provisioning.Open(cfg.Identity.Key, provisioning.Options{StateDir: cfg.Device.StateDir, Owner: owner})
	if err != nil {
		return nil, err
	}
	return &deviceIdentity{cfg: cfg, st: st, owner: owner}, nil
}

var idRE = regexp.MustCompile(pki.DefaultCNPattern)

// csr writes to out a CSR for cn signed by the key in slot, which is made
// if the slot is empty or force is set; made tells whether it was.
func (d *deviceIdentity) csr(slot provisioning.Slot, force bool, kt, cn, out string) (signer crypto.Signer, made bool, err error) {
	signer, err = d.st.Load(slot)
	switch {
	case errors.Is(err, provisioning.ErrNoKey) || (err == nil && force):
		if signer, err = d.st.Generate(slot, provisioning.KeyType(kt)); err != nil {
			return nil, false, err
		}
		made = true
	case err != nil:
		return nil, false, err
	}
	csr, err := provisioning.CreateCSR(signer, cn)
	if err != nil {
		return nil, false, err
	}
	if err := atomicfile.WriteFile(out, csr, 0o644); err != nil {
		return nil, false, err
	}
	return signer, made, nil
}

func provisionCSR(args []string, stdout, stderr io.Writer) error {
	fs, path := provisionFlags("csr", stderr)
	id := fs.String("id", "", "the device's serial: the CSR's CN (default: device.id)")
	out := fs.String("out", "", "CSR `file` to write")
	force := fs.Bool("force", false, "replace an existing key with a new one (the installed certificate stops matching)")
	kt := fs.String("key-type", string(provisioning.ECDSAP256), "key `type` for a new key: ecdsa-p256, rsa2048 or rsa3072 (file store only)")
	if err := parseProvision(fs, args, stderr, "out"); err != nil {
		return err
	}
	d, err := openIdentity(*path, stderr)
	if err != nil {
		return err
	}
	defer d.st.Close()
	cn := *id
	if cn == "" {
		cn = d.cfg.Device.ID
	}
	if cn == "" {
		return errors.New("--id is needed: the device has no device.id and no certificate yet")
	}
	if !idRE.MatchString(cn) {
		return fmt.Errorf("--id %q: want letters, digits and '-._:' (at most 64), starting with a letter or digit: it is the device id in topics", cn)
	}
	if d.cfg.Device.ID != "" && d.cfg.Device.ID != cn {
		fmt.Fprintf(stderr, "warning: the CSR's CN %q differs from the device id %q this gateway runs as\n", cn, d.cfg.Device.ID)
	}
	signer, made, err := d.csr(provisioning.Current, *force, *kt, cn, *out)
	if err != nil {
		return err
	}
	what := "the existing key"
	if made {
		what = "a new key"
	}
	fmt.Fprintf(stdout, "wrote %s: CN %q, %s in %s (%s)\n", *out, cn, what, d.st, keyDescription(signer.Public()))
	if made && *force && d.cfg.Identity.Cert != "" {
		if _, err := os.Stat(d.cfg.Identity.Cert); err == nil {
			fmt.Fprintf(stderr, "warning: %s is for the old key: install the certificate signed for this CSR\n", d.cfg.Identity.Cert)
		}
	}
	return nil
}

func provisionInstall(args []string, stdout, stderr io.Writer) error {
	fs, path := provisionFlags("install", stderr)
	certPath := fs.String("cert", "", "the certificate `file` the factory signed (PEM; may be followed by intermediates)")
	chainPath := fs.String("chain", "", "the factory CA chain `file` it must chain to (default: identity.ca)")
	if err := parseProvision(fs, args, stderr, "cert"); err != nil {
		return err
	}
	d, err := openIdentity(*path, stderr)
	if err != nil {
		return err
	}
	defer d.st.Close()
	if d.cfg.Identity.Cert == "" {
		return fmt.Errorf("%s: identity.cert is not set: it is where the certificate is installed", *path)
	}
	trustPath := *chainPath
	if trustPath == "" {
		trustPath = d.cfg.Identity.CA
	}
	if trustPath == "" {
		return errors.New("--chain is needed (the factory CA chain): identity.ca is not set either")
	}
	certPEM, err := os.ReadFile(*certPath)
	if err != nil {
		return err
	}
	trustPEM, err := os.ReadFile(trustPath)
	if err != nil {
		return err
	}
	certs, err := provisioning.ParseCertificates(certPEM)
	if err != nil {
		return fmt.Errorf("%s: %w", *certPath, err)
	}
	// The certificate is for the current key, or for the pending one a
	// renewal made.
	slot := provisioning.Current
	signer, err := d.st.Load(provisioning.Current)
	if err != nil && !errors.Is(err, provisioning.ErrNoKey) {
		return err
	}
	if signer == nil || !provisioning.SamePublicKey(certs[0].PublicKey, signer.Public()) {
		if pending, perr := d.st.Load(provisioning.Pending); perr == nil && provisioning.SamePublicKey(certs[0].PublicKey, pending.Public()) {
			signer, slot = pending, provisioning.Pending
		}
	}
	if signer == nil {
		return fmt.Errorf("%s holds no key: run \"fieldgate provision csr\" first", d.st)
	}
	chain, err := provisioning.CheckInstall(certPEM, trustPEM, signer.Public(), time.Now())
	if err != nil {
		return fmt.Errorf("%s refused, nothing installed: %w (checked against %s)", *certPath, err, trustPath)
	}
	// The CN is the device id in topics and SenML names when device.id is
	// not set: one the gateway would refuse is refused here.
	if cn := chain[0].Subject.CommonName; !idRE.MatchString(cn) {
		return fmt.Errorf("%s refused, nothing installed: its CN %q cannot be a device id (letters, digits and '-._:', at most 64, starting with a letter or digit)", *certPath, cn)
	}
	_, statErr := os.Stat(d.cfg.Identity.Cert)
	first := errors.Is(statErr, os.ErrNotExist)
	if err := provisioning.WriteChain(d.cfg.Identity.Cert, chain, d.owner); err != nil {
		return fmt.Errorf("writing %s: %w", d.cfg.Identity.Cert, err)
	}
	// Written first, promoted second: if this is cut short the gateway
	// finishes the promotion when it next loads its identity.
	if slot == provisioning.Pending {
		if err := d.st.Promote(); err != nil {
			return err
		}
	}
	leaf := chain[0]
	fmt.Fprintf(stdout, "installed %s: CN %q, serial %X, until %s, issued by %q", d.cfg.Identity.Cert, leaf.Subject.CommonName, leaf.SerialNumber, leaf.NotAfter.Format(time.DateOnly), leaf.Issuer.CommonName)
	if slot == provisioning.Pending {
		fmt.Fprint(stdout, "; the renewed key is now the current one")
	}
	if first {
		fmt.Fprintln(stdout, "\na running gateway starts its uplink with it after: systemctl restart fieldgate")
	} else {
		fmt.Fprintln(stdout, "\na running gateway takes it with: systemctl reload fieldgate")
	}
	if id := d.cfg.Device.ID; id != "" && id != leaf.Subject.CommonName {
		fmt.Fprintf(stderr, "warning: device.id is %q but the certificate names %q\n", id, leaf.Subject.CommonName)
	}
	return nil
}

func provisionShow(args []string, stdout, stderr io.Writer) error {
	fs, path := provisionFlags("show", stderr)
	if err := parseProvision(fs, args, stderr); err != nil {
		return err
	}
	d, err := openIdentity(*path, stderr)
	if err != nil {
		return err
	}
	defer d.st.Close()
	id := d.cfg.Device.ID
	if id == "" {
		id = "(none yet)"
	}
	fmt.Fprintf(stdout, "identity     %s\nkey store    %s\n", id, d.st)
	signer, err := d.st.Load(provisioning.Current)
	switch {
	case errors.Is(err, provisioning.ErrNoKey):
		fmt.Fprintln(stdout, "key          none yet: fieldgate provision csr --id SERIAL --out device.csr")
	case err != nil:
		return err
	default:
		fmt.Fprintf(stdout, "key          %s\n", keyDescription(signer.Public()))
	}
	if p, err := d.st.Load(provisioning.Pending); err == nil {
		fmt.Fprintf(stdout, "renewal      a new key waits for its certificate (%s): fieldgate provision install\n", keyDescription(p.Public()))
	}
	certs, err := provisioning.ReadCertificates(d.cfg.Identity.Cert)
	if err != nil {
		if d.cfg.Identity.Cert == "" || errors.Is(err, os.ErrNotExist) {
			fmt.Fprintln(stdout, "certificate  none installed yet: fieldgate provision install --cert device.crt")
			return nil
		}
		return err
	}
	leaf, now := certs[0], time.Now()
	fmt.Fprintf(stdout, "certificate  %s\nissuer       %s\nserial       %X\n", leaf.Subject, leaf.Issuer, leaf.SerialNumber)
	fmt.Fprintf(stdout, "valid        %s to %s", leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	switch {
	case now.After(leaf.NotAfter):
		fmt.Fprintln(stdout, " (EXPIRED)")
	case now.Before(leaf.NotBefore):
		fmt.Fprintln(stdout, " (not yet valid: is the clock right?)")
	default:
		fmt.Fprintf(stdout, " (%d days left)\n", int(leaf.NotAfter.Sub(now).Hours()/24))
	}
	due := provisioning.RenewAt(leaf, d.cfg.Identity.RenewAfter)
	fmt.Fprintf(stdout, "renew after  %s", due.UTC().Format(time.DateOnly))
	if !now.Before(due) {
		fmt.Fprint(stdout, " (due now: fieldgate provision renew)")
	}
	fmt.Fprintln(stdout)
	if signer != nil && !provisioning.SamePublicKey(leaf.PublicKey, signer.Public()) {
		fmt.Fprintln(stdout, "WARNING      the certificate is not for the current key: the uplink cannot use it")
	}
	return nil
}

func provisionRenew(args []string, stdout, stderr io.Writer) error {
	fs, path := provisionFlags("renew", stderr)
	out := fs.String("out", "", "CSR `file` to write")
	force := fs.Bool("force", false, "replace a pending key made by an earlier renew")
	kt := fs.String("key-type", string(provisioning.ECDSAP256), "key `type`: ecdsa-p256, rsa2048 or rsa3072 (file store only)")
	if err := parseProvision(fs, args, stderr, "out"); err != nil {
		return err
	}
	d, err := openIdentity(*path, stderr)
	if err != nil {
		return err
	}
	defer d.st.Close()
	certs, err := provisioning.ReadCertificates(d.cfg.Identity.Cert)
	if err != nil {
		return fmt.Errorf("nothing to renew (%w): a device without a certificate starts with \"fieldgate provision csr\"", err)
	}
	cn := certs[0].Subject.CommonName
	signer, made, err := d.csr(provisioning.Pending, *force, *kt, cn, *out)
	if err != nil {
		return err
	}
	what := "the pending key of an earlier renew"
	if made {
		what = "a new pending key"
	}
	fmt.Fprintf(stdout, "wrote %s: CN %q, %s in %s (%s); the current key and certificate stay in use until the new certificate is installed\n", *out, cn, what, d.st, keyDescription(signer.Public()))
	return nil
}

// keyDescription names a public key's type and its SHA-256 fingerprint
// (of the DER SubjectPublicKeyInfo, as openssl pkey -pubout | sha256sum).
func keyDescription(pub crypto.PublicKey) string {
	kind := fmt.Sprintf("%T", pub)
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		kind = "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		kind = fmt.Sprintf("RSA %d", k.N.BitLen())
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return kind
	}
	sum := sha256.Sum256(der)
	return fmt.Sprintf("%s, SHA-256 %x", kind, sum[:8])
}
