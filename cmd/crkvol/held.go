package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	bolt "go.etcd.io/bbolt"
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
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return nil, fmt.Errorf("recording the server in %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("recording the server in %s: %w", path, err)
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
		return withHint(fmt.Errorf("the key store %s is held by another crkvol process (kms serve at %s): %w", path, rec.URL, bolt.ErrTimeout),
			"use the running server: --kms-url "+rec.URL+" with --kms-instance ID and an API key (crkvol kms apikey create)")
	}
	return withHint(fmt.Errorf("the key store %s is held by another crkvol process (kms serve?): %w", path, bolt.ErrTimeout),
		"if kms serve is running on this state directory, use it with --kms-url URL; otherwise try again once the other command has finished")
}

// registryHeld is storeHeld for the volume registry at path.
func registryHeld(err error, path string) error {
	if !errors.Is(err, bolt.ErrTimeout) {
		return err
	}
	return withHint(fmt.Errorf("the volume registry %s is held by another crkvol process: %w", path, bolt.ErrTimeout),
		"try again once the other command (a rotation, a sync, a volume command) has finished")
}
