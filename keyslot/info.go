package keyslot

import "slices"

// SegmentInfo describes the data segment (segment 0).
type SegmentInfo struct {
	// Offset is the byte offset of the data on the device.
	Offset uint64
	// Size is the data size in bytes; 0 with Dynamic, where the data runs to the end of
	// the device.
	Size    uint64
	Dynamic bool
	// Encryption is the dm-crypt cipher spec, such as "aes-xts-plain64".
	Encryption string
	// SectorSize is the encryption sector size in bytes.
	SectorSize int
	// IVTweak is the segment's iv_tweak (ignored by LUKS2 for a normal volume).
	IVTweak uint64
	// Extra lists the names of segment members this package does not interpret, such as
	// "integrity"; a caller that cannot honour them should refuse the segment.
	Extra []string
}

// UUID returns the header UUID.
func (img *Image) UUID() string { return img.snapshot().bin.uuid }

// Label returns the header label.
func (img *Image) Label() string { return img.snapshot().bin.label }

// Subsystem returns the header subsystem string.
func (img *Image) Subsystem() string { return img.snapshot().bin.subsystem }

// SeqID returns the sequence number of the metadata in use; every update adds one.
func (img *Image) SeqID() uint64 { return img.snapshot().bin.seqID }

// MetadataSize returns the size of each header copy (binary header plus JSON area).
func (img *Image) MetadataSize() uint64 { return img.snapshot().bin.hdrSize }

// KeyslotsSize returns the size of the keyslots area.
func (img *Image) KeyslotsSize() uint64 { return img.snapshot().meta.config.keyslotsSize }

// Segment returns the data segment.
func (img *Image) Segment() SegmentInfo {
	s := img.snapshot().meta.segments[0]
	info := SegmentInfo{
		Offset: s.offset, Size: s.size, Dynamic: s.dynamic,
		Encryption: s.encryption, SectorSize: s.sectorSize, IVTweak: s.ivTweak,
	}
	for _, m := range s.extra {
		info.Extra = append(info.Extra, m.name)
	}
	return info
}

// VolumeKeySize returns the volume key size in bytes, from the keyslots bound to the data
// segment (0 if there are none).
func (img *Image) VolumeKeySize() int {
	m := img.snapshot().meta
	for _, id := range sortedKeys(m.keyslots) {
		if ks := m.keyslots[id]; ks.typ == keyslotLUKS2 && m.boundToData(id) {
			return ks.keySize
		}
	}
	return 0
}

// Flags returns config.flags (persistent activation flags such as "allow-discards").
func (img *Image) Flags() []string { return slices.Clone(img.snapshot().meta.config.flags) }

// Requirements returns config.requirements.mandatory. A non-empty list makes the image
// read-only for this package: it unlocks, but every metadata change fails with
// ErrUnmetRequirement.
func (img *Image) Requirements() []string {
	return slices.Clone(img.snapshot().meta.config.mandatory)
}

func (img *Image) snapshot() *state {
	img.mu.Lock()
	defer img.mu.Unlock()
	return img.st
}
