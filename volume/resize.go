package volume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"crkvol/keyslot"
)

// ErrShrink means a resize asked for a data size smaller than the volume's: crkvol only grows
// volumes, since shrinking cuts off data that a file system on the volume may still use (shrink
// the file system first, then the image, with cryptsetup and truncate, if that is meant).
var ErrShrink = errors.New("shrinking a volume is not supported")

// ResizeOptions tune [Manager.Resize].
type ResizeOptions struct {
	// Wipe writes zeros through the encryption over the new part of the data area, as
	// [Manager.Wipe] does, so that it reads as zeros. Without it, the new part reads as
	// whatever decrypting the file's (sparse, zero) bytes gives: noise, as after cryptsetup
	// resize.
	Wipe bool
	// Progress, if set, is called during the wipe as [WipeOptions.Progress] is, with the
	// bytes done counted from the start of the data area.
	Progress func(done, total int64)
}

// Resized is what [Manager.Resize] did.
type Resized struct {
	// Path is the image's absolute path.
	Path string
	// Old and New are the data sizes in bytes before and after the resize; they are equal
	// when the volume already had the size asked for, and nothing was written.
	Old, New int64
}

// Resize grows the data area of the volume at path to size bytes, a multiple of its sector
// size: it extends the image file (sparsely) and records the new data size in the volume's
// crkvol-crk token (data_size, which [Manager.Check] and a read-write open compare with the
// file). Asking for the size the volume has is not an error: nothing is written, and Old
// equals New, as cryptsetup resize to the current size succeeds without a change.
//
// The LUKS2 data segment is not rewritten: crkvol's images, like cryptsetup luksFormat's, have
// a "dynamic" segment, which runs to the end of the device, so the longer file is the larger
// volume for crkvol, cryptsetup and any LUKS2 reader alike (cryptsetup resize does not write
// the header either). An image with a fixed-size segment is refused with ErrUnsupportedImage.
//
// The new part of the data area is not wiped unless opts.Wipe: see [ResizeOptions.Wipe].
// The wipe is recorded in the token first (from the old size to the new), so an interrupted
// one shows in [Info.Wipe] and is finished by [Manager.Wipe], and the volume takes no writer
// until it is.
//
// The steps keep the volume whole at every point: the file is extended and synced first (a
// crash then leaves the old token, whose data_size a longer file satisfies: the volume opens,
// at the new size, and checks healthy), then data_size (with the wipe record) is written in
// one header commit, both copies with the next sequence number. Running Resize again with the
// same size after a crash finishes it: it records the size, and reports Old equal to New,
// since the volume already opened at that size. The size before a resize is always the data
// area the file holds, as the volume opens and [Manager.Describe] reports it, never a smaller
// data_size the token may record (after such a crash, or a file grown by hand): a volume
// writer may have used that area, so opts.Wipe zeroes only what lies beyond it.
//
// Refused, with nothing changed: an image that is not the registered image of its volume (a
// copy, or the registered image moved: ErrNotRegisteredImage, as for a read-write open), a
// size that is not a positive multiple of the sector size
// (ErrBadSize), smaller than the data area (ErrShrink), a volume attached or open elsewhere
// (ErrInUse: the data area's exclusive lock, as a read-write open takes, is held throughout),
// one with an incomplete wipe (ErrWipeIncomplete) or a data area shorter than the token
// records (ErrUnhealthy: growing it would hide the loss). No key service call is made, except
// by the wipe.
func (m *Manager) Resize(ctx context.Context, path string, size int64, opts ResizeOptions) (Resized, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return Resized{}, fmt.Errorf("volume: resize: %w", err)
	}
	// The image's own errors (not found, not LUKS2) name its path already.
	f, img, err := openImage(ctx, abs)
	if err != nil {
		return Resized{}, err
	}
	res, wipe, err := m.resize(ctx, abs, f, img, size, opts)
	closeImage(f) // unlocks the data area before the wipe opens the volume
	if err != nil {
		return Resized{}, fmt.Errorf("volume: resize %s: %w", abs, err)
	}
	if wipe {
		if _, err := m.Wipe(ctx, abs, WipeOptions{Progress: opts.Progress}); err != nil {
			return res, fmt.Errorf("volume: resize %s: grown from %d to %d bytes, but the wipe of the new area did not finish (volume wipe resumes it): %w",
				abs, res.Old, res.New, err)
		}
	}
	return res, nil
}

// resize is Resize up to the wipe, which it reports is due, on the image img opened from f;
// the caller closes f, which unlocks the data area.
func (m *Manager) resize(ctx context.Context, path string, f *os.File, img *keyslot.Image, size int64, opts ResizeOptions) (_ Resized, wipe bool, _ error) {
	if err := lockImage(f, img, OpenOptions{resizing: true}); err != nil {
		return Resized{}, false, err
	}
	// Only the registered image grows, as only it opens for writing: a copy or a moved image
	// is refused with the registry's reason, which names what registers it.
	if _, err := m.imageRegistration(path, f, img); err != nil {
		return Resized{}, false, err
	}
	seg := img.Segment()
	switch {
	case !seg.Dynamic:
		return Resized{}, false, fmt.Errorf("%w: the data segment has a fixed size of %d bytes; only a dynamic segment (running to the end of the file, as crkvol and cryptsetup luksFormat make it) is resized", ErrUnsupportedImage, seg.Size)
	case len(seg.Extra) > 0:
		return Resized{}, false, fmt.Errorf("%w: data segment has %v, which this package does not implement", ErrUnsupportedImage, seg.Extra)
	case len(img.Requirements()) > 0:
		return Resized{}, false, fmt.Errorf("%w: image requires %v", ErrUnsupportedImage, img.Requirements())
	}
	off, ss := int64(seg.Offset), int64(seg.SectorSize)
	if size <= 0 || size%ss != 0 {
		return Resized{}, false, fmt.Errorf("%w: %d bytes is not a positive multiple of the %d-byte sector size", ErrBadSize, size, ss)
	}
	id, tok, err := findToken(img)
	if err != nil {
		return Resized{}, false, err
	}
	if tok.Wipe != nil {
		return Resized{}, false, fmt.Errorf("%w: %d%% of the data area zeroed; finish it first (volume wipe)", ErrWipeIncomplete, tok.Wipe.Percent())
	}
	st, err := f.Stat()
	if err != nil {
		return Resized{}, false, err
	}
	if err := unhealthy(layoutProblems(img, st.Size())); err != nil {
		return Resized{}, false, err
	}
	if err := truncatedData(img, tok, st.Size()); err != nil {
		return Resized{}, false, fmt.Errorf("%w: data area: %w", ErrUnhealthy, err)
	}
	// The size the volume has is the file's data area, as it opens (and as status shows it),
	// even when the token records less (a resize interrupted after extending the file, or a
	// file grown by hand): data may have been written there since, so none of it counts as
	// new, and none of it is wiped.
	cur := st.Size() - off
	res := Resized{Path: path, Old: cur, New: size}
	switch {
	case size < cur:
		return Resized{}, false, fmt.Errorf("%w: %d bytes is less than the %d-byte data area", ErrShrink, size, cur)
	case size == cur && (tok.DataSize == 0 || tok.DataSize == cur):
		return res, false, nil
	}

	// 1. The file; synced, so that no header records a size the file may not have.
	if size > cur {
		if err := f.Truncate(off + size); err != nil {
			return Resized{}, false, fmt.Errorf("extending the file: %w", err)
		}
	}
	if err := f.Sync(); err != nil {
		return Resized{}, false, fmt.Errorf("syncing the extended file: %w", err)
	}
	if err := m.resizeStep("extended"); err != nil {
		return Resized{}, false, err
	}

	// 2. The token: one header commit.
	var record *WipeProgress
	wipe = opts.Wipe && size > cur
	if wipe {
		record = &WipeProgress{Next: cur, Size: size}
	}
	uuid := img.UUID() // fn below runs under the image's lock: no Image methods in it
	err = img.UpdateTokenContext(ctx, id, func(cur json.RawMessage) ([]byte, error) {
		t, err := parseToken(cur, uuid)
		if err != nil {
			return nil, err
		}
		if t.Wipe != nil {
			return nil, fmt.Errorf("%w: recorded meanwhile", ErrWipeIncomplete)
		}
		t.DataSize, t.Wipe = size, record
		return t.marshalChecked(uuid)
	})
	if err != nil {
		return Resized{}, false, fmt.Errorf("the file is extended, but recording the new size failed (run resize again): %w", err)
	}
	if err := m.resizeStep("recorded"); err != nil {
		return Resized{}, false, err
	}
	m.opts.Logger.Info("volume resized", "path", path, "from", res.Old, "to", res.New, "wipe", wipe)
	return res, wipe, nil
}

// resizeStep calls the test hook after a step of resize, if set.
func (m *Manager) resizeStep(step string) error {
	if m.testOnlyResizeStep == nil {
		return nil
	}
	return m.testOnlyResizeStep(step)
}
