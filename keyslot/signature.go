package keyslot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// foreignSignature looks for a signature of another format on dev, as cryptsetup's
// detect_device_signatures does with blkid before it recovers a damaged header copy (LUKS
// itself excluded). It returns a description of the first one found, or "" if there is none.
// Only LVM2 physical volume labels are recognised, checked as blkid checks them.
func foreignSignature(dev Device) (string, error) {
	return lvm2Signature(dev)
}

// lvm2Signature finds an LVM2 PV label (util-linux libblkid's probe_lvm2): in one of the
// first four 512-byte sectors, "LABELONE" then the sector's own number, a crc over the rest
// of the sector, and the type "LVM2 001".
func lvm2Signature(dev Device) (string, error) {
	buf := make([]byte, 4*512)
	n, err := dev.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("keyslot: reading the device start for other signatures: %w", err)
	}
	for sector := 0; (sector+1)*512 <= n; sector++ {
		b := buf[sector*512 : (sector+1)*512]
		if !bytes.Equal(b[:8], []byte("LABELONE")) || !bytes.Equal(b[24:32], []byte("LVM2 001")) {
			continue
		}
		if binary.LittleEndian.Uint64(b[8:]) != uint64(sector) {
			continue
		}
		if lvm2CRC(b[20:]) != binary.LittleEndian.Uint32(b[16:]) {
			continue
		}
		return fmt.Sprintf("an LVM2 physical volume label at byte %d", sector*512), nil
	}
	return "", nil
}

// lvm2CRC is LVM's label checksum: the reflected CRC-32 (IEEE polynomial) register started at
// 0xf597a6cf, without the usual inversions.
func lvm2CRC(b []byte) uint32 {
	const initial = 0xf597a6cf
	return ^crc32.Update(^uint32(initial), crc32.IEEETable, b)
}
