package volume

import (
	"errors"
	"fmt"
	"io"
	"os"

	"crkvol/keyslot"
)

// LUKS1Error is the error every operation on an image returns when the image is LUKS1
// (cryptsetup luksFormat --type luks1): crkvol volumes are LUKS2, and cryptsetup convert
// --type luks2 converts a LUKS1 image in place, after which [Manager.Adopt] takes it. It
// matches keyslot.ErrLUKS1 and keyslot.ErrNotLUKS2, and carries the header, so that a caller
// can say what the image is rather than call it corrupt.
type LUKS1Error struct {
	// Path is the image.
	Path string
	// Header is the image's validated LUKS1 header, or nil when it does not validate.
	Header *keyslot.LUKS1
	// Err is why the header does not validate (wrapping keyslot.ErrLUKS1Header, say), or nil.
	Err error
}

// Error says the image is LUKS1 and whether crkvol could adopt it after conversion.
func (e *LUKS1Error) Error() string {
	switch {
	case e.Header == nil && errors.Is(e.Err, keyslot.ErrUnsupported):
		// A hash cryptsetup knows but crkvol does not implement, such as ripemd160.
		return fmt.Sprintf("volume: %s is a LUKS1 image crkvol cannot read: %v", e.Path, e.Err)
	case e.Header == nil:
		return fmt.Sprintf("volume: %s is a LUKS1 image with an invalid header: %v", e.Path, e.Err)
	}
	if err := e.Header.Adoptable(); err != nil {
		// Converted to LUKS2 its data would still be encrypted another way than crkvol's.
		return fmt.Sprintf("volume: %s is a LUKS1 image crkvol cannot adopt: %v", e.Path, err)
	}
	return fmt.Sprintf("volume: %s is a LUKS1 image; convert it to LUKS2 first", e.Path)
}

// Unwrap returns keyslot.ErrLUKS1, keyslot.ErrNotLUKS2 and, for an invalid header, Err.
func (e *LUKS1Error) Unwrap() []error {
	errs := []error{keyslot.ErrLUKS1, keyslot.ErrNotLUKS2}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

// luks1Error returns the LUKS1Error for the image f at path, whose LUKS2 header did not open
// because it is LUKS1: with the header when it validates, else with why not.
func luks1Error(f *os.File, path string) error {
	size, err := f.Seek(0, io.SeekEnd) // a block device's size too, which Stat gives as 0
	if err != nil {
		return fmt.Errorf("volume: %s: %w (size: %w)", path, keyslot.ErrLUKS1, err)
	}
	h, err := keyslot.ParseLUKS1(f, size)
	if err != nil {
		return &LUKS1Error{Path: path, Err: err}
	}
	return &LUKS1Error{Path: path, Header: h}
}

// isLUKS1 reports whether err says an image is LUKS1.
func isLUKS1(err error) bool { return errors.Is(err, keyslot.ErrLUKS1) }
