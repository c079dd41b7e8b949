package keyslot

import (
	"fmt"

	"crkvol/internal/ident"
)

// SetUUID gives the image a new UUID, as cryptsetup luksUUID --uuid does: both header copies
// are rewritten with it in one metadata commit (the next sequence number), so a crash leaves
// either the old UUID or the new one. The UUID is taken in either case and written in lower
// case; anything but the hyphenated 8-4-4-4-12 form is refused with an error matching
// ident.ErrInvalidUUID. Keyslots, digests and tokens are unchanged, and so is the volume
// key: a copy given a new UUID is still encrypted with the same key as its original.
func (img *Image) SetUUID(uuid string) error {
	u, err := ident.CanonicalUUID(uuid)
	if err != nil {
		return fmt.Errorf("keyslot: UUID %q: %w", truncate(uuid), err)
	}
	err = img.update(func(st *state, _ *metadata) error {
		st.bin.uuid = u // commitLocked writes st.bin with the next sequence number
		return nil
	})
	if err != nil {
		// The state in memory may hold the new UUID; read back what the disk holds.
		if rerr := img.Reload(); rerr != nil {
			return fmt.Errorf("keyslot: setting the UUID: %w (and reloading the header: %w)", err, rerr)
		}
		return fmt.Errorf("keyslot: setting the UUID: %w", err)
	}
	return nil
}
