package qcow2

import (
	"container/list"
	"encoding/binary"
	"fmt"
	"sync"
)

// Bits of L1 and L2 entries ("Cluster mapping").
const (
	offsetMask     = 0x00fffffffffffe00 // bits 9-55: a cluster-aligned host offset
	flagCopied     = 1 << 63            // refcount exactly one
	flagCompressed = 1 << 62            // L2: compressed cluster descriptor
	flagZero       = 1 << 0             // L2, standard, version 3: reads as zeros
	l1Reserved     = ^uint64(offsetMask) &^ flagCopied
	l2Reserved     = ^uint64(offsetMask) &^ (flagCopied | flagCompressed | flagZero)
)

// kind is what a guest cluster maps to.
type kind uint8

const (
	unallocated kind = iota // no L2 table or no host cluster: reads as zeros
	zeroCluster             // the zero flag: reads as zeros
	dataCluster             // a standard cluster at host
	compressed              // compressed data at host, n bytes
)

// mapping is the decoded, validated L2 entry of one guest cluster.
type mapping struct {
	kind kind
	host uint64 // file offset of the data
	n    uint64 // compressed: bytes of compressed data (clipped to the file)
}

// lookup returns the mapping of guest cluster gc, which must lie within the virtual size.
func (img *Image) lookup(gc uint64) (mapping, error) {
	l1i := gc / img.l2Entries
	l2off := img.l1[l1i]
	if l2off == 0 {
		return mapping{}, nil
	}
	table, err := img.l2Table(l2off, l1i)
	if err != nil {
		return mapping{}, err
	}
	return img.decode(table[gc%img.l2Entries], gc)
}

// decode validates the L2 entry e of guest cluster gc and says where its data is.
func (img *Image) decode(e, gc uint64) (mapping, error) {
	cs := img.clusterSize
	if e&flagCompressed != 0 {
		return img.decodeCompressed(e, gc)
	}
	if e&l2Reserved != 0 {
		return mapping{}, fmt.Errorf("%w: L2 entry of guest offset %#x (%#016x): reserved bits set", ErrFormat, gc*cs, e)
	}
	host := e & offsetMask
	if host&(cs-1) != 0 {
		return mapping{}, fmt.Errorf("%w: L2 entry of guest offset %#x: host offset %#x not aligned to the %d-byte cluster", ErrFormat, gc*cs, host, cs)
	}
	if e&flagZero != 0 {
		if img.h.version < 3 {
			return mapping{}, fmt.Errorf("%w: L2 entry of guest offset %#x: zero flag in a version 2 image", ErrFormat, gc*cs)
		}
		// A preallocated zero cluster's host offset is never read.
		return mapping{kind: zeroCluster}, nil
	}
	if host == 0 {
		if e&flagCopied != 0 {
			return mapping{}, fmt.Errorf("%w: L2 entry of guest offset %#x: host offset 0 (an external data file layout)", ErrFormat, gc*cs)
		}
		return mapping{}, nil
	}
	if !img.inFile(host, cs) {
		return mapping{}, fmt.Errorf("%w: guest offset %#x maps to host cluster %#x beyond the end of the file (%d bytes)", ErrFormat, gc*cs, host, img.fileSize)
	}
	if r, ok := img.overlapsMeta(host, cs); ok {
		return mapping{}, fmt.Errorf("%w: guest offset %#x maps to host cluster %#x inside the %s (%#x..%#x)", ErrFormat, gc*cs, host, r, r.start, r.end)
	}
	return mapping{kind: dataCluster, host: host}, nil
}

// decodeCompressed validates a compressed cluster descriptor: the host offset in the low
// x = 62-(cluster_bits-8) bits, then the number of 512-byte sectors beyond the first that
// the compressed data spans.
func (img *Image) decodeCompressed(e, gc uint64) (mapping, error) {
	cs := img.clusterSize
	if img.Encrypted() {
		return mapping{}, unsupported(FeatureEncryptedCompressed, "compressed cluster in an encrypted image (guest offset %#x)", gc*cs)
	}
	if e&flagCopied != 0 {
		return mapping{}, fmt.Errorf("%w: L2 entry of guest offset %#x: compressed cluster with the copied flag set", ErrFormat, gc*cs)
	}
	x := 62 - (img.clusterBits - 8)
	host := e & (1<<x - 1)
	sectors := (e>>x)&(1<<(img.clusterBits-8)-1) + 1
	if host>>56 != 0 {
		return mapping{}, fmt.Errorf("%w: L2 entry of guest offset %#x: compressed data offset %#x beyond 2^56", ErrFormat, gc*cs, host)
	}
	n := sectors*512 - host%512
	if host >= img.fileSize {
		return mapping{}, fmt.Errorf("%w: guest offset %#x: compressed data at %#x beyond the end of the file (%d bytes)", ErrFormat, gc*cs, host, img.fileSize)
	}
	// The last sector may be cut short by the end of the file: QEMU writes the compressed
	// bytes only, and decompression stops once it has a whole cluster.
	n = min(n, img.fileSize-host)
	if r, ok := img.overlapsMeta(host, n); ok {
		return mapping{}, fmt.Errorf("%w: guest offset %#x: compressed data at %#x..%#x inside the %s (%#x..%#x)", ErrFormat, gc*cs, host, host+n, r, r.start, r.end)
	}
	return mapping{kind: compressed, host: host, n: n}, nil
}

// l2Table returns the L2 table at off (the table of L1 entry l1i), from the cache or the
// file. The returned slice is shared and must not be modified.
func (img *Image) l2Table(off, l1i uint64) ([]uint64, error) {
	if t := img.cache.get(off); t != nil {
		return t, nil
	}
	buf := make([]byte, img.clusterSize)
	if err := readFull(img.r, buf, off); err != nil {
		return nil, fmt.Errorf("%w: reading the L2 table of L1 entry %d: %w", ErrFormat, l1i, err)
	}
	t := make([]uint64, img.l2Entries)
	for i := range t {
		t[i] = binary.BigEndian.Uint64(buf[i*8:])
	}
	img.cache.put(off, t)
	return t, nil
}

// l2Cache keeps the most recently used L2 tables, at most max of them. Tables are immutable
// once cached, so a table handed out stays valid after its eviction.
type l2Cache struct {
	mu    sync.Mutex
	max   int
	byOff map[uint64]*list.Element
	lru   list.List // front: most recently used; values are *l2Entry
}

type l2Entry struct {
	off   uint64
	table []uint64
}

func newL2Cache(max int) *l2Cache {
	return &l2Cache{max: max, byOff: make(map[uint64]*list.Element, max)}
}

func (c *l2Cache) get(off uint64) []uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.byOff[off]
	if !ok {
		return nil
	}
	c.lru.MoveToFront(el)
	return el.Value.(*l2Entry).table
}

func (c *l2Cache) put(off uint64, t []uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byOff[off]; ok { // another reader loaded it meanwhile
		c.lru.MoveToFront(el)
		return
	}
	c.byOff[off] = c.lru.PushFront(&l2Entry{off, t})
	for c.lru.Len() > c.max {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.byOff, old.Value.(*l2Entry).off)
	}
}

// len returns how many tables the cache holds.
func (c *l2Cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}
