//go:build pkcs11

package main

import (
	"testing"

	"github.com/fieldgate/fieldgate/provisioning/softhsmtest"
)

// TestFactoryFlowPKCS11 is TestFactoryFlow with the key in a PKCS#11 token
// (SoftHSM2); make test runs it in its cgo pass.
func TestFactoryFlowPKCS11(t *testing.T) {
	uri := softhsmtest.Token(t)
	factoryFlow(t, func(string) string { return uri })
}
