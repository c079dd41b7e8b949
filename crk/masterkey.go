package crk

import (
	"bytes"
	"context"
	"crkvol/internal/fsutil"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// masterKeyError is an [ErrMasterKey] whose text says what is wrong with the master key
// itself (missing, of the wrong size, readable by others), so that only a key that really
// does not open the store is reported as not matching it.
type masterKeyError struct {
	msg   string
	cause error // what the text says, when it comes from an error (see Unwrap)
}

func (e masterKeyError) Error() string { return "crk: " + e.msg }

// Unwrap returns the error the text was made from, if any.
func (e masterKeyError) Unwrap() error { return e.cause }

// Is makes the error match ErrMasterKey.
func (e masterKeyError) Is(target error) bool { return target == ErrMasterKey }

func masterKeyErrorf(format string, args ...any) error {
	return masterKeyError{msg: fmt.Sprintf(format, args...)}
}

// loadMasterKey returns the master key from the options or the key file
// opts.MasterKeyFile, and the key file path if one is used. The key file is made with a
// random key when it does not exist, unless the store (named store in errors) exists: its
// data is sealed under a key that is lost, not to be replaced.
func loadMasterKey(opts Options, storeExists bool, store string) ([]byte, string, error) {
	if opts.MasterKey != nil {
		if len(opts.MasterKey) != 32 {
			return nil, "", masterKeyErrorf("the master key is %d bytes, want 32", len(opts.MasterKey))
		}
		return opts.MasterKey, "", nil
	}
	file := opts.MasterKeyFile
	// A key file in a directory others can write could be one they planted, or a link they
	// placed where the new key is about to be written.
	if err := fsutil.CheckPrivate(filepath.Dir(file)); err != nil {
		return nil, "", masterKeyError{msg: fmt.Sprintf("master key file %s: %v", file, err), cause: err}
	}
	k, err := readKeyFile(file)
	if err == nil {
		return k, file, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, "", err
	}
	if storeExists {
		return nil, "", masterKeyErrorf("store %s exists but its master key file %s does not", store, file)
	}
	if opts.ReadOnly {
		return nil, "", fmt.Errorf("crk: opening store %s read-only: %w", store, fs.ErrNotExist)
	}
	rnd := opts.Rand
	if rnd == nil {
		rnd = rand.Reader
	}
	k = make([]byte, 32)
	if _, err := io.ReadFull(rnd, k); err != nil {
		return nil, "", fmt.Errorf("crk: reading random master key: %w", err)
	}
	if err := writeKeyFile(file, k); err != nil {
		return nil, "", err
	}
	return k, file, nil
}

// readKeyFile reads a base64 master key file, refusing one readable by others.
func readKeyFile(file string) ([]byte, error) {
	st, err := os.Stat(file)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, masterKeyErrorf("master key file %s has mode %v; it must be 0600 (readable by its owner only)", file, st.Mode().Perm())
	}
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	k, err := base64.StdEncoding.DecodeString(string(trimNewline(raw)))
	if err != nil || len(k) != 32 {
		return nil, masterKeyErrorf("master key file %s does not hold 32 bytes of base64", file)
	}
	return k, nil
}

// writeKeyFile writes a master key file atomically with mode 0600 (fsutil.WriteFileAtomic:
// never through a file or link someone placed beside it).
func writeKeyFile(file string, k []byte) error {
	if err := fsutil.WriteFileAtomic(file, []byte(base64.StdEncoding.EncodeToString(k)+"\n")); err != nil {
		return fmt.Errorf("crk: key file: %w", err)
	}
	return nil
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	if err := fsutil.SyncDir(dir); err != nil {
		return fmt.Errorf("crk: %w", err)
	}
	return nil
}

func trimNewline(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// RotateMasterKey re-encrypts all key material under a new service master key in one
// transaction. On a PostgreSQL store it is refused (ErrInvalidArgument) when another instance
// of the database uses the same master key: only this instance's material would be
// re-encrypted, and the other's would be lost with the old key. With newKey nil a random key is made; that requires a key file, which is then
// replaced (a crash at any point leaves a store that opens with the old or the new file). When
// the master key came from Options, pass the new key and update its source after this
// returns.
func (s *Service) RotateMasterKey(ctx context.Context, newKey []byte) error {
	if newKey == nil {
		if s.keyFile == "" {
			return s.refuse(ctx, ActionMasterKeyRotate, "", fmt.Errorf("%w: the master key was given directly; pass the new key", ErrInvalidArgument))
		}
		newKey = make([]byte, 32)
		if _, err := io.ReadFull(s.rand, newKey); err != nil {
			return fmt.Errorf("crk: reading random master key: %w", err)
		}
	}
	next, err := newSealer(newKey)
	if err != nil {
		return s.refuse(ctx, ActionMasterKeyRotate, "", err)
	}
	// Exclusive from here: no seal or open is in flight, and concurrent master key
	// rotations cannot interleave their key files.
	s.mkMu.Lock()
	defer s.mkMu.Unlock()
	if s.keyFile != "" {
		if err := writeKeyFile(s.keyFile+".new", newKey); err != nil {
			return err
		}
	}
	n := 0
	var check []byte
	err = s.update(ctx, func(tx storeTx) error {
		n = 0
		// The instance row first (as every transaction that writes locks it, after its
		// key): a key created by another process meanwhile is then either committed and
		// read below, or waits for this rotation and is refused for its old key.
		instance, _, err := tx.meta()
		if err != nil {
			return err
		}
		// Every key is read locked (another process may change one meanwhile) before any
		// is written back: a bbolt bucket cannot change while it is iterated.
		var all []*keyRecord
		if err := tx.keys(true, func(r *keyRecord) error { all = append(all, r); return nil }); err != nil {
			return err
		}
		if err := s.soleUserOfMasterKey(tx); err != nil {
			return err
		}
		for _, r := range all {
			for i := range r.Versions {
				v := &r.Versions[i]
				if v.Material == nil {
					continue
				}
				aad := materialAAD(r.ID, v.ID)
				m, err := s.sealer.open(v.Material, aad)
				if err != nil {
					return err
				}
				v.Material, err = next.seal(s.rand, m, aad)
				clear(m)
				if err != nil {
					return err
				}
				n++
			}
			if err := tx.putKey(r); err != nil {
				return err
			}
		}
		docs, err := resealDocs(tx, s.sealer, next, s.rand)
		if err != nil {
			return err
		}
		if err := s.sameMasterKey(tx); err != nil {
			return err
		}
		check, err = next.seal(s.rand, []byte(checkText), nil)
		if err != nil {
			return err
		}
		if err := tx.setMeta(instance, check); err != nil {
			return err
		}
		ev := s.newEvent(ctx, ActionMasterKeyRotate, nil, "", nil)
		ev.Reason = fmt.Sprintf("re-encrypted %d versions", n)
		if docs > 0 {
			ev.Reason += fmt.Sprintf(" and the secrets of %d documents", docs)
		}
		return s.appendEvent(tx, ev)
	})
	if err != nil {
		if s.keyFile != "" {
			_ = os.Remove(s.keyFile + ".new")
		}
		return s.refuse(ctx, ActionMasterKeyRotate, "", err)
	}
	s.sealer, s.check = next, check
	s.aeads.clear() // every version's material is sealed anew
	if s.keyFile != "" {
		if err := os.Rename(s.keyFile+".new", s.keyFile); err != nil {
			return fmt.Errorf("crk: the store now uses the new master key in %s.new, but renaming it failed: %w", s.keyFile, err)
		}
		return syncDir(filepath.Dir(s.keyFile))
	}
	return nil
}

// sameMasterKey refuses a transaction that seals material when the store's master key is no
// longer the one this service opened it with: another process sharing a PostgreSQL store
// rotated it. Material sealed under the old key would be lost to the processes using the new
// one. The caller holds mkMu (read).
func (s *Service) sameMasterKey(tx storeTx) error {
	_, check, err := tx.meta()
	if err != nil {
		return err
	}
	if !bytes.Equal(check, s.check) {
		return fmt.Errorf("%w: the store's master key was rotated by another process since this one opened it; restart this process with the new master key", ErrMasterKey)
	}
	return nil
}

// soleUserOfMasterKey refuses a master key rotation on a PostgreSQL store when other
// instances of the database use the service's master key (their check value opens with it):
// the rotation re-encrypts this instance's material only, and the new key file would leave
// theirs unreadable. The caller holds mkMu.
func (s *Service) soleUserOfMasterKey(tx storeTx) error {
	pt, ok := tx.(*pgTx)
	if !ok {
		return nil // a bbolt store holds one instance
	}
	others, err := pt.otherInstances()
	if err != nil {
		return err
	}
	var sharing []string
	for _, o := range others {
		if _, err := s.sealer.open(o.check, nil); err == nil {
			sharing = append(sharing, o.id)
		}
	}
	if len(sharing) > 0 {
		return fmt.Errorf("%w: the master key of instance %s cannot be rotated: instance(s) %s of the same PostgreSQL database use it too, and rotating it for one instance would leave the key material of the others unreadable; keep the current master key", ErrInvalidArgument, s.instance, strings.Join(sharing, ", "))
	}
	return nil
}
