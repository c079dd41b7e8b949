package volume

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"crkvol/keyslot"
)

// Errors of image identity.
var (
	// ErrNotRegisteredImage means an image carries the UUID and token of a registered volume
	// but is not the registered image: another file (a byte copy, a restored backup, a moved
	// image) than the one at the registered path with the registered file identity.
	// Operations that change the registration or the token refuse it; it still opens
	// read-only.
	ErrNotRegisteredImage = errors.New("not the registered image of this volume")
	// ErrRegisteredImage means an operation meant for copies and images whose registration
	// is gone (Erase, Reidentify) was asked to act on the registered image of a volume.
	ErrRegisteredImage = errors.New("image is the registered image of its volume")
	// ErrStillRegistered means Reregister was refused because the registered path still
	// holds the registered file, or another valid image of the volume.
	ErrStillRegistered = errors.New("the registered path still holds the volume")
)

// CopyOf reports whether the volume was opened from an unregistered copy of a registered
// volume, and the registered image's path. A copy opens read-only only and is never
// rewrapped.
func (v *Volume) CopyOf() (registeredPath string, ok bool) {
	return v.copyOf, v.copyOf != ""
}

// fileID is a file's identity: its device and inode numbers.
type fileID struct{ dev, ino uint64 }

// idOf returns the identity of a stat result; ok is false where the platform has none.
func idOf(fi os.FileInfo) (id fileID, ok bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, false
	}
	return fileID{dev: uint64(st.Dev), ino: st.Ino}, true
}

// hasIdentity reports whether the entry records its image's file identity; entries written
// before crkvol recorded it match by path only until the next registration change fills it.
func (e Entry) hasIdentity() bool { return e.Inode != 0 }

// id returns the recorded identity of the entry's image.
func (e Entry) id() fileID { return fileID{dev: e.Device, ino: e.Inode} }

// withIdentity returns e naming the image at the resolved path with identity fi.
func (e Entry) withIdentity(path string, fi os.FileInfo) Entry {
	e.Path = path
	if id, ok := idOf(fi); ok {
		e.Device, e.Inode = id.dev, id.ino
	}
	return e
}

// resolvePath returns the absolute path of p with every symbolic link resolved. A path
// whose file does not exist resolves its directory and keeps its base name.
func resolvePath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	r, err := filepath.EvalSymlinks(abs)
	if err == nil {
		return r, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	dir, derr := filepath.EvalSymlinks(filepath.Dir(abs))
	if derr != nil {
		return abs, nil
	}
	return filepath.Join(dir, filepath.Base(abs)), nil
}

// samePath reports whether the registered path reg (resolved when it was registered, or
// only absolute in older registries) names the resolved path p.
func samePath(reg, p string) bool {
	if reg == p {
		return true
	}
	r, err := resolvePath(reg)
	return err == nil && r == p
}

// registration is how an image relates to the registry entry of its volume.
type registration struct {
	// entry is the volume's registry entry; known is false when the registry has none.
	entry Entry
	known bool
	// path is the image's resolved path; fi its stat.
	path string
	fi   os.FileInfo
	// fill says the entry lacks the file identity and the image is the registered one: the
	// next registration change records it.
	fill bool
	// copy says the image is not the registered one.
	copy bool
	// sameFile says the image, reached by another path than the registered one, is the
	// registered file itself (a hard link to it, or the image moved from the registered
	// path): not a copy to erase or reidentify, but the volume, which `volume register`
	// brings back to its registration.
	sameFile bool
	// replaced says the image is at the registered path but is another file than the one
	// registered there (replaced, or restored from a copy).
	replaced bool
}

// isVolume reports whether the image is the volume's registered file, whatever path reached
// it: destructive operations meant for copies (Erase, Reidentify) refuse it.
func (r registration) isVolume() bool { return r.known && (!r.copy || r.sameFile) }

// copyOf returns the registered path when the image is an unregistered copy, else "".
func (r registration) copyOf() string {
	if r.copy {
		return r.entry.Path
	}
	return ""
}

// imageRegistration is registrationOf for the open image img in file f at path.
func (m *Manager) imageRegistration(path string, f *os.File, img *keyslot.Image) (registration, error) {
	resolved, err := resolvePath(path)
	if err != nil {
		return registration{}, err
	}
	fi, err := f.Stat()
	if err != nil {
		return registration{}, err
	}
	return m.registrationOf(resolved, fi, CRN(img.UUID()))
}

// registrationOf checks that the image at the resolved path, with stat fi, is the registered
// image of volume crn: same path and, when the entry records it, same file identity. An
// image of a volume the registry does not know passes (known false). Any other image is
// refused with ErrNotRegisteredImage naming the registered path; the registration is still
// returned with it.
func (m *Manager) registrationOf(path string, fi os.FileInfo, crn string) (registration, error) {
	return m.reg.registrationOf(path, fi, crn)
}

// registrationOf is [Manager.registrationOf] in registry reg.
func (reg *Registry) registrationOf(path string, fi os.FileInfo, crn string) (registration, error) {
	r := registration{path: path, fi: fi}
	e, err := reg.Get(crn)
	if errors.Is(err, ErrNotRegistered) {
		return r, nil
	}
	if err != nil {
		return r, err
	}
	r.entry, r.known = e, true
	id, hasID := idOf(fi)
	switch {
	case !samePath(e.Path, path) && e.hasIdentity() && hasID && id == e.id():
		r.copy, r.sameFile = true, true
		return r, fmt.Errorf("%w: %s is the registered file of volume %s reached by another path (a hard link to %s, or moved from there); "+
			"if it has moved, register it at its new path (volume register)", ErrNotRegisteredImage, path, e.CRN, e.Path)
	case !samePath(e.Path, path):
		r.copy = true
		return r, notRegisteredError(path, e, "a copy or a moved image")
	case e.hasIdentity() && hasID && id != e.id():
		r.copy, r.replaced = true, true
		return r, notRegisteredError(path, e, "a different file than the one registered at that path (replaced or restored?)")
	case !e.hasIdentity() && hasID:
		r.fill = true
	}
	return r, nil
}

// notRegisteredError is ErrNotRegisteredImage for the image at path, what says what it is.
func notRegisteredError(path string, e Entry, what string) error {
	return fmt.Errorf("%w: %s is %s of volume %s, whose registered image is %s; "+
		"if this image replaces it, register it (volume register); to keep both, give it its own identity (volume reidentify)",
		ErrNotRegisteredImage, path, what, e.CRN, e.Path)
}

// fillIdentity records the file identity of a registered image whose entry lacks it (an
// entry of an older registry), after a registration change on that image.
func (m *Manager) fillIdentity(r registration) {
	if !r.fill {
		return
	}
	if err := m.reg.Put(r.entry.withIdentity(r.path, r.fi)); err != nil {
		m.opts.Logger.Warn("recording the file identity of a registered image failed", "path", r.path, "err", err)
	}
}

// checkRegisteredFile checks that the image at path, of volume crn, is its registered image
// (registrationOf) when the registry knows the volume.
func (m *Manager) checkRegisteredFile(path, crn string) error {
	resolved, err := resolvePath(path)
	if err != nil {
		return err
	}
	fi, err := os.Stat(resolved)
	if err != nil {
		return err
	}
	_, err = m.registrationOf(resolved, fi, crn)
	return err
}

// registeredFile checks that f, opened at the registered path of entry e, is the registered
// file: a rotation writes only to it. An entry without identity matches by path; the
// registration it returns then fills the identity in after the rewrap (only then does it
// hold the resolved path).
func (m *Manager) registeredFile(e Entry, f *os.File) (registration, error) {
	fi, err := f.Stat()
	if err != nil {
		return registration{}, err
	}
	r := registration{entry: e, known: true, fi: fi}
	id, hasID := idOf(fi)
	switch {
	case e.hasIdentity() && hasID && id != e.id():
		return r, fmt.Errorf("%w: the file at the registered path %s of volume %s is not the registered file (its device and inode changed: replaced, or restored from a copy?); "+
			"if it is the volume now, register it (volume register)", ErrNotRegisteredImage, e.Path, e.CRN)
	case !e.hasIdentity() && hasID:
		// The identity is recorded with the resolved path (only then is it needed: resolving
		// costs a stat of every component of the path).
		if r.path, err = resolvePath(e.Path); err != nil {
			return registration{}, err
		}
		r.fill = true
	}
	return r, nil
}

// Identity says how an image relates to the registry: the registered image of its volume,
// an unregistered copy of it, or an image of a volume the registry does not know.
type Identity struct {
	// CRN is the volume's CRN, from the image's UUID.
	CRN string
	// Known says the registry has the volume; RegisteredPath is then its registered image.
	Known          bool
	RegisteredPath string
	// Copy says the image is not the registered image (a byte copy, a moved or restored
	// image); Reason is then the ErrNotRegisteredImage error saying why and what to do.
	Copy   bool
	Reason error
	// SameFile says the image is the registered file itself reached by another path (a hard
	// link, or the image moved from the registered path); Copy is then true too, since the
	// path is not the registered one.
	SameFile bool
	// Replaced says the image is at the registered path but is not the file registered there
	// (replaced, or restored from a copy); Copy is then true too.
	Replaced bool
}

// Identify reads the image at path (its header only; no key service needed) and says
// whether it is the registered image of its volume in the registry.
func (r *Registry) Identify(ctx context.Context, path string) (*Identity, error) {
	f, img, err := readImage(ctx, path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	resolved, err := resolvePath(path)
	if err != nil {
		return nil, fmt.Errorf("volume: %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("volume: %s: %w", path, err)
	}
	crn := CRN(img.UUID())
	reg, err := r.registrationOf(resolved, fi, crn)
	id := &Identity{CRN: crn, Known: reg.known, RegisteredPath: reg.entry.Path, Copy: reg.copy, SameFile: reg.sameFile, Replaced: reg.replaced}
	switch {
	case reg.copy:
		id.Reason = err
	case err != nil:
		return nil, fmt.Errorf("volume: %s: %w", path, err)
	}
	return id, nil
}
