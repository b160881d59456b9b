// Package crashguard tells whether opening a state file killed the process
// the last time. bbolt can panic on a damaged page in a goroutine of its
// own (rebuilding the free list at open), where no recover reaches: the
// process dies, systemd starts it again, and it would die again on the
// same file, for ever. Begin leaves a marker beside the file before the
// open and Done removes it after; a marker that is still there at the
// next Begin means that open never finished, and the caller moves the file
// aside instead of opening it again.
package crashguard

import (
	"errors"
	"io/fs"
	"os"
	"syscall"

	"github.com/fieldgate/fieldgate/internal/atomicfile"
)

// Begin marks path as being opened. It reports whether an earlier open of
// path was cut short by the process dying.
func Begin(path string) (crashed bool, err error) {
	marker := path + ".opening"
	if _, err := os.Lstat(marker); err == nil {
		crashed = !inUse(path)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	return crashed, atomicfile.WriteFile(marker, nil, 0o600)
}

// inUse tells whether another process holds bbolt's lock on path: then a
// marker is that process's open under way, not a crash (a dead process
// holds no lock).
func inUse(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return errors.Is(err, syscall.EWOULDBLOCK)
	}
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false
}

// Done removes the mark Begin left: the open finished, well or with an
// error the caller handled.
func Done(path string) error {
	err := os.Remove(path + ".opening")
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}
