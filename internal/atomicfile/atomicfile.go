// Package atomicfile writes files so that a crash or a power cut leaves
// either the old file or the new one, never half of one.
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// WriteFile writes data to path through a temporary file in the same
// directory, created with mode (so a key is never readable by others, not
// even for a moment), synced, renamed over path, and the directory synced.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	return WriteFileOwned(path, data, mode, nil)
}

// Owner is a user and group to give a file to.
type Owner struct{ UID, GID int }

// WriteFileOwned is WriteFile that, with a non-nil owner, gives the file to
// owner before it takes path's name. The ownership is changed through the
// descriptor of the temporary file this call made (O_EXCL, a random name),
// so no symbolic or hard link under path can make it change another file.
func WriteFileOwned(path string, data []byte, mode os.FileMode, owner *Owner) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if owner != nil {
		if err := f.Chown(owner.UID, owner.GID); err != nil {
			f.Close()
			return err
		}
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// Create is WriteFile that refuses to replace an existing file.
func Create(path string, data []byte, mode os.FileMode) error {
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("%s: %w", path, fs.ErrExist)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return WriteFile(path, data, mode)
}

// Rename renames oldpath to newpath and syncs the directory, so the
// rename survives a power cut.
func Rename(oldpath, newpath string) error {
	if err := os.Rename(oldpath, newpath); err != nil {
		return err
	}
	return SyncDir(filepath.Dir(newpath))
}

// SyncDir flushes a directory's entries to disk.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// MkdirAllOwned is os.MkdirAll that gives each directory it creates to
// owner (when not nil). It changes only what it created, and never follows
// a link: a directory swapped for a symlink meanwhile has the link changed.
func MkdirAllOwned(dir string, mode os.FileMode, owner *Owner) error {
	if owner == nil {
		return os.MkdirAll(dir, mode)
	}
	var missing []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil {
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		missing = append(missing, d)
		if d == filepath.Dir(d) {
			break
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(missing[i], mode); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		if err := os.Lchown(missing[i], owner.UID, owner.GID); err != nil {
			return err
		}
	}
	return nil
}
