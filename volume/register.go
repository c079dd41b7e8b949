package volume

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// RegisterOptions tune [Manager.Reregister].
type RegisterOptions struct {
	// Force takes the registration over even when the registered path still holds the
	// registered file or another valid image of the volume. That image becomes an
	// unregistered copy: it opens read-only and is no longer rewrapped, so after the next
	// rotation and a prune it may no longer open at all.
	Force bool
}

// RegisterResult describes a re-registration.
type RegisterResult struct {
	// Entry is the volume's registry entry now; Previous the one it replaced.
	Entry, Previous Entry
	// Forced says the registered path still held the volume and RegisterOptions.Force
	// overrode that.
	Forced bool
	// Unchanged says the image was the registered image already (its file identity was
	// recorded if the entry lacked it).
	Unchanged bool
}

// Reregister makes the image at path the registered image of its volume: a moved image, or
// one restored from a backup, takes over the registration, so that rotations reach it
// there. It is refused with ErrStillRegistered, naming the registered path, while that path
// still holds the registered file (the same device and inode) or another valid image of the
// volume, unless opts.Force. The volume must be in the registry (ErrNotRegistered
// otherwise: create and adopt register new volumes). The key service's registration is the
// volume's CRN and does not change; the image's token is not touched (a sync brings a
// restored image whose token lags to the latest key version).
func (m *Manager) Reregister(ctx context.Context, path string, opts RegisterOptions) (*RegisterResult, error) {
	resolved, err := resolvePath(path)
	if err != nil {
		return nil, fmt.Errorf("volume: register %s: %w", path, err)
	}
	f, img, err := openImage(ctx, resolved)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	_, tok, err := findToken(img)
	if err != nil {
		return nil, fmt.Errorf("volume: register %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("volume: register %s: %w", path, err)
	}
	e, err := m.reg.Get(tok.VolumeCRN)
	if err != nil {
		return nil, fmt.Errorf("volume: register %s: %w (volume create or adopt registers a new volume)", path, err)
	}
	if e.KeyID != tok.KeyID {
		return nil, fmt.Errorf("volume: register %s: %w: the image is protected by key %s, the registration by key %s", path, ErrNotRegisteredImage, tok.KeyID, e.KeyID)
	}
	res := &RegisterResult{Previous: e}
	r, err := m.registrationOf(resolved, fi, tok.VolumeCRN)
	switch {
	case err == nil:
		// The registered image already (by path and identity, or by path for an old entry).
		m.fillIdentity(r)
		res.Entry, res.Unchanged = e.withIdentity(resolved, fi), true
		return res, nil
	case !errors.Is(err, ErrNotRegisteredImage):
		return nil, fmt.Errorf("volume: register %s: %w", path, err)
	}
	// At the registered path, another file than the registered one: the registered file is
	// gone from there, and this image replaced it. Elsewhere: the registered path must no
	// longer hold the volume.
	if !samePath(e.Path, resolved) {
		if why := m.stillHeld(ctx, e, fi); why != "" {
			if !opts.Force {
				return nil, fmt.Errorf("volume: register %s: %w: %s %s; that image stays the volume (give this one its own identity with volume reidentify, or override with force)",
					path, ErrStillRegistered, e.Path, why)
			}
			m.opts.Logger.Warn("registration taken over by force: the image at the registered path becomes an unregistered copy",
				"crn", e.CRN, "was", e.Path, "now", resolved, "reason", why)
			res.Forced = true
		}
	}
	res.Entry = e.withIdentity(resolved, fi)
	if err := m.reg.Put(res.Entry); err != nil {
		return nil, fmt.Errorf("volume: register %s: %w", path, err)
	}
	m.opts.Logger.Info("volume re-registered", "crn", e.CRN, "was", e.Path, "now", resolved)
	return res, nil
}

// stillHeld says why the registered path of e still holds the volume ("" if it does not):
// the registered file is there (same identity as recorded, or as img, the image being
// registered, for a hard link), or a valid image with the volume's UUID.
func (m *Manager) stillHeld(ctx context.Context, e Entry, img os.FileInfo) string {
	fi, err := os.Stat(e.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return ""
	}
	if err != nil {
		return fmt.Sprintf("cannot be checked (%v)", err)
	}
	id, hasID := idOf(fi)
	if imgID, ok := idOf(img); hasID && ok && id == imgID {
		return "is the same file (a hard link)"
	}
	if e.hasIdentity() && hasID && id == e.id() {
		return "still holds the registered file"
	}
	if info, err := describe(ctx, e.Path); err == nil && info.UUID == e.UUID {
		return "holds another valid image of this volume"
	}
	return ""
}
