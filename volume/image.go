package volume

import (
	"context"
	"crkvol/internal/ident"
	"errors"
	"fmt"
	"slices"
)

// ErrImageInCatalog refuses to remove only the registration of an image still in the
// catalog: [Manager.DeleteImage] removes both.
var ErrImageInCatalog = errors.New("the image is in the catalog")

// DeleteImage removes the image called name (or whose CRN is name) from the catalog and its
// registration from its key (so the key may be deleted once nothing else uses it). The image
// file is never touched. The catalog entry goes first, then the registration: a crash
// between the two steps (or an import that crashed between registering the image and
// storing its entry) leaves a registration with no catalog entry, which keeps the key from
// being deleted (the safe side) and is listed with the key's registrations;
// [Manager.DeleteImageRegistration] (crkvol image delete CRN --key KEY) removes it. The other
// order could leave an entry whose key is not protected. (A catalog entry found without a
// registration, however it came about, is registered again by the next sync or rotation of
// its key.)
func (m *Manager) DeleteImage(ctx context.Context, name string) error {
	var e ImageEntry
	var err error
	if ident.IsImageCRN(name) {
		e, err = m.reg.ImageByCRN(name)
		if errors.Is(err, ErrImageNotFound) {
			err = fmt.Errorf("%w (a registration of it left without a catalog entry is removed with its key: crkvol image delete %s --key KEY)", err, name)
		}
	} else {
		e, err = m.reg.Image(name)
	}
	if err != nil {
		return fmt.Errorf("volume: delete image %s: %w", name, err)
	}
	if err := m.reg.deleteImage(e.Name, e.CRN); err != nil {
		return fmt.Errorf("volume: delete image %s: %w", name, err)
	}
	if err := m.kms.DeleteRegistration(ctx, e.KeyID, e.CRN); err != nil {
		// Already gone is not an error.
		regs, _, lerr := m.kms.Registrations(ctx, e.KeyID)
		if lerr != nil || slices.ContainsFunc(regs, func(r Registration) bool { return r.CRN == e.CRN }) {
			return fmt.Errorf("volume: delete image %s: removed from the catalog, but deregistering %s from key %s failed (the registration keeps the key from being deleted; remove it with crkvol image delete %s --key %s): %w",
				name, e.CRN, e.KeyID, e.CRN, e.KeyID, err)
		}
	}
	m.opts.Logger.Info("image deleted", "name", e.Name, "crn", e.CRN, "key", e.KeyID)
	return nil
}

// DeleteImageRegistration removes the registration of image CRN crn from key keyID when the
// catalog has no entry for it: the stray registration a crash can leave (see
// [Manager.DeleteImage]), which would otherwise keep the key from being deleted forever. It
// is refused for a CRN that is not an image's, and with ErrImageInCatalog for an image still
// in the catalog. A registration already gone is not an error.
func (m *Manager) DeleteImageRegistration(ctx context.Context, keyID, crn string) error {
	if !ident.IsImageCRN(crn) {
		return fmt.Errorf("volume: delete image registration %s: not an image CRN", crn)
	}
	if keyID == "" {
		return fmt.Errorf("volume: delete image registration %s: a root key id is required", crn)
	}
	if e, err := m.reg.ImageByCRN(crn); err == nil {
		return fmt.Errorf("volume: delete image registration %s: %w as %s (delete the image, not only its registration)", crn, ErrImageInCatalog, e.Name)
	} else if !errors.Is(err, ErrImageNotFound) {
		return fmt.Errorf("volume: delete image registration %s: %w", crn, err)
	}
	if err := m.kms.DeleteRegistration(ctx, keyID, crn); err != nil {
		regs, _, lerr := m.kms.Registrations(ctx, keyID)
		if lerr != nil || slices.ContainsFunc(regs, func(r Registration) bool { return r.CRN == crn }) {
			return fmt.Errorf("volume: delete image registration %s from key %s: %w", crn, keyID, err)
		}
	}
	m.opts.Logger.Info("stray image registration deleted", "crn", crn, "key", keyID)
	return nil
}
