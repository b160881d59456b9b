// Command fieldgate-factory runs the factory's and the site's certificate
// authority: it makes the CA, signs the requests devices make with
// "fieldgate provision csr", issues server and client certificates,
// revokes, and publishes CRLs that Mosquitto (crlfile) and Fieldgate's
// local broker (crl_file) both take.
//
// Usage:
//
//	fieldgate-factory init        --dir PKI --org ORG [--cn-pattern RE]
//	fieldgate-factory sign        --dir PKI --csr F --out F [--days N] [--renew]
//	fieldgate-factory server-cert --dir PKI --cn NAME [--dns D]... [--ip I]... --out-cert F --out-key F
//	fieldgate-factory client-cert --dir PKI --cn NAME --out-cert F --out-key F
//	fieldgate-factory revoke      --dir PKI (--serial S | --cert F) [--reason R]
//	fieldgate-factory crl         --dir PKI --out F [--days N] [--der]
//	fieldgate-factory list        --dir PKI
package main

import (
	"crypto"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fieldgate/fieldgate/internal/atomicfile"
	"github.com/fieldgate/fieldgate/provisioning/pki"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

const usage = `usage: fieldgate-factory <command> --dir PKI [flags]

commands:
  init         make a root CA and an issuing CA in a new PKI directory
  sign         sign a device's certificate request (fieldgate provision csr)
  server-cert  issue a server certificate and its key (local or central broker)
  client-cert  issue a client certificate and its key (devices without a CSR)
  revoke       revoke a certificate (then publish a new CRL)
  crl          write the issuing CA's certificate revocation list
  list         list the certificates issued and their state

Run "fieldgate-factory <command> -h" for a command's flags.
`

// now is the clock; tests leave it.
var now = time.Now

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmds := map[string]func([]string, io.Writer, io.Writer) error{
		"init": cmdInit, "sign": cmdSign, "server-cert": cmdServerCert, "client-cert": cmdClientCert,
		"revoke": cmdRevoke, "crl": cmdCRL, "list": cmdList,
	}
	name, rest := args[0], args[1:]
	if name == "help" || name == "-h" || name == "--help" {
		fmt.Fprint(stdout, usage)
		return 0
	}
	cmd, ok := cmds[name]
	if !ok {
		fmt.Fprintf(stderr, "fieldgate-factory: unknown command %q\n\n%s", name, usage)
		return 2
	}
	err := cmd(rest, stdout, stderr)
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		if ue.msg != "" {
			fmt.Fprintf(stderr, "fieldgate-factory %s: %s\n", name, ue.msg)
		}
		return 2
	}
	fmt.Fprintf(stderr, "fieldgate-factory %s: %v\n", name, strings.TrimPrefix(err.Error(), "pki: "))
	return 1
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// flags makes a command's flag set with --dir.
func flags(name string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "the PKI `directory`")
	return fs, dir
}

// parse parses args and checks that the named flags were given.
func parse(fs *flag.FlagSet, args []string, required ...string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = f.Value.String() != "" })
	for _, r := range required {
		if !set[r] {
			return usageError{"--" + r + " is required"}
		}
	}
	return nil
}

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

func cmdInit(args []string, stdout, stderr io.Writer) error {
	fs, dir := flags("init", stderr)
	org := fs.String("org", "", "organisation `name`, in every certificate's subject")
	pattern := fs.String("cn-pattern", pki.DefaultCNPattern, "regular `expression` device CNs must match")
	if err := parse(fs, args, "dir", "org"); err != nil {
		return err
	}
	a, err := pki.Init(*dir, pki.InitOptions{Org: *org, CNPattern: *pattern, Now: now})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "root CA     %s (until %s)\nissuing CA  %s (until %s)\nchain       %s/%s: give it to brokers as cafile / client_ca, and to devices as [identity] ca\n",
		a.Root().Subject.CommonName, a.Root().NotAfter.Format(time.DateOnly),
		a.Issuer().Subject.CommonName, a.Issuer().NotAfter.Format(time.DateOnly), *dir, pki.ChainFile)
	fmt.Fprintf(stdout, "%s/%s is needed only to make a new issuing CA: keep it offline\n", *dir, pki.RootKey)
	return nil
}

func cmdSign(args []string, stdout, stderr io.Writer) error {
	fs, dir := flags("sign", stderr)
	csrPath := fs.String("csr", "", "the device's certificate request `file` (PEM)")
	out := fs.String("out", "", "certificate `file` to write")
	days := fs.Int("days", pki.DeviceDays, "validity in `days`")
	renew := fs.Bool("renew", false, "allow a CN that already has a valid certificate (a device renewing)")
	pattern := fs.String("cn-pattern", "", "regular `expression` the CN must match, instead of the PKI's")
	if err := parse(fs, args, "dir", "csr", "out"); err != nil {
		return err
	}
	a, err := pki.Open(*dir, now)
	if err != nil {
		return err
	}
	req, err := os.ReadFile(*csrPath)
	if err != nil {
		return err
	}
	c, err := a.SignCSR(req, pki.SignOptions{Days: *days, Renew: *renew, CNPattern: *pattern})
	if err != nil {
		return fmt.Errorf("%s: %s", *csrPath, strings.TrimPrefix(err.Error(), "pki: "))
	}
	if err := atomicfile.WriteFile(*out, pki.CertPEM(c), 0o644); err != nil {
		return fmt.Errorf("the certificate (serial %s) was issued but not written: %w", pki.SerialString(c.SerialNumber), err)
	}
	fmt.Fprintf(stdout, "issued %s to CN %q until %s: %s\n", pki.SerialString(c.SerialNumber), c.Subject.CommonName, c.NotAfter.Format(time.DateOnly), *out)
	return nil
}

func cmdServerCert(args []string, stdout, stderr io.Writer) error {
	fs, dir := flags("server-cert", stderr)
	cn := fs.String("cn", "", "common `name`")
	var dns, ips list
	fs.Var(&dns, "dns", "DNS `name` clients connect to (repeat for more)")
	fs.Var(&ips, "ip", "IP `address` clients connect to (repeat for more)")
	days := fs.Int("days", pki.ServerDays, "validity in `days`")
	outCert, outKey, force := keyPairFlags(fs)
	if err := parse(fs, args, "dir", "cn", "out-cert", "out-key"); err != nil {
		return err
	}
	var addrs []net.IP
	for _, s := range ips {
		ip := net.ParseIP(s)
		if ip == nil {
			return usageError{fmt.Sprintf("--ip %q is not an IP address", s)}
		}
		addrs = append(addrs, ip)
	}
	return issuePair(*dir, *outCert, *outKey, *force, stdout, func(a *pki.Authority) (certKey, error) {
		c, k, err := a.IssueServer(*cn, dns, addrs, *days)
		return certKey{c, k}, err
	})
}

func cmdClientCert(args []string, stdout, stderr io.Writer) error {
	fs, dir := flags("client-cert", stderr)
	cn := fs.String("cn", "", "common `name` (the username when the broker uses the identity as username)")
	days := fs.Int("days", pki.ClientDays, "validity in `days`")
	renew := fs.Bool("renew", false, "allow a CN that already has a valid certificate")
	outCert, outKey, force := keyPairFlags(fs)
	if err := parse(fs, args, "dir", "cn", "out-cert", "out-key"); err != nil {
		return err
	}
	return issuePair(*dir, *outCert, *outKey, *force, stdout, func(a *pki.Authority) (certKey, error) {
		c, k, err := a.IssueClient(*cn, *days, *renew)
		return certKey{c, k}, err
	})
}

func keyPairFlags(fs *flag.FlagSet) (cert, key *string, force *bool) {
	cert = fs.String("out-cert", "", "certificate `file` to write")
	key = fs.String("out-key", "", "key `file` to write (mode 0600)")
	force = fs.Bool("force", false, "replace an existing key file")
	return
}

type certKey struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// issuePair issues a certificate and its new key and writes both. The key
// file is checked before anything is issued, so a refusal changes nothing.
func issuePair(dir, outCert, outKey string, force bool, stdout io.Writer, issue func(*pki.Authority) (certKey, error)) error {
	if _, err := os.Lstat(outKey); err == nil && !force {
		return fmt.Errorf("%s exists: not replacing a key (--force replaces it)", outKey)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	a, err := pki.Open(dir, now)
	if err != nil {
		return err
	}
	ck, err := issue(a)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(outKey, pki.KeyPEM(ck.key), 0o600); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(outCert, pki.CertPEM(ck.cert), 0o644); err != nil {
		return err
	}
	c := ck.cert
	names := append(append([]string{}, c.DNSNames...), ipStrings(c.IPAddresses)...)
	fmt.Fprintf(stdout, "issued %s to CN %q", pki.SerialString(c.SerialNumber), c.Subject.CommonName)
	if len(names) > 0 {
		fmt.Fprintf(stdout, " for %s", strings.Join(names, ", "))
	}
	fmt.Fprintf(stdout, " until %s: %s, key %s\n", c.NotAfter.Format(time.DateOnly), outCert, outKey)
	return nil
}

func ipStrings(ips []net.IP) []string {
	s := make([]string, len(ips))
	for i, ip := range ips {
		s[i] = ip.String()
	}
	return s
}

func cmdRevoke(args []string, stdout, stderr io.Writer) error {
	fs, dir := flags("revoke", stderr)
	serial := fs.String("serial", "", "serial `number` of the certificate (hex, as list prints it)")
	certPath := fs.String("cert", "", "the certificate `file` to revoke")
	reason := fs.String("reason", "unspecified", "`reason`: keyCompromise, superseded, cessationOfOperation, affiliationChanged, privilegeWithdrawn, cACompromise, unspecified")
	if err := parse(fs, args, "dir"); err != nil {
		return err
	}
	if (*serial == "") == (*certPath == "") {
		return usageError{"give --serial or --cert"}
	}
	r, err := pki.ParseReason(*reason)
	if err != nil {
		return err
	}
	a, err := pki.Open(*dir, now)
	if err != nil {
		return err
	}
	var e pki.Entry
	if *serial != "" {
		var s *big.Int
		if s, err = pki.ParseSerial(*serial); err == nil {
			e, err = a.Revoke(s, r)
		}
	} else {
		var data []byte
		if data, err = os.ReadFile(*certPath); err == nil {
			e, err = a.RevokeCert(data, r)
		}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "revoked %s (CN %q, %s): publish a new CRL with \"fieldgate-factory crl\" and give it to the brokers\n", e.Serial, e.CN, e.Reason)
	return nil
}

func cmdCRL(args []string, stdout, stderr io.Writer) error {
	fs, dir := flags("crl", stderr)
	out := fs.String("out", "", "CRL `file` to write")
	days := fs.Int("days", pki.CRLDays, "`days` until the next update: brokers refuse every client once it has passed")
	der := fs.Bool("der", false, "write DER instead of PEM")
	if err := parse(fs, args, "dir", "out"); err != nil {
		return err
	}
	a, err := pki.Open(*dir, now)
	if err != nil {
		return err
	}
	crl, err := a.CRL(*days)
	if err != nil {
		return err
	}
	data := crl
	if !*der {
		data = pki.CRLPEM(crl)
	}
	if err := atomicfile.WriteFile(*out, data, 0o644); err != nil {
		return err
	}
	entries, _ := a.List()
	n := 0
	for _, e := range entries {
		if e.Revoked() {
			n++
		}
	}
	fmt.Fprintf(stdout, "CRL with %d revoked certificates, next update %s: %s\n", n, now().AddDate(0, 0, *days).Format(time.DateOnly), *out)
	return nil
}

func cmdList(args []string, stdout, stderr io.Writer) error {
	fs, dir := flags("list", stderr)
	if err := parse(fs, args, "dir"); err != nil {
		return err
	}
	a, err := pki.Open(*dir, now)
	if err != nil {
		return err
	}
	entries, err := a.List()
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(w, "SERIAL\tCN\tKIND\tNOT AFTER\tSTATE")
	t := now()
	for _, e := range entries {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", e.Serial, e.CN, e.Kind, e.NotAfter.Format(time.DateOnly), e.State(t))
	}
	return w.Flush()
}
