package volume

import (
	"context"
	"fmt"
	"slices"
)

// DeleteImage removes the image called name from the catalog and its registration from its
// key (so the key may be deleted once nothing else uses it). The image file is never
// touched. The catalog entry goes first: a crash between the two steps leaves a registration
// with no catalog entry, which keeps the key from being deleted (the safe side) and is listed
// with the key's registrations, from where it can be deleted; the other order could leave an
// entry whose key is not protected. (A catalog entry found without a registration, however
// it came about, is registered again by the next sync or rotation of its key.)
func (m *Manager) DeleteImage(ctx context.Context, name string) error {
	e, err := m.reg.Image(name)
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
			return fmt.Errorf("volume: delete image %s: removed from the catalog, but deregistering %s from key %s failed (the registration keeps the key from being deleted; delete it with the key's registrations): %w",
				name, e.CRN, e.KeyID, err)
		}
	}
	m.opts.Logger.Info("image deleted", "name", name, "crn", e.CRN, "key", e.KeyID)
	return nil
}
