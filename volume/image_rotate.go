package volume

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// rewrapImage brings the WDEK of the catalog image with CRN crn to version latest of keyID:
// the key service rewraps the stored ciphertext (no AAD: a WDEK is a plain Key Protect
// ciphertext), the catalog entry takes the new one if it still holds the one rewrapped
// (compare and swap: a lazy rewrap or another pass may have stored a newer one meanwhile),
// and the registration is updated. The image file is neither read nor written. A failure
// leaves the old, still valid WDEK in the catalog; a crash between the catalog update and
// the registration update leaves a lagging registration, which a sync finds and brings up
// (the entry is then current and only the registration is written).
func (p *rewrapPass) rewrapImage(crn string) (res rewrapResult, err error) {
	m, ctx, keyID, latest := p.m, p.ctx, p.keyID, p.latest
	var version, lost string
	for round := 1; ; round++ {
		e, err := m.reg.ImageByCRN(crn)
		if err != nil {
			return res, permanent{err}
		}
		if e.KeyID != keyID {
			return res, permanent{fmt.Errorf("image %s (%s) is protected by key %s, not %s", e.Name, crn, e.KeyID, keyID)}
		}
		version = e.KeyVersion
		if (version == latest && latest != "") || (version == lost && lost != "") {
			break
		}
		w, err := p.kms().Rewrap(ctx, keyID, e.WDEK, nil)
		if err == nil {
			err = checkWrapped("rewrap", w)
		}
		if err != nil {
			return res, fmt.Errorf("rewrapping the WDEK of image %s with key %s: %w", e.Name, keyID, err)
		}
		err = m.storeImageWDEK(e, &w)
		if err == nil {
			version, res.changed = w.VersionID, true
			break
		}
		if !errors.Is(err, errImageEntryChanged) {
			return res, err
		}
		if round == maxCASRounds {
			return res, fmt.Errorf("image %s: %w %d times during a rewrap", e.Name, errImageEntryChanged, round)
		}
		lost = w.VersionID
	}
	if err := p.kms().UpdateRegistration(ctx, keyID, crn, version); err != nil {
		return res, fmt.Errorf("updating the registration: %w", err)
	}
	return res, nil
}

// storeImageWDEK replaces the WDEK of catalog image old with w, if the entry still holds
// old's WDEK; errImageEntryChanged if not (the other writer's WDEK is kept).
func (m *Manager) storeImageWDEK(old ImageEntry, w *Wrapped) error {
	if err := checkWrapped("rewrap", *w); err != nil {
		return err
	}
	return m.reg.updateImage(old.Name, old.CRN, func(cur *ImageEntry) error {
		if !bytes.Equal(cur.WDEK, old.WDEK) || cur.KeyID != old.KeyID {
			return errImageEntryChanged
		}
		cur.WDEK = bytes.Clone(w.Ciphertext)
		cur.KeyVersion = w.VersionID
		cur.RewrappedAt = m.opts.Now().UTC().Truncate(time.Second)
		return nil
	})
}

// storeImageRewrapped stores the rewrapped WDEK an unwrap handed back (lazy rewrap) and
// updates the registration. Losing to another writer is not an error: theirs is as new.
func (m *Manager) storeImageRewrapped(ctx context.Context, old ImageEntry, w *Wrapped) error {
	err := m.storeImageWDEK(old, w)
	if errors.Is(err, errImageEntryChanged) {
		return nil
	}
	if err != nil {
		return err
	}
	return m.kms.UpdateRegistration(ctx, old.KeyID, old.CRN, w.VersionID)
}

// repairImageRegistrations registers again, with keyID, every catalog image of keyID that has
// no registration among regs (a registration deleted at the key service by hand or by
// another client, or a key service store restored from a backup older than the import): on
// the version of its WDEK, with
// preventKeyDeletion, so the key cannot be deleted under it and rotations find it again.
// It returns the registrations it made and the images it could not register, by CRN.
func (m *Manager) repairImageRegistrations(ctx context.Context, keyID string, regs []Registration) (made []Registration, failed map[string]error) {
	imgs, err := m.reg.Images()
	if err != nil {
		m.opts.Logger.Warn("reading the image catalog failed", "key", keyID, "err", err)
		return nil, nil
	}
	have := make(map[string]bool, len(regs))
	for _, r := range regs {
		have[r.CRN] = true
	}
	for _, e := range imgs {
		if e.KeyID != keyID || have[e.CRN] {
			continue
		}
		if err := m.kms.Register(ctx, keyID, e.CRN, e.KeyVersion, true); err != nil {
			// An import registering it right now is not a failure.
			if now, _, lerr := m.kms.Registrations(ctx, keyID); lerr == nil && slices.ContainsFunc(now, func(r Registration) bool { return r.CRN == e.CRN }) {
				continue
			}
			if failed == nil {
				failed = map[string]error{}
			}
			failed[e.CRN] = fmt.Errorf("image %s has no registration with key %s and registering it again failed: %w", e.Name, keyID, err)
			continue
		}
		m.opts.Logger.Warn("registered again a catalog image whose registration was missing", "image", e.Name, "crn", e.CRN, "key", keyID, "version", e.KeyVersion)
		made = append(made, Registration{CRN: e.CRN, VersionID: e.KeyVersion})
	}
	return made, failed
}

// unregisteredImages reports whether the catalog has an image of keyID whose CRN is not
// among crns (the stale registrations a rotation names): only then does a rotation pass
// list the key's registrations to repair missing ones.
func (m *Manager) unregisteredImages(keyID string, crns []string) bool {
	imgs, err := m.reg.Images()
	if err != nil {
		return false
	}
	for _, e := range imgs {
		if e.KeyID == keyID && !slices.Contains(crns, e.CRN) {
			return true
		}
	}
	return false
}
