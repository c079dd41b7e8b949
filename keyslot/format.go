package keyslot

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"golang.org/x/sys/unix"

	"crkvol/internal/ident"
)

// Defaults of cryptsetup 2.6 luksFormat.
const (
	// DefaultMetadataSize is the default header size (binary header plus JSON area).
	DefaultMetadataSize = 16 << 10
	// DefaultSectorSize is the sector size cryptsetup picks for image files.
	DefaultSectorSize = 4096
	// DefaultKeySize is the default volume key size: AES-256-XTS.
	DefaultKeySize = 64
	// dataAlignment is the default alignment of the data offset.
	dataAlignment = 1 << 20
	// defaultMetadataAndKeyslots is the default total of both header copies and the
	// keyslots area, so the keyslots area defaults to 16 MiB - 2 × MetadataSize.
	defaultMetadataAndKeyslots = 16 << 20
	// SegmentEncryption is the data cipher of every image this package formats.
	SegmentEncryption = "aes-xts-plain64"
)

// FormatOptions describe a new LUKS2 image. The zero value of each field selects
// cryptsetup's default, except KDF, which must be given.
type FormatOptions struct {
	// KeySize is the volume key size in bytes: 64 (AES-256-XTS, default) or 32.
	KeySize int
	// SectorSize is the data sector size: 512, 1024, 2048 or 4096 (default).
	SectorSize int
	// MetadataSize is the size of each header copy: 16 KiB (default) to 4 MiB, a power of
	// two.
	MetadataSize uint64
	// KeyslotsSize is the size of the keyslots area, a multiple of 4096; default
	// 16 MiB - 2 × MetadataSize. One 512-bit keyslot needs 258048 bytes.
	KeyslotsSize uint64
	// DataOffset is where the data segment starts, a multiple of 4096 at or after the
	// keyslots area; default: the end of the keyslots area rounded up to 1 MiB.
	DataOffset uint64
	// KDF protects keyslot 0. Required.
	KDF KDF
	// Label and Subsystem are optional header strings of at most 47 bytes.
	Label, Subsystem string
	// UUID is the header UUID in the canonical 8-4-4-4-12 form, with hex digits of either
	// case; it is written in lower case, as cryptsetup's --uuid does. Random (version 4) if
	// empty.
	UUID string
	// VolumeKey is the volume (master) key; KeySize random bytes if nil.
	VolumeKey []byte
	// Rand is the source of every random value; crypto/rand if nil.
	Rand io.Reader
}

// Format writes a new LUKS2 header with one keyslot (id 0) for passphrase to dev, whose size
// in bytes is size, and returns the open image and its volume key (which the caller should
// clear when done). The data segment runs from the data offset to the end of the device
// ("dynamic"), and size minus the data offset must be a positive multiple of the sector size.
// The metadata and keyslots areas are zeroed first; data is not touched.
func Format(dev Device, size uint64, passphrase []byte, opts FormatOptions) (*Image, []byte, error) {
	if opts.Rand == nil {
		opts.Rand = rand.Reader
	}
	if opts.KeySize == 0 {
		opts.KeySize = DefaultKeySize
	}
	if opts.SectorSize == 0 {
		opts.SectorSize = DefaultSectorSize
	}
	if opts.MetadataSize == 0 {
		opts.MetadataSize = DefaultMetadataSize
	}
	if opts.KeyslotsSize == 0 && 2*opts.MetadataSize < defaultMetadataAndKeyslots {
		opts.KeyslotsSize = defaultMetadataAndKeyslots - 2*opts.MetadataSize
	}
	if err := checkFormat(size, &opts); err != nil {
		return nil, nil, err
	}
	if opts.UUID == "" {
		u, err := newUUID(opts.Rand)
		if err != nil {
			return nil, nil, err
		}
		opts.UUID = u
	}
	volumeKey := opts.VolumeKey
	if volumeKey == nil {
		volumeKey = make([]byte, opts.KeySize)
		if _, err := io.ReadFull(opts.Rand, volumeKey); err != nil {
			return nil, nil, fmt.Errorf("keyslot: reading random volume key: %w", err)
		}
	} else {
		volumeKey = append([]byte(nil), volumeKey...)
	}

	img := &Image{dev: dev, rand: opts.Rand, bufs: &Buffers{}}
	img.mu.Lock()
	defer img.mu.Unlock()
	unlock, err := lockDevice(context.Background(), dev, unix.LOCK_EX)
	if err != nil {
		return nil, nil, err
	}
	defer unlock()

	if err := zeroRange(dev, 0, 2*opts.MetadataSize+opts.KeyslotsSize); err != nil {
		return nil, nil, err
	}
	// Stale secondary headers of an earlier, larger format would be found by the probe
	// for a secondary copy; clear every place one could be.
	for _, s := range hdrSizes {
		if s+binHeaderSize <= opts.DataOffset {
			if err := zeroRange(dev, s, binHeaderSize); err != nil {
				return nil, nil, err
			}
		}
	}

	st := &state{bin: binHeader{
		hdrSize:   opts.MetadataSize,
		label:     opts.Label,
		subsystem: opts.Subsystem,
		csumAlg:   "sha256",
		uuid:      opts.UUID,
	}}
	m := &metadata{
		keyslots: make(map[int]*keyslotMeta),
		tokens:   make(map[int]json.RawMessage),
		segments: map[int]*segmentMeta{0: {
			typ:        "crypt",
			offset:     opts.DataOffset,
			dynamic:    true,
			encryption: SegmentEncryption,
			sectorSize: opts.SectorSize,
		}},
		digests: make(map[int]*digestMeta),
		config: configMeta{
			jsonSize:     opts.MetadataSize - binHeaderSize,
			keyslotsSize: opts.KeyslotsSize,
		},
	}
	ks, err := img.writeKeyslot(st, m, volumeKey, passphrase, SlotOptions{KDF: opts.KDF, AFHash: "sha256", Priority: PriorityNormal})
	if err != nil {
		clear(volumeKey)
		return nil, nil, err
	}
	m.keyslots[0] = ks
	d, err := newDigest(volumeKey, []int{0}, []int{0}, opts.Rand)
	if err != nil {
		clear(volumeKey)
		return nil, nil, err
	}
	m.digests[0] = d
	if err := img.commitLocked(st, m); err != nil {
		clear(volumeKey)
		return nil, nil, err
	}
	return img, volumeKey, nil
}

func checkFormat(size uint64, o *FormatOptions) error {
	if o.KeySize != 32 && o.KeySize != 64 {
		return fmt.Errorf("keyslot: volume key size %d bytes, want 32 or 64 for %s", o.KeySize, SegmentEncryption)
	}
	if o.VolumeKey != nil {
		if len(o.VolumeKey) != o.KeySize {
			return fmt.Errorf("keyslot: volume key is %d bytes, want %d", len(o.VolumeKey), o.KeySize)
		}
		if half := o.KeySize / 2; bytes.Equal(o.VolumeKey[:half], o.VolumeKey[half:]) {
			return fmt.Errorf("keyslot: the two halves of the XTS volume key are equal")
		}
	}
	switch o.SectorSize {
	case 512, 1024, 2048, 4096:
	default:
		return fmt.Errorf("keyslot: sector size %d, want 512, 1024, 2048 or 4096", o.SectorSize)
	}
	if !validHdrSize(o.MetadataSize) {
		return fmt.Errorf("keyslot: metadata size %d, want a power of two from 16 KiB to 4 MiB", o.MetadataSize)
	}
	if o.KeyslotsSize == 0 || o.KeyslotsSize%4096 != 0 || o.KeyslotsSize > maxKeyslotsSize {
		return fmt.Errorf("keyslot: keyslots area size %d, want a nonzero multiple of 4096 up to %d", o.KeyslotsSize, maxKeyslotsSize)
	}
	if need := afAreaSize(o.KeySize); o.KeyslotsSize < need {
		return fmt.Errorf("%w: keyslots area size %d cannot hold one %d-byte keyslot (%d bytes)", ErrNoSpace, o.KeyslotsSize, o.KeySize, need)
	}
	end := 2*o.MetadataSize + o.KeyslotsSize
	if o.DataOffset == 0 {
		o.DataOffset = (end + dataAlignment - 1) / dataAlignment * dataAlignment
	}
	if o.DataOffset%4096 != 0 || o.DataOffset < end {
		return fmt.Errorf("keyslot: data offset %d, want a multiple of 4096 at or after the keyslots area end %d", o.DataOffset, end)
	}
	if size <= o.DataOffset || (size-o.DataOffset)%uint64(o.SectorSize) != 0 {
		return fmt.Errorf("keyslot: device size %d: the data area after offset %d must be a positive multiple of the %d-byte sector size",
			size, o.DataOffset, o.SectorSize)
	}
	if err := o.KDF.checkNew(); err != nil {
		return err
	}
	if len(o.Label) > MaxLabelLen || strings.IndexByte(o.Label, 0) >= 0 {
		return fmt.Errorf("keyslot: label must be at most %d bytes without NUL", MaxLabelLen)
	}
	if len(o.Subsystem) > MaxLabelLen || strings.IndexByte(o.Subsystem, 0) >= 0 {
		return fmt.Errorf("keyslot: subsystem must be at most %d bytes without NUL", MaxLabelLen)
	}
	if o.UUID != "" {
		u, err := ident.CanonicalUUID(o.UUID)
		if err != nil {
			return fmt.Errorf("keyslot: UUID %q: %w", truncate(o.UUID), err)
		}
		o.UUID = u
	}
	return nil
}

// newUUID returns a random (version 4) UUID in lower case.
func newUUID(rand io.Reader) (string, error) {
	u, err := ident.NewUUID(rand)
	if err != nil {
		return "", fmt.Errorf("keyslot: %w", err)
	}
	return u, nil
}

// zeroRange makes [off, off+n) read as zeros: a hole punched in a file keeps it sparse;
// other devices get zeros written.
func zeroRange(dev Device, off, n uint64) error {
	if f, ok := dev.(interface{ Fd() uintptr }); ok {
		err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(off), int64(n))
		if err == nil {
			return nil
		}
	}
	buf := make([]byte, min(n, 1<<20))
	for done := uint64(0); done < n; {
		chunk := buf[:min(uint64(len(buf)), n-done)]
		if _, err := dev.WriteAt(chunk, int64(off+done)); err != nil {
			return fmt.Errorf("keyslot: zeroing metadata area at %d: %w", off+done, err)
		}
		done += uint64(len(chunk))
	}
	return nil
}
