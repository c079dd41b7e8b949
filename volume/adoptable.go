package volume

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"crkvol/internal/fsutil"
	"crkvol/keyslot"
)

// ErrNotAdoptable means a LUKS2 image is one crkvol cannot adopt: its header names an
// algorithm crkvol does not implement, its data is encrypted otherwise than crkvol volumes'
// (a cipher other than aes-xts-plain64, a key of neither 256 nor 512 bits, integrity
// protection), its data area is not one crkvol serves (not a whole number of sectors, or
// running past the end of the file), it has unmet requirements (an unfinished
// reencryption), or none of its keyslots is one crkvol can open. It comes with
// ErrUnsupportedImage; [NotAdoptableError] carries the reason.
var ErrNotAdoptable = errors.New("image crkvol cannot adopt")

// NotAdoptableError is the error of [Manager.Adopt] and [Adoptable] for an image crkvol
// cannot adopt, and of every operation on an image whose header crkvol cannot read for an
// algorithm it does not implement. It matches ErrNotAdoptable and ErrUnsupportedImage, and
// Err when set. Its other fields say what, if anything, would make the image adoptable.
type NotAdoptableError struct {
	// Path is the image.
	Path string
	// Reason says what crkvol cannot handle, such as `data cipher aes-cbc-essiv:sha256 with a
	// 256-bit key (crkvol volumes use aes-xts-plain64 with a 256- or 512-bit key)`.
	Reason string
	// Err is why the header could not be read, for an image whose header names an
	// algorithm or type crkvol does not implement (it matches keyslot.ErrNotLUKS2 and
	// keyslot.ErrUnsupported); nil otherwise.
	Err error
	// CopyOut is set when cryptsetup can open the image (cryptsetup open) although crkvol
	// cannot: its data can be copied into a new crkvol volume that way.
	CopyOut bool
	// KeyslotsOnly is set when the data could be served and only the keyslots stand in the
	// way. Unignore and AddKeyslot then say what cryptsetup commands fix that; when neither
	// is set, no keyslot holds the volume key (only unbound keyslots, or none).
	KeyslotsOnly bool
	// Unignore lists keyslots that hold the volume key but have priority ignore, which
	// cryptsetup and crkvol open only when named: cryptsetup config --priority normal
	// --key-slot N makes keyslot N one they open.
	Unignore []int
	// AddKeyslot is set when, Unignore done, still no keyslot is one crkvol can open:
	// cryptsetup luksAddKey with the keyslot cipher aes-xts-plain64 adds one.
	AddKeyslot bool
	// TrimTo, when not 0, is the size the file would have without the partial sector at
	// its end, which holds no data: truncating the file to TrimTo bytes makes the data
	// area a whole number of sectors.
	TrimTo int64
}

// Error says the image cannot be adopted, and why.
func (e *NotAdoptableError) Error() string {
	return fmt.Sprintf("volume: %s is a LUKS2 image crkvol cannot adopt: %s", e.Path, e.Reason)
}

// Unwrap returns ErrNotAdoptable, ErrUnsupportedImage and Err when set.
func (e *NotAdoptableError) Unwrap() []error {
	errs := []error{ErrNotAdoptable, ErrUnsupportedImage}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

// Adoptable reports whether [Manager.Adopt] can take the LUKS2 image at path, as far as its
// header and size tell (the passphrase, the key and room for another keyslot are checked by
// Adopt itself): nil if it can, a *NotAdoptableError if not, or the error of reading the
// image. It only reads the image; ctx bounds the wait for its header lock.
func Adoptable(ctx context.Context, path string) error {
	f, img, err := readImage(ctx, path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("volume: %w", err)
	}
	if !st.Mode().IsRegular() {
		// Its size would read as 0: say what it is instead of calling it truncated.
		return fmt.Errorf("volume: %s is %s: crkvol's volumes, and the images it adopts, are regular files", path, fsutil.Kind(st.Mode()))
	}
	return adoptable(path, img, st.Size())
}

// adoptable is Adoptable of the open image img at path, a file of fileSize bytes. Its
// checks are those of checkData, which newVolume makes, so that an adopted image opens,
// and that Unlock with AnyKeyslot has a keyslot it can open.
func adoptable(path string, img *keyslot.Image, fileSize int64) error {
	if _, err := checkData(img, fileSize); err != nil {
		var de *dataError
		if !errors.As(err, &de) {
			return err
		}
		return &NotAdoptableError{Path: path, Reason: de.reason, CopyOut: de.copyOut, TrimTo: de.trimTo}
	}
	var why []string
	var ignored, ignoredOther []int // bound luks2 keyslots of priority ignore: crkvol opens their area, or not
	normal := false                 // a bound luks2 keyslot cryptsetup opens but crkvol does not
	for _, ks := range img.Keyslots() {
		opens := ks.AreaEncryption == keyslot.SegmentEncryption && (ks.AreaKeySize == 32 || ks.AreaKeySize == 64)
		switch {
		case ks.Type != "luks2":
			why = append(why, fmt.Sprintf("keyslot %d is of type %s", ks.ID, ks.Type))
		case ks.Unbound:
			why = append(why, fmt.Sprintf("keyslot %d is unbound", ks.ID))
		case ks.Priority == keyslot.PriorityIgnore:
			why = append(why, fmt.Sprintf("keyslot %d has priority ignore", ks.ID))
			if opens {
				ignored = append(ignored, ks.ID)
			} else {
				ignoredOther = append(ignoredOther, ks.ID)
			}
		case !opens:
			why = append(why, fmt.Sprintf("keyslot %d is encrypted with %s and a %d-bit key", ks.ID, ks.AreaEncryption, 8*ks.AreaKeySize))
			normal = true
		default:
			return nil
		}
	}
	na := &NotAdoptableError{Path: path, KeyslotsOnly: true}
	switch {
	case len(ignored) > 0:
		na.Unignore = ignored
	case normal:
		na.AddKeyslot = true
	case len(ignoredOther) > 0:
		na.Unignore, na.AddKeyslot = ignoredOther, true
	}
	if len(why) == 0 {
		na.Reason = "it has no keyslot"
	} else {
		na.Reason = fmt.Sprintf("no keyslot is one crkvol can open (%s; crkvol opens luks2 keyslots encrypted with %s and a 256- or 512-bit key, not of priority ignore)",
			strings.Join(why, ", "), keyslot.SegmentEncryption)
	}
	return na
}

// dataError is the error of checkData: why crkvol cannot serve an image's data.
type dataError struct {
	reason  string
	copyOut bool  // cryptsetup opens it (see NotAdoptableError.CopyOut)
	trimTo  int64 // see NotAdoptableError.TrimTo
}

func (e *dataError) Error() string { return ErrUnsupportedImage.Error() + ": " + e.reason }

// Unwrap returns ErrUnsupportedImage.
func (e *dataError) Unwrap() error { return ErrUnsupportedImage }

// checkData makes every check of img's data segment that serving its data needs, in a file
// of fileSize bytes: its encryption is crkvol's (aes-xts-plain64 with a 256- or 512-bit key,
// a sector size the cipher takes, no integrity protection), nothing is required of it (an
// unfinished reencryption), and its data area is a positive whole number of sectors that
// the file holds. It returns the data area's size, or a *dataError (matching
// ErrUnsupportedImage) saying what fails. newVolume, Adoptable and Adopt all check through
// it, so that an image Adopt takes opens.
func checkData(img *keyslot.Image, fileSize int64) (int64, error) {
	no := func(copyOut bool, format string, args ...any) (int64, error) {
		return 0, &dataError{reason: fmt.Sprintf(format, args...), copyOut: copyOut}
	}
	seg := img.Segment()
	// The key size is known from a keyslot: an image without one (adoptable says so) has 0.
	if ks := img.VolumeKeySize(); seg.Encryption != keyslot.SegmentEncryption || (ks != 0 && ks != 32 && ks != 64) {
		return no(true, "data cipher %s with a %d-bit key (crkvol volumes use %s with a 256- or 512-bit key)",
			seg.Encryption, 8*ks, keyslot.SegmentEncryption)
	}
	if len(seg.Extra) > 0 {
		return no(true, "its data segment has %s, which crkvol does not implement", strings.Join(seg.Extra, ", "))
	}
	if r := img.Requirements(); len(r) > 0 {
		return no(true, "it requires %s (cryptsetup has an operation on it to finish, such as a reencryption)", strings.Join(r, ", "))
	}
	ss, off := int64(seg.SectorSize), int64(seg.Offset)
	switch ss {
	case 512, 1024, 2048, 4096:
	default:
		return no(false, "its data has %d-byte sectors (crkvol volumes have 512, 1024, 2048 or 4096)", ss)
	}
	size := int64(seg.Size)
	switch {
	case !seg.Dynamic && off+size > fileSize:
		return no(false, "its data segment runs to byte %d, past the end of the %d-byte file (truncated?)", off+size, fileSize)
	case seg.Dynamic:
		size = fileSize - off
	}
	if size < ss {
		return no(false, "the %d-byte file ends before the first %d-byte sector of its data at byte %d (truncated?)", fileSize, ss, off)
	}
	if tail := size % ss; tail != 0 && !seg.Dynamic {
		return no(false, "its data segment of %d bytes is not a whole number of %d-byte sectors", size, ss)
	} else if tail != 0 {
		// The bytes past the last whole sector hold no data: without them the image serves.
		return 0, &dataError{
			reason: fmt.Sprintf("its data area (%d bytes from byte %d to the end of the file) is not a whole number of %d-byte sectors: the last %d bytes are part of none",
				size, off, ss, tail),
			trimTo: fileSize - tail,
		}
	}
	return size, nil
}

// unreadableError is the *NotAdoptableError of the image at path whose header did not open,
// err saying why, because it names an algorithm or type crkvol does not implement (err
// matches keyslot.ErrUnsupported): cryptsetup made it, with --hash sha384 say, and opens it,
// but crkvol cannot read it, let alone adopt it. The reason names what crkvol lacks, as the
// header copy refused for it says.
func unreadableError(path string, err error) error {
	what := err.Error()
	if m, ok := err.(interface{ Unwrap() []error }); ok {
		// keyslot reports the primary's error and the secondary's: name the first one that
		// is about something unsupported (the two are usually the same).
		for _, e := range m.Unwrap() {
			if e != keyslot.ErrNotLUKS2 && errors.Is(e, keyslot.ErrUnsupported) {
				what = e.Error()
				break
			}
		}
	}
	return &NotAdoptableError{
		Path:    path,
		Reason:  "its header names what crkvol does not implement (" + what + "), so crkvol cannot read it",
		Err:     err,
		CopyOut: true,
	}
}
