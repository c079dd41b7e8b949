package qcow2

import (
	"context"
	"fmt"
	"slices"
)

// Extent is a range of the guest disk. Data is false for a range that reads as zeros
// because it is unallocated or made of zero clusters; true for allocated (standard or
// compressed) clusters, which may of course hold zeros too.
type Extent struct {
	Offset, Length int64
	Data           bool
}

// Map returns the extents of the guest disk, covering [0, Size()) in order, adjacent
// extents of one kind merged. It reads every L2 table of the active L1 table and checks
// every entry it uses, so an image whose Map succeeds has no malformed mapping left for
// the reader to find (corrupt compressed data aside, which only reading reveals). Map
// checks ctx between L2 tables.
//
// Map also refuses host clusters shared within the active mapping, which would let a
// small file claim a huge amount of data: QEMU shares a cluster only between the active
// L1 table and internal snapshots (refcount above one, copied on write), never between two
// guest clusters of the active table. So no two guest clusters may map to one standard host
// cluster; compressed data may share a host cluster with other compressed data (QEMU packs
// it) but never with a standard cluster, and no two compressed clusters may start less
// than the fewest bytes a cluster can deflate to (minDeflated; QEMU never lets compressed
// data overlap). Data extents thus total at most 1032 times the file's size plus a
// cluster (deflate's best ratio is 1032:1). This
// costs 8 bytes per standard and 16 per compressed cluster mapped, for the duration of the
// call. [Image.Reader] resolves clusters one at a time and does not see sharing: copy the
// Data extents that Map returned.
func (img *Image) Map(ctx context.Context) ([]Extent, error) {
	var out []Extent
	add := func(off, n uint64, data bool) {
		if k := len(out) - 1; k >= 0 && out[k].Data == data && uint64(out[k].Offset+out[k].Length) == off {
			out[k].Length += int64(n)
			return
		}
		out = append(out, Extent{Offset: int64(off), Length: int64(n), Data: data})
	}
	var std []uint64     // host offsets of standard data clusters
	var comp []compRange // compressed data
	size := img.h.size
	cs := img.clusterSize
	span := cs * img.l2Entries // guest bytes one L2 table maps
	for l1i, l2off := range img.l1 {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		start := uint64(l1i) * span
		end := min(start+span, size)
		if l2off == 0 {
			add(start, end-start, false)
			continue
		}
		table, err := img.l2Table(l2off, uint64(l1i))
		if err != nil {
			return nil, err
		}
		for pos := start; pos < end; pos += cs {
			gc := pos >> img.clusterBits
			m, err := img.decode(table[gc%img.l2Entries], gc)
			if err != nil {
				return nil, err
			}
			switch m.kind {
			case dataCluster:
				std = append(std, m.host)
			case compressed:
				comp = append(comp, compRange{m.host, m.host + m.n, pos})
			}
			n := min(cs, end-pos)
			add(pos, n, m.kind == dataCluster || m.kind == compressed)
		}
	}
	if err := img.checkSharing(std, comp); err != nil {
		return nil, err
	}
	return out, nil
}

// compRange is the compressed data of the guest cluster at guest: host..end in the file.
type compRange struct{ host, end, guest uint64 }

// checkSharing refuses host clusters that Map found shared within the active mapping (see
// Map). It sorts std and comp.
func (img *Image) checkSharing(std []uint64, comp []compRange) error {
	cs := img.clusterSize
	slices.Sort(std)
	for i := 1; i < len(std); i++ {
		if std[i] == std[i-1] {
			return fmt.Errorf("%w: host cluster %#x is mapped by more than one guest cluster of the active L1 table (QEMU shares clusters only with internal snapshots)", ErrFormat, std[i])
		}
	}
	if len(comp) == 0 {
		return nil
	}
	slices.SortFunc(comp, func(a, b compRange) int {
		switch {
		case a.host < b.host:
			return -1
		case a.host > b.host:
			return 1
		}
		return 0
	})
	gap := minDeflated(cs)
	for i, c := range comp {
		if i > 0 && c.host-comp[i-1].host < gap {
			return fmt.Errorf("%w: compressed data of guest offsets %#x and %#x start %d bytes apart, at %#x and %#x (no %d-byte cluster deflates to fewer than %d bytes)", ErrFormat, comp[i-1].guest, c.guest, c.host-comp[i-1].host, comp[i-1].host, c.host, cs, gap)
		}
		// A standard cluster in any host cluster the compressed data touches?
		first := c.host &^ (cs - 1)
		j, _ := slices.BinarySearch(std, first)
		if j < len(std) && std[j] < c.end {
			return fmt.Errorf("%w: guest offset %#x: compressed data at %#x..%#x shares host cluster %#x with a standard data cluster", ErrFormat, c.guest, c.host, c.end, std[j])
		}
	}
	return nil
}

// minDeflated is the fewest bytes that raw deflate can produce n bytes from: after a first
// literal, matches of at most 258 bytes, each a length and a distance code of at least a
// bit each. It is at least n/1032 (deflate's best ratio) and at least 1.
func minDeflated(n uint64) uint64 {
	matches := (n - 1 + 257) / 258
	return (2*matches + 7) / 8
}
