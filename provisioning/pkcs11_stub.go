//go:build !pkcs11

package provisioning

import "fmt"

// pkcs11Supported tells whether this build has the PKCS#11 key store: it
// needs cgo and the build tag pkcs11, so the default build stays pure Go.
const pkcs11Supported = false

func openPKCS11(uri string, _ Options) (Store, error) {
	return nil, fmt.Errorf("provisioning: key %q: this build has no PKCS#11 key store (build with -tags pkcs11 and cgo)", RedactURI(uri))
}
