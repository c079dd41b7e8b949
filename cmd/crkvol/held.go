package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	bolt "go.etcd.io/bbolt"

	"crkvol/internal/fsutil"
)

// serveFileName is the file `kms serve` keeps in the state directory while it runs: its
// process id and URL, so that a command finding the key store locked can say who holds it.
const serveFileName = "kms-serve.json"

// serveRecord is the content of serveFileName.
type serveRecord struct {
	PID int    `json:"pid"`
	URL string `json:"url"`
}

// writeServeRecord records this process as the state directory's kms serve at url; remove
// deletes the record (only if it is still this process's).
func writeServeRecord(dir, url string) (remove func(), err error) {
	path := filepath.Join(dir, serveFileName)
	b, err := json.Marshal(serveRecord{PID: os.Getpid(), URL: url})
	if err != nil {
		return nil, err
	}
	if err := fsutil.WriteFileAtomic(path, append(b, '\n')); err != nil {
		return nil, fmt.Errorf("recording the server: %w", err)
	}
	return func() {
		if rec, ok := readServeRecord(dir); ok && rec.PID == os.Getpid() {
			os.Remove(path)
		}
	}, nil
}

// readServeRecord returns the state directory's kms serve record, if there is one.
func readServeRecord(dir string) (serveRecord, bool) {
	var rec serveRecord
	b, err := os.ReadFile(filepath.Join(dir, serveFileName))
	if err != nil || json.Unmarshal(b, &rec) != nil || rec.PID <= 0 {
		return serveRecord{}, false
	}
	return rec, true
}

// runningServe returns the record of the kms serve running on the state directory: one
// whose process is alive (a record left by a killed server is ignored).
func runningServe(dir string) (serveRecord, bool) {
	rec, ok := readServeRecord(dir)
	if !ok {
		return serveRecord{}, false
	}
	if err := syscall.Kill(rec.PID, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return serveRecord{}, false
	}
	return rec, true
}

// storeHeld turns the lock timeout of opening the key store at path (in state directory
// dir) into an error saying that another crkvol process holds it, naming kms serve and its
// URL when it is the holder, with a hint to use it through --kms-url. Other errors are
// returned as they are. The error matches bolt.ErrTimeout.
func storeHeld(err error, path, dir string) error {
	if !errors.Is(err, bolt.ErrTimeout) {
		return err
	}
	if rec, ok := runningServe(dir); ok {
		return heldByServe(rec, path, err)
	}
	return withHint(fmt.Errorf("the key store %s is held by another crkvol process (kms serve?): %w", path, bolt.ErrTimeout),
		"if kms serve is running on this state directory, use it with --kms-url URL; otherwise try again once the other command has finished")
}

// errStoreHeld means the key store is locked by the state directory's running kms serve,
// found without waiting for the lock (serveHolds).
var errStoreHeld = errors.New("the key store is held by kms serve")

// heldByServe is the error for the key store at path held by the kms serve of rec; cause is
// the lock timeout, or errStoreHeld when the holder was known at once (its text is then not
// shown).
func heldByServe(rec serveRecord, path string, cause error) error {
	msg := fmt.Sprintf("the key store %s is held by another crkvol process (kms serve at %s)", path, rec.URL)
	var err error = heldError{msg, cause}
	if !errors.Is(cause, errStoreHeld) {
		err = fmt.Errorf("%s: %w", msg, cause)
	}
	return withHint(err, "use the running server: --kms-url "+rec.URL+" with --kms-instance ID and an API key (crkvol kms apikey create)")
}

// heldError is a message that wraps a cause it does not repeat.
type heldError struct {
	msg   string
	cause error
}

func (e heldError) Error() string { return e.msg }
func (e heldError) Unwrap() error { return e.cause }

// serveHolds returns the record of the state directory dir's kms serve when that process is
// alive and the key store at path is locked now, so that a command can say who holds the
// store at once rather than wait for the lock to time out. A store that is not locked, or a
// record of a dead process, reports false: the command opens the store as usual.
func serveHolds(path, dir string) (serveRecord, bool) {
	rec, ok := runningServe(dir)
	if !ok {
		return serveRecord{}, false
	}
	f, err := os.Open(path)
	if err != nil {
		return serveRecord{}, false
	}
	defer f.Close() // releases the probe's lock, if it got one
	// bbolt locks a store it writes with flock(LOCK_EX): a shared lock is refused then.
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
	return rec, errors.Is(err, syscall.EWOULDBLOCK)
}

// refuseServeWhileServed refuses a second kms serve on the state directory dir while the
// directory's kms serve runs and holds its key store, naming that server's URL, as other
// commands do (heldByServe). The error matches errStoreHeld.
func refuseServeWhileServed(dir string) error {
	path := filepath.Join(dir, "crk.db")
	rec, held := serveHolds(path, dir)
	if !held {
		return nil
	}
	return withHint(heldError{fmt.Sprintf("the key store %s is held by another crkvol process (kms serve at %s, process %d)", path, rec.URL, rec.PID), errStoreHeld},
		"kms serve is already serving this state directory at "+rec.URL+": use it, or stop it first")
}

// registryHeld is storeHeld for the volume registry at path.
func registryHeld(err error, path string) error {
	if !errors.Is(err, bolt.ErrTimeout) {
		return err
	}
	return withHint(fmt.Errorf("the volume registry %s is held by another crkvol process: %w", path, bolt.ErrTimeout),
		"try again once the other command (a rotation, a sync, a volume command) has finished")
}
