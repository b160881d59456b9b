package localbroker

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/fieldgate/fieldgate/internal/crashguard"
)

// openStateFile opens (or makes, mode 0600) the bbolt file at path with
// the buckets named, checks every page, and calls load, if set, in a read
// transaction to read what it holds. A file bbolt cannot open or whose
// pages fail the check, or that makes the reader panic, is moved aside to
// path.corrupt-<time>, logged as an error, and a new one is started: a
// damaged state file loses its contents, never keeps the broker down. An
// error from load is a corrupt file too; load skips records it cannot
// decode instead of failing.
func openStateFile(path, what string, buckets [][]byte, load func(*bolt.Tx) error, log *slog.Logger) (*bolt.DB, error) {
	crashed, err := crashguard.Begin(path)
	if err != nil {
		return nil, fmt.Errorf("localbroker: %s %s: %w", what, path, err)
	}
	defer crashguard.Done(path)
	var db *bolt.DB
	if crashed {
		// The last open of it killed the process (bbolt can panic where
		// no recover reaches): treated as corrupt, not opened again.
		err = errors.New("opening it stopped the gateway last time")
	} else {
		db, err = openChecked(path, buckets, load)
	}
	var pe *os.PathError
	if err != nil && !errors.Is(err, berrors.ErrTimeout) && !errors.As(err, &pe) {
		aside := fmt.Sprintf("%s.corrupt-%s", path, time.Now().UTC().Format("20060102T150405Z"))
		if rerr := os.Rename(path, aside); rerr == nil {
			log.Error(what+" is corrupt: moved aside, starting a new one", "path", path, "moved_to", aside, "err", err)
			db, err = openChecked(path, buckets, load)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("localbroker: %s %s: %w", what, path, err)
	}
	return db, nil
}

func openChecked(path string, buckets [][]byte, load func(*bolt.Tx) error) (db *bolt.DB, err error) {
	// bbolt panics inside Open on some damage (a bad free-list page), so
	// the recover is in place before it.
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("reading it failed: %v", p)
		}
		if err != nil && db != nil {
			db.Close()
			db = nil
		}
	}()
	db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, err
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range buckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return db, err
	}
	return db, db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
		if load == nil {
			return nil
		}
		return load(tx)
	})
}
