// Package tpmtest runs a software TPM 2.0 (swtpm) for tests, reachable as
// the key store URI tpm:tcp://127.0.0.1:PORT.
package tpmtest

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"testing"
)

// Start runs swtpm with a fresh state in a temporary directory until the
// test ends, and returns its key store URI. swtpm listens on a command port
// and, just above it, its control port (where the TPM reference
// simulator's protocol has its platform port). It is started with
// --daemon, whose parent exits once both sockets listen, so the TPM is
// reachable when Start returns; at the end of the test it is shut down
// through the control port, which answers once the TPM state is saved.
// Without swtpm the test is skipped, or fails when
// FIELDGATE_REQUIRE_PEERS=1.
func Start(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		if os.Getenv("FIELDGATE_REQUIRE_PEERS") == "1" {
			t.Fatalf("swtpm is not installed (run .ci/deps): %v", err)
		}
		t.Skip("swtpm is not installed; run .ci/deps or make test")
	}
	cmdLn, ctrlLn := listenPair(t)
	port := cmdLn.Addr().(*net.TCPAddr).Port
	cmdLn.Close()
	ctrlLn.Close()

	state := t.TempDir()
	out, err := exec.Command(bin, "socket", "--tpm2", "--daemon",
		"--server", fmt.Sprintf("type=tcp,port=%d", port),
		"--ctrl", fmt.Sprintf("type=tcp,port=%d", port+1),
		"--tpmstate", "dir="+state,
		"--flags", "not-need-init,startup-clear").CombinedOutput()
	if err != nil {
		t.Fatalf("swtpm: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if err := shutdown(fmt.Sprintf("127.0.0.1:%d", port+1)); err != nil {
			t.Errorf("swtpm shutdown: %v", err)
		}
	})
	return fmt.Sprintf("tpm:tcp://127.0.0.1:%d", port)
}

// shutdown sends swtpm's CMD_SHUTDOWN on its control channel and waits for
// the answer.
func shutdown(addr string) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write([]byte{0, 0, 0, 3}); err != nil {
		return err
	}
	var rsp [4]byte
	if _, err := io.ReadFull(c, rsp[:]); err != nil {
		return err
	}
	if rsp != [4]byte{} {
		return fmt.Errorf("result %x", rsp)
	}
	return nil
}

// listenPair listens on two consecutive loopback ports.
func listenPair(t testing.TB) (net.Listener, net.Listener) {
	t.Helper()
	for range 50 {
		a, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		b, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", a.Addr().(*net.TCPAddr).Port+1))
		if err == nil {
			return a, b
		}
		a.Close()
	}
	t.Fatal("no two consecutive free ports on 127.0.0.1")
	return nil, nil
}
