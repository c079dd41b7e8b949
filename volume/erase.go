package volume

import (
	"context"
	"errors"
	"fmt"
)

// EraseOptions tune [Manager.Erase].
type EraseOptions struct {
	// Force erases the registered image of a volume too, and then deregisters it (as
	// Delete with CryptoErase and without RemoveImage does).
	Force bool
}

// Erase crypto-erases an image that is not the registered image of a volume: a copy, or an
// image whose registration is gone (cryptsetup luksErase). Every keyslot's area is
// overwritten with random bytes and every keyslot removed from both header copies, so no
// passphrase opens the image any more and its volume key cannot be recovered from it; the
// header and the data area stay (the data is unreadable ciphertext). The crkvol-crk token
// stays, naming no keyslot, so opening the image says it was erased. The key service and the
// registry are not touched: a copy's registration is its original's.
//
// The registered image of a volume is refused with ErrRegisteredImage (use [Manager.Delete]
// with CryptoErase), unless opts.Force. An image attached or open for writing elsewhere is
// refused with ErrInUse.
func (m *Manager) Erase(ctx context.Context, path string, opts EraseOptions) error {
	f, img, err := openImage(ctx, path)
	if err != nil {
		return err
	}
	defer closeImage(f)
	if err := lockImage(f, img, OpenOptions{}); err != nil {
		return fmt.Errorf("volume: erase %s: %w", path, err)
	}
	r, err := m.imageRegistration(path, f, img)
	registered := r.isVolume() // the registered file, whatever path reached it
	switch {
	case err != nil && !errors.Is(err, ErrNotRegisteredImage):
		return fmt.Errorf("volume: erase %s: %w", path, err)
	case registered && !opts.Force:
		return fmt.Errorf("volume: erase %s: %w %s (registered at %s); use volume delete (with its erase option) to crypto-erase and deregister it", path, ErrRegisteredImage, r.entry.CRN, r.entry.Path)
	}
	if err := img.Erase(); err != nil {
		return fmt.Errorf("volume: erase %s: %w", path, err)
	}
	m.opts.Logger.Info("image crypto-erased", "path", path, "registered", registered)
	if registered {
		return m.deregister(ctx, r.entry.KeyID, r.entry.CRN, path)
	}
	return nil
}
