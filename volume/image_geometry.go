package volume

import (
	"fmt"

	"crkvol/qcow2"
)

// fromImageGeometry returns the size, sector size and master key size (bytes) of a volume
// made from an image of imageSize guest bytes with opts (see FromImageOptions): a size of 0
// is the image's, rounded up to the sector size; a sector size of 0 is 4096 when the size
// is a multiple of it, else 512; key bits 0 are 512. A smaller size than the image's, a
// size that is not a whole number of sectors, an unknown sector size or key size are
// refused (ErrBadSize for the sizes) before anything is decrypted.
func fromImageGeometry(imageSize int64, opts FromImageOptions) (size int64, sectorSize, keyBytes int, err error) {
	switch opts.SectorSize {
	case 0, 512, 1024, 2048, 4096:
	default:
		return 0, 0, 0, fmt.Errorf("sector size %d: want 512, 1024, 2048 or 4096", opts.SectorSize)
	}
	switch opts.KeyBits {
	case 0:
		keyBytes = 64
	case 256, 512:
		keyBytes = opts.KeyBits / 8
	default:
		return 0, 0, 0, fmt.Errorf("cipher key size %d bits: want 256 (AES-128-XTS) or 512 (AES-256-XTS)", opts.KeyBits)
	}
	size = opts.Size
	if size < 0 {
		return 0, 0, 0, fmt.Errorf("%w: %d bytes", ErrBadSize, size)
	}
	sectorSize = opts.SectorSize
	if size == 0 {
		size = roundUp(imageSize, int64(max(sectorSize, 512)))
	}
	if size < imageSize {
		return 0, 0, 0, fmt.Errorf("%w: %d bytes is smaller than the image's %d", ErrBadSize, size, imageSize)
	}
	if sectorSize == 0 {
		sectorSize = 4096
		if size%4096 != 0 {
			sectorSize = 512
		}
	}
	if size%int64(sectorSize) != 0 {
		return 0, 0, 0, fmt.Errorf("%w: %d bytes is not a whole number of %d-byte sectors", ErrBadSize, size, sectorSize)
	}
	return size, sectorSize, keyBytes, nil
}

// withTail returns the extents of an image of imageSize guest bytes followed by a hole up
// to the volume's size, so that the exact (not Sparse) copy writes zeros there too: the
// part of the volume beyond the image then reads as zeros, not as the noise of a new
// volume's unwritten blocks.
func withTail(extents []qcow2.Extent, imageSize, size int64) []qcow2.Extent {
	if size <= imageSize {
		return extents
	}
	return append(extents, qcow2.Extent{Offset: imageSize, Length: size - imageSize})
}
