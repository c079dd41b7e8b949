package volume

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"crkvol/keyslot"
)

// ErrNotAdoptable means a LUKS2 image is one crkvol cannot adopt: its data is encrypted
// otherwise than crkvol volumes' (a cipher other than aes-xts-plain64, a key of neither 256
// nor 512 bits, integrity protection), it has unmet requirements (an unfinished
// reencryption), or none of its keyslots is one crkvol can open. It comes with
// ErrUnsupportedImage; [NotAdoptableError] carries the reason.
var ErrNotAdoptable = errors.New("image crkvol cannot adopt")

// NotAdoptableError is the error of [Manager.Adopt] and [Adoptable] for an image crkvol
// cannot adopt. It matches ErrNotAdoptable and ErrUnsupportedImage.
type NotAdoptableError struct {
	// Path is the image.
	Path string
	// Reason says what crkvol cannot handle, such as `data cipher aes-cbc-essiv:sha256 with a
	// 256-bit key (crkvol volumes use aes-xts-plain64 with a 256- or 512-bit key)`.
	Reason string
	// KeyslotsOnly is set when the data could be served and only the keyslots stand in the
	// way: a keyslot crkvol can open (cryptsetup luksAddKey with the default keyslot cipher)
	// makes the image adoptable.
	KeyslotsOnly bool
}

// Error says the image cannot be adopted, and why.
func (e *NotAdoptableError) Error() string {
	return fmt.Sprintf("volume: %s is a LUKS2 image crkvol cannot adopt: %s", e.Path, e.Reason)
}

// Unwrap returns ErrNotAdoptable and ErrUnsupportedImage.
func (e *NotAdoptableError) Unwrap() []error { return []error{ErrNotAdoptable, ErrUnsupportedImage} }

// Adoptable reports whether [Manager.Adopt] can take the LUKS2 image at path, as far as its
// header tells (the passphrase, the key and room for another keyslot are checked by Adopt
// itself): nil if it can, a *NotAdoptableError if not, or the error of reading the image.
// It only reads the image; ctx bounds the wait for its header lock.
func Adoptable(ctx context.Context, path string) error {
	f, img, err := readImage(ctx, path)
	if err != nil {
		return err
	}
	defer f.Close()
	return adoptable(path, img)
}

// adoptable is Adoptable of the open image img at path. Its checks are those newVolume makes
// of the data segment, so that an adopted image opens, and that Unlock with AnyKeyslot has a
// keyslot it can open.
func adoptable(path string, img *keyslot.Image) error {
	no := func(keyslotsOnly bool, format string, args ...any) error {
		return &NotAdoptableError{Path: path, Reason: fmt.Sprintf(format, args...), KeyslotsOnly: keyslotsOnly}
	}
	seg := img.Segment()
	if ks := img.VolumeKeySize(); seg.Encryption != keyslot.SegmentEncryption || (ks != 32 && ks != 64) {
		return no(false, "data cipher %s with a %d-bit key (crkvol volumes use %s with a 256- or 512-bit key)",
			seg.Encryption, 8*ks, keyslot.SegmentEncryption)
	}
	if len(seg.Extra) > 0 {
		return no(false, "its data segment has %s, which crkvol does not implement", strings.Join(seg.Extra, ", "))
	}
	if r := img.Requirements(); len(r) > 0 {
		return no(false, "it requires %s (cryptsetup has an operation on it to finish, such as a reencryption)", strings.Join(r, ", "))
	}
	var why []string
	for _, ks := range img.Keyslots() {
		switch {
		case ks.Type != "luks2":
			why = append(why, fmt.Sprintf("keyslot %d is of type %s", ks.ID, ks.Type))
		case ks.Unbound:
			why = append(why, fmt.Sprintf("keyslot %d is unbound", ks.ID))
		case ks.Priority == keyslot.PriorityIgnore:
			why = append(why, fmt.Sprintf("keyslot %d has priority ignore", ks.ID))
		case ks.AreaEncryption != keyslot.SegmentEncryption || (ks.AreaKeySize != 32 && ks.AreaKeySize != 64):
			why = append(why, fmt.Sprintf("keyslot %d is encrypted with %s and a %d-bit key", ks.ID, ks.AreaEncryption, 8*ks.AreaKeySize))
		default:
			return nil
		}
	}
	if len(why) == 0 {
		return no(true, "it has no keyslot")
	}
	return no(true, "no keyslot is one crkvol can open (%s; crkvol opens luks2 keyslots encrypted with %s and a 256- or 512-bit key)",
		strings.Join(why, ", "), keyslot.SegmentEncryption)
}
