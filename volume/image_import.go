package volume

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	"crkvol/internal/ident"
	"crkvol/keyslot"
	"crkvol/qcow2"
)

// ErrImageNotEncrypted means a qcow2 image given to the catalog is not encrypted with LUKS:
// the catalog holds only encrypted images (an unencrypted one needs no key).
var ErrImageNotEncrypted = errors.New("qcow2 image is not encrypted")

// ImportOptions describe an image to import into the catalog.
type ImportOptions struct {
	// Name is the image's name in the catalog (see [CheckImageName]). Required.
	Name string
	// KeyID is the root key the passphrase is wrapped with. Required.
	KeyID string
	// WDEK is the image's LUKS passphrase wrapped by KeyID with no AAD (binary, as
	// `ibmcloud kp key wrap` returns it, base64-decoded). Passphrase is the passphrase
	// itself, which ImportImage wraps. Exactly one of them is required; the passphrase is
	// never stored.
	WDEK       []byte
	Passphrase []byte
}

// ImportImage adds the encrypted qcow2 image at path to the catalog as opts.Name. The image
// must be a qcow2 file encrypted with QEMU's LUKS (encrypt.format=luks), and the passphrase
// must open its LUKS header: with a WDEK, the key service must unwrap it with opts.KeyID
// (another key's WDEK, a damaged or made-up one is refused, wrapping the service's error,
// which matches ErrKeyRefused) and the plaintext must unlock a keyslot; with a passphrase,
// it must unlock a keyslot and is then wrapped with opts.KeyID. The catalog keeps the WDEK
// (rewrapped to the key's latest version if the key service hands one back), the file's
// path, identity, size, modification time and SHA-256, and the image's geometry; the image
// gets a CRN (ident.ImageCRN of a random UUID) registered with the key with
// preventKeyDeletion, so the key cannot be deleted while the image is in the catalog. The
// file is only read.
//
// The registration is made before the catalog entry and removed again if storing the entry
// fails. A crash between the two leaves a registration without an entry: it keeps the key
// from being deleted (the safe side) and is listed with the key's registrations;
// [Manager.DeleteImageRegistration] (crkvol image delete CRN --key KEY) removes it. The other
// order could leave an entry whose key is not protected.
func (m *Manager) ImportImage(ctx context.Context, path string, opts ImportOptions) (_ *ImageEntry, err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("volume: import %s: %w", path, err)
		}
	}()
	if err := CheckImageName(opts.Name); err != nil {
		return nil, err
	}
	if opts.KeyID == "" {
		return nil, errors.New("a root key id is required")
	}
	if (len(opts.WDEK) == 0) == (len(opts.Passphrase) == 0) {
		return nil, errors.New("give exactly one of a WDEK and a passphrase")
	}
	if _, err := m.reg.Image(opts.Name); err == nil {
		return nil, fmt.Errorf("%w: %s", ErrImageExists, opts.Name)
	} else if !errors.Is(err, ErrImageNotFound) {
		return nil, err
	}
	resolved, err := resolvePath(path)
	if err != nil {
		return nil, err
	}
	fh, fi, err := openCatalogFile(resolved)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	before := stateOf(fi)
	qi, err := openEncryptedQcow2(fh, fi.Size())
	if err != nil {
		return nil, err
	}
	if qi.Size() == 0 {
		return nil, fmt.Errorf("%w: the image's guest size is 0 (no volume can be made of it)", ErrBadSize)
	}

	// The passphrase, and the WDEK to store.
	var pass []byte
	var wdek Wrapped
	if len(opts.WDEK) > 0 {
		u, err := m.kms.Unwrap(ctx, opts.KeyID, opts.WDEK, nil)
		if err == nil && len(u.Plaintext) == 0 {
			err = fmt.Errorf("%w: the unwrap answer has no plaintext", ErrIncompleteAnswer)
		}
		if err == nil && u.VersionID == "" {
			err = fmt.Errorf("%w: the unwrap answer has no key version", ErrIncompleteAnswer)
		}
		if err != nil {
			clear(u.Plaintext)
			return nil, fmt.Errorf("the WDEK does not unwrap with key %s: %w", opts.KeyID, err)
		}
		pass = u.Plaintext
		wdek = Wrapped{Ciphertext: opts.WDEK, VersionID: u.VersionID}
		if u.Rewrapped != nil && checkWrapped("unwrap's rewrapped", *u.Rewrapped) == nil {
			wdek = *u.Rewrapped
		}
	} else {
		pass = append([]byte(nil), opts.Passphrase...)
	}
	defer clear(pass)
	if err := checkImagePassphrase(pass); err != nil {
		return nil, err // QEMU could not have encrypted the image with it
	}

	hdr, mk, slot, err := unlockQcow2(ctx, qi, pass, -1)
	clear(mk) // the import only checks that the passphrase opens the header
	if errors.Is(err, keyslot.ErrLUKS1Passphrase) {
		if len(opts.WDEK) > 0 {
			return nil, fmt.Errorf("the WDEK unwraps with key %s but does not unlock %s's LUKS header: %w", opts.KeyID, path, err)
		}
		return nil, fmt.Errorf("the passphrase does not unlock %s's LUKS header: %w", path, err)
	}
	if err != nil {
		return nil, err
	}
	if len(opts.Passphrase) > 0 {
		w, err := m.kms.Wrap(ctx, opts.KeyID, pass, nil)
		if err == nil {
			err = checkWrapped("wrap", w)
		}
		if err != nil {
			return nil, fmt.Errorf("wrapping the passphrase with key %s: %w", opts.KeyID, err)
		}
		wdek = w
	}

	sum, err := hashFile(ctx, fh, fi.Size())
	if err != nil {
		return nil, err
	}
	// The file must not have changed since it was opened: not while its header was checked,
	// nor while it was hashed (the change time moves with every write, even one whose writer
	// sets the modification time back).
	after, err := statFile(fh)
	if err != nil {
		return nil, err
	}
	if err := changedSince(resolved, "it was imported", before, after); err != nil {
		return nil, err
	}
	uuid, err := ident.NewUUID(m.opts.Rand)
	if err != nil {
		return nil, err
	}
	e := ImageEntry{
		Name: opts.Name, CRN: ident.ImageCRN(uuid).String(), UUID: uuid, Path: resolved,
		KeyID: opts.KeyID, KeyVersion: wdek.VersionID, WDEK: append([]byte(nil), wdek.Ciphertext...),
		Size: qi.Size(), FileSize: fi.Size(), SHA256: sum, ModTime: fi.ModTime().UTC(), CTime: before.ctime, Keyslot: slot,
		ClusterSize: qi.ClusterSize(), QcowVersion: qi.Version(),
		Cipher:  fmt.Sprintf("%s-%s, %d-bit key, %s", hdr.CipherName, hdr.CipherMode, hdr.KeyBytes*8, hdr.HashSpec),
		Created: m.opts.Now().UTC().Truncate(time.Second),
	}
	if id, ok := idOf(fi); ok {
		e.Device, e.Inode = id.dev, id.ino
	}
	if err := m.kms.Register(ctx, opts.KeyID, e.CRN, e.KeyVersion, true); err != nil {
		return nil, fmt.Errorf("registering %s with key %s: %w", e.CRN, opts.KeyID, err)
	}
	if err := m.reg.addImage(e); err != nil {
		if derr := m.kms.DeleteRegistration(context.WithoutCancel(ctx), opts.KeyID, e.CRN); derr != nil {
			m.opts.Logger.Warn("undoing a failed import: deregistering failed", "crn", e.CRN, "err", derr)
		}
		return nil, err
	}
	m.opts.Logger.Info("image imported", "name", e.Name, "crn", e.CRN, "path", e.Path, "key", e.KeyID)
	// A rotation between the wrap (or unwrap) and the registration found no registration (or
	// no catalog entry) of the image and left it out: if the key has a newer version than the
	// WDEK's now, bring the WDEK to it (a failure leaves the old, still valid WDEK; a sync or
	// the next rotation retries).
	if _, latest, err := m.kms.Registrations(ctx, opts.KeyID); err != nil {
		m.opts.Logger.Warn("import: reading the key's latest version failed", "key", opts.KeyID, "err", err)
	} else if latest != "" && latest != e.KeyVersion {
		if _, err := m.newPass(ctx, opts.KeyID, latest).rewrapImage(e.CRN); err != nil {
			m.opts.Logger.Warn("import: rewrapping the WDEK to the key's latest version failed", "image", e.Name, "crn", e.CRN, "err", err)
		}
		if cur, err := m.reg.Image(e.Name); err == nil && cur.CRN == e.CRN {
			e = cur
		}
	}
	return &e, nil
}

// openEncryptedQcow2 opens the qcow2 image in r (size bytes) and checks that it is
// encrypted.
func openEncryptedQcow2(r io.ReaderAt, size int64) (*qcow2.Image, error) {
	qi, err := qcow2.Open(r, size, qcow2.Options{})
	if err != nil {
		return nil, err
	}
	if !qi.Encrypted() {
		return nil, ErrImageNotEncrypted // the catalog holds only images encrypted with encrypt.format=luks
	}
	return qi, nil
}

// unlockQcow2 parses the LUKS1 header of an encrypted qcow2 image and unlocks it with pass:
// it returns the header, the master key (which the caller clears) and the keyslot that
// opened. A slot >= 0 is tried first (the one that opened at import); the others only if it
// does not open. On error no key is returned.
func unlockQcow2(ctx context.Context, qi *qcow2.Image, pass []byte, slot int) (*keyslot.LUKS1, []byte, int, error) {
	area := qi.EncryptionHeader()
	hdr, err := keyslot.ParseLUKS1(area, area.Size())
	if err != nil {
		return nil, nil, -1, fmt.Errorf("the image's LUKS header: %w", err)
	}
	if slot >= 0 && slot < len(hdr.Slots) && hdr.Slots[slot].Active {
		mk, err := hdr.UnlockSlot(ctx, area, pass, slot)
		if err == nil {
			return hdr, mk, slot, nil
		}
		clear(mk)
		if !errors.Is(err, keyslot.ErrLUKS1Passphrase) {
			return hdr, nil, -1, err
		}
	}
	mk, got, err := hdr.Unlock(ctx, area, pass)
	if err != nil {
		clear(mk)
		return hdr, nil, -1, err
	}
	return hdr, mk, got, nil
}

// hashFile returns the hex SHA-256 of the first size bytes of r, checking ctx as it goes.
func hashFile(ctx context.Context, r io.ReaderAt, size int64) (string, error) {
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		n := int(min(int64(len(buf)), size-off))
		if _, err := r.ReadAt(buf[:n], off); err != nil {
			return "", fmt.Errorf("reading the image: %w", err)
		}
		h.Write(buf[:n])
		off += int64(n)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
