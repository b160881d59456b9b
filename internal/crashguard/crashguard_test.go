package crashguard

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestBeginDone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	os.WriteFile(path, []byte("x"), 0o600)
	if crashed, err := Begin(path); crashed || err != nil {
		t.Fatalf("first open: crashed %v, %v", crashed, err)
	}
	if err := Done(path); err != nil {
		t.Fatal(err)
	}
	if crashed, _ := Begin(path); crashed {
		t.Fatal("an open that finished counts as a crash")
	}
	// No Done: the process died during the open.
	if crashed, _ := Begin(path); !crashed {
		t.Fatal("an open that never finished does not count as a crash")
	}
	// The mark of another process that holds the file (its open under way)
	// is not a crash.
	f, _ := os.Open(path)
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH); err != nil {
		t.Fatal(err)
	}
	if crashed, _ := Begin(path); crashed {
		t.Error("a file another process has open counts as a crash")
	}
	Done(path)
	if _, err := os.Stat(path + ".opening"); !os.IsNotExist(err) {
		t.Errorf("mark left after Done: %v", err)
	}
}
