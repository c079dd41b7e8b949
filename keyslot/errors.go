package keyslot

import "errors"

// Sentinel errors. Every error the package returns wraps at most one of these with context
// (which copy, which keyslot, which field); test for them with errors.Is.
var (
	// ErrNotLUKS2 means neither header copy is a valid LUKS2 header.
	ErrNotLUKS2 = errors.New("not a valid LUKS2 device")
	// ErrLUKS1 means the device holds a LUKS1 header, which [Open] does not open: [ParseLUKS1]
	// reads it, and cryptsetup convert --type luks2 converts it to LUKS2. Errors matching it
	// match ErrNotLUKS2 too.
	ErrLUKS1 = errors.New("LUKS1 image (only LUKS2 is supported)")
	// ErrHeaderCorrupt means one header copy fails validation (bad magic, offset, size,
	// checksum or metadata). Open reports it per copy in [Health] and still opens the image
	// when the other copy is good.
	ErrHeaderCorrupt = errors.New("LUKS2 header corrupt")
	// ErrInvalidMetadata means the JSON metadata breaks a LUKS2 rule.
	ErrInvalidMetadata = errors.New("invalid LUKS2 metadata")
	// ErrUnsupported means the metadata names a keyslot, KDF, hash or cipher type this
	// package does not implement; the message names it.
	ErrUnsupported = errors.New("unsupported")
	// ErrKDFLimits means KDF cost parameters are outside the accepted range.
	ErrKDFLimits = errors.New("KDF parameters out of range")
	// ErrWrongPassphrase means no keyslot that was tried opens with the passphrase.
	ErrWrongPassphrase = errors.New("no keyslot opens with this passphrase")
	// ErrWrongVolumeKey means a volume key does not match the image's digest.
	ErrWrongVolumeKey = errors.New("volume key does not match the digest")
	// ErrUnboundKeyslot means a keyslot named to [Image.Unlock] opens with the passphrase but
	// is unbound (its digest covers no segment, cryptsetup luksAddKey --unbound): the key it
	// holds is not the volume key. [Image.KeyslotKey] returns such a key.
	ErrUnboundKeyslot = errors.New("keyslot is unbound: its key is not the volume key")
	// ErrKeyslotNotFound means the named keyslot does not exist.
	ErrKeyslotNotFound = errors.New("keyslot not found")
	// ErrKeyslotInUse means a new keyslot was asked for at an id that is taken.
	ErrKeyslotInUse = errors.New("keyslot already in use")
	// ErrLastKeyslot means the change would remove the last keyslot, making the data
	// unrecoverable; use [Image.Erase] for that.
	ErrLastKeyslot = errors.New("refusing to remove the last keyslot")
	// ErrTokenNotFound means the named token does not exist.
	ErrTokenNotFound = errors.New("token not found")
	// ErrNoSpace means the keyslots area, the JSON area or the id space is full.
	ErrNoSpace = errors.New("no space in LUKS2 metadata")
	// ErrUnmetRequirement means the image carries mandatory requirements this package does
	// not know; it still unlocks, but its metadata may not be changed beyond removing a luks2
	// keyslot (as in cryptsetup).
	ErrUnmetRequirement = errors.New("unmet LUKS2 requirements")
	// ErrAmbiguousSignature means a header copy needs repair, but the device also carries
	// another format's signature (such as an LVM2 physical volume label) that the repair
	// would overwrite; metadata changes are refused until [Image.Repair] is called
	// explicitly, as cryptsetup refuses until `cryptsetup repair`.
	ErrAmbiguousSignature = errors.New("device contains ambiguous signatures")
)
