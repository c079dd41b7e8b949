package qcow2

import "context"

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
func (img *Image) Map(ctx context.Context) ([]Extent, error) {
	var out []Extent
	add := func(off, n uint64, data bool) {
		if k := len(out) - 1; k >= 0 && out[k].Data == data && uint64(out[k].Offset+out[k].Length) == off {
			out[k].Length += int64(n)
			return
		}
		out = append(out, Extent{Offset: int64(off), Length: int64(n), Data: data})
	}
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
			n := min(cs, end-pos)
			add(pos, n, m.kind == dataCluster || m.kind == compressed)
		}
	}
	return out, nil
}
