package volume

import (
	"context"
	"fmt"
	"slices"
)

// DeleteImage removes the image called name from the catalog and its registration from its
// key (so the key may be deleted once nothing else uses it). The image file is never
// touched. The registration goes first: a crash between the two steps leaves a catalog entry
// without a registration, which DeleteImage, run again, removes (a registration already gone
// is not an error); the other order could leave a registration pinning the key with no
// catalog entry to find it by.
func (m *Manager) DeleteImage(ctx context.Context, name string) error {
	e, err := m.reg.Image(name)
	if err != nil {
		return fmt.Errorf("volume: delete image %s: %w", name, err)
	}
	if err := m.kms.DeleteRegistration(ctx, e.KeyID, e.CRN); err != nil {
		// Already gone (an earlier DeleteImage stopped after this step)?
		regs, _, lerr := m.kms.Registrations(ctx, e.KeyID)
		if lerr != nil || slices.ContainsFunc(regs, func(r Registration) bool { return r.CRN == e.CRN }) {
			return fmt.Errorf("volume: delete image %s: deregistering %s from key %s: %w", name, e.CRN, e.KeyID, err)
		}
	}
	if err := m.reg.deleteImage(e.Name, e.CRN); err != nil {
		return fmt.Errorf("volume: delete image %s: %w", name, err)
	}
	m.opts.Logger.Info("image deleted", "name", name, "crn", e.CRN, "key", e.KeyID)
	return nil
}
