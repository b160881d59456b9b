package localbroker

import (
	"encoding/binary"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// corruptFreelist makes the free-list page of a bbolt file claim to be a
// leaf, on which bbolt panics inside Open.
func corruptFreelist(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pageSize := int(binary.LittleEndian.Uint32(data[16+8:]))
	for meta := range 2 {
		off := meta * pageSize
		freelist := int(binary.LittleEndian.Uint64(data[off+48:]))
		binary.LittleEndian.PutUint16(data[freelist*pageSize+8:], 0x02) // leaf
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func stateFileLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func aside(t *testing.T, path string) []string {
	t.Helper()
	m, _ := filepath.Glob(path + ".corrupt-*")
	return m
}

// A state file on which bbolt panics inside Open (a bad free-list page,
// after a power cut on an SD card) is moved aside; the broker starts.
func TestStateFilePanicInOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sessions.db")
	db, err := openStateFile(path, "session store", [][]byte{[]byte("b")}, nil, stateFileLog())
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("b")).Put([]byte("k"), []byte("v")) })
	db.Close()
	corruptFreelist(t, path)
	db, err = openStateFile(path, "session store", [][]byte{[]byte("b")}, nil, stateFileLog())
	if err != nil {
		t.Fatalf("a damaged free list: %v", err)
	}
	db.Close()
	if len(aside(t, path)) != 1 {
		t.Errorf("moved aside: %v, want one file", aside(t, path))
	}
	if _, err := os.Stat(path + ".opening"); err == nil {
		t.Error("the opening mark was left behind")
	}
}

// An open that killed the process last time (bbolt can panic where no
// recover reaches) leaves its mark; the next start moves the file aside
// instead of dying on it again.
func TestStateFileOpenThatCrashed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broker.db")
	db, err := openStateFile(path, "retained store", [][]byte{[]byte("b")}, nil, stateFileLog())
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	os.WriteFile(path+".opening", nil, 0o600) // as a process that died in Open leaves it
	var logged strings.Builder
	log := slog.New(slog.NewTextHandler(&logged, nil))
	db, err = openStateFile(path, "retained store", [][]byte{[]byte("b")}, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	if len(aside(t, path)) != 1 || !strings.Contains(logged.String(), "stopped the gateway last time") {
		t.Errorf("moved aside %v, log %q", aside(t, path), logged.String())
	}
	// A clean open leaves no mark, so the next start opens it normally.
	db, err = openStateFile(path, "retained store", [][]byte{[]byte("b")}, nil, stateFileLog())
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	if len(aside(t, path)) != 1 {
		t.Errorf("a clean file was moved aside: %v", aside(t, path))
	}
}
