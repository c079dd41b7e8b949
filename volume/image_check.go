package volume

import (
	"context"
	"fmt"
)

// HashImageFile returns the hex SHA-256 of the whole file at path, as [ImageEntry.SHA256]
// records an image file's at import.
func HashImageFile(ctx context.Context, path string) (string, error) {
	fh, fi, err := openCatalogFile(path)
	if err != nil {
		return "", fmt.Errorf("volume: hashing %s: %w", path, err)
	}
	defer fh.Close()
	sum, err := hashFile(ctx, fh, fi.Size())
	if err != nil {
		return "", fmt.Errorf("volume: hashing %s: %w", path, err)
	}
	return sum, nil
}

// UnlockImage checks that the WDEK of catalog image e unwraps with e's key through ks and
// that the passphrase unlocks the LUKS header inside e's file, as [Manager.ImportImage]
// checks before it accepts an image. It reads the qcow2 metadata and the LUKS header only:
// neither the guest data nor the file's digest ([Manager.VerifyImage] checks that). The
// unwrapped passphrase and the master key are wiped on every path; a rewrapped WDEK the key
// service may return is not stored.
func UnlockImage(ctx context.Context, ks KeyService, e ImageEntry) error {
	u, err := ks.Unwrap(ctx, e.KeyID, e.WDEK, nil)
	defer clear(u.Plaintext)
	if err == nil && len(u.Plaintext) == 0 {
		err = fmt.Errorf("%w: the unwrap answer has no plaintext", ErrIncompleteAnswer)
	}
	if err != nil {
		return fmt.Errorf("volume: image %s: unwrapping its WDEK with key %s: %w", e.Name, e.KeyID, err)
	}
	fh, fi, err := openCatalogFile(e.Path)
	if err != nil {
		return fmt.Errorf("volume: image %s: opening %s: %w", e.Name, e.Path, err)
	}
	defer fh.Close()
	qi, err := openEncryptedQcow2(fh, fi.Size())
	if err != nil {
		return fmt.Errorf("volume: image %s: %w", e.Name, err)
	}
	_, mk, _, err := unlockQcow2(ctx, qi, u.Plaintext, e.Keyslot)
	clear(mk)
	if err != nil {
		return fmt.Errorf("volume: image %s: its WDEK does not unlock its LUKS header: %w", e.Name, err)
	}
	return nil
}
