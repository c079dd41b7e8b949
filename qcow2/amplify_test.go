package qcow2

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
)

// aliasedImage builds an image whose every L2 entry maps the same host data: a tiny file
// claiming l1Entries full L2 tables of data. With compressed, the entries are compressed
// descriptors of one deflated cluster; otherwise standard entries of one host cluster.
// Layout: header, refcount table, L1 table, the L2 tables, then the data.
func aliasedImage(t *testing.T, cs, l1Entries uint64, compressed bool) []byte {
	t.Helper()
	be := binary.BigEndian
	bits := uint64(0)
	for 1<<bits < cs {
		bits++
	}
	data := (3 + l1Entries) * cs
	payload := bytes.Repeat([]byte{0x5a}, int(cs))
	entry := data | flagCopied
	if compressed {
		var z bytes.Buffer
		w, _ := flate.NewWriter(&z, flate.BestCompression)
		w.Write(payload)
		w.Close()
		payload = z.Bytes()
		x := 62 - (bits - 8)
		sectors := (uint64(len(payload)) + 511) / 512
		entry = flagCompressed | (sectors-1)<<x | data
	}
	b := make([]byte, data+uint64(len(payload)))
	copy(b[data:], payload)
	be.PutUint32(b[0:], magic)
	be.PutUint32(b[4:], 3)
	be.PutUint32(b[20:], uint32(bits))
	be.PutUint64(b[24:], l1Entries*(cs/8)*cs)
	be.PutUint32(b[36:], uint32(l1Entries))
	be.PutUint64(b[40:], 2*cs)
	be.PutUint64(b[48:], cs)
	be.PutUint32(b[56:], 1)
	be.PutUint32(b[96:], 4)
	be.PutUint32(b[100:], 104)
	for i := range l1Entries {
		l2 := (3 + i) * cs
		be.PutUint64(b[2*cs+i*8:], l2|flagCopied)
		for j := range cs / 8 {
			be.PutUint64(b[l2+j*8:], entry)
		}
	}
	return b
}

// TestAliasAmplification: a file of a few clusters whose L2 entries all map one host
// cluster (or one compressed cluster) would have Map report gigabytes of data, which a
// copy would then read and write. Map refuses the sharing.
func TestAliasAmplification(t *testing.T) {
	for _, tc := range []struct {
		name       string
		cs         uint64
		compressed bool
		want       string
	}{
		{"standard 4k", 4096, false, "mapped by more than one guest cluster"},
		{"standard 512", 512, false, "mapped by more than one guest cluster"},
		{"compressed 4k", 4096, true, "start 0 bytes apart"},
		{"compressed 64k", 65536, true, "start 0 bytes apart"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := aliasedImage(t, tc.cs, 2, tc.compressed)
			img, err := Open(bytes.NewReader(b), int64(len(b)), Options{})
			if err != nil {
				t.Fatal(err)
			}
			ext, err := img.Map(t.Context())
			if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("file of %d bytes, guest of %d: Map = %v, %v; want ErrFormat naming %q", len(b), img.Size(), ext, err, tc.want)
			}
		})
	}
}

// sparseImage is an io.ReaderAt over a synthetic image that is mostly a hole: a header,
// a refcount table and an L1 table whose every entry names a distinct cluster, and zeros
// elsewhere. It lets a test open an image with very many metadata regions without making
// the file.
type sparseImage struct {
	hdr, ref, l1     []byte
	refOff, l1Off, n int64
}

func (s *sparseImage) ReadAt(p []byte, off int64) (int, error) {
	if off >= s.n {
		return 0, io.EOF
	}
	clear(p)
	for _, part := range []struct {
		b   []byte
		off int64
	}{{s.hdr, 0}, {s.ref, s.refOff}, {s.l1, s.l1Off}} {
		if off < part.off+int64(len(part.b)) && part.off < off+int64(len(p)) {
			lo := max(off, part.off)
			hi := min(off+int64(len(p)), part.off+int64(len(part.b)))
			copy(p[lo-off:hi-off], part.b[lo-part.off:hi-part.off])
		}
	}
	if n := s.n - off; n < int64(len(p)) {
		return int(n), io.EOF
	}
	return len(p), nil
}

// TestOpenAllocation opens an image with a 128 KiB refcount table and a 512 KiB L1 table,
// every entry a distinct cluster: 80 K metadata regions in a sparse file. Open may
// allocate about as much as those tables (it keeps them), not a named region each.
func TestOpenAllocation(t *testing.T) {
	const cs = 512
	const refBytes, l1Bytes = 128 << 10, 512 << 10
	be := binary.BigEndian
	s := &sparseImage{hdr: make([]byte, cs), ref: make([]byte, refBytes), l1: make([]byte, l1Bytes), refOff: cs, l1Off: cs + refBytes}
	blocks := uint64(s.l1Off + l1Bytes)
	for i := range uint64(refBytes / 8) {
		be.PutUint64(s.ref[i*8:], blocks+i*cs)
	}
	l2s := blocks + refBytes/8*cs
	for i := range uint64(l1Bytes / 8) {
		be.PutUint64(s.l1[i*8:], l2s+i*cs)
	}
	s.n = int64(l2s + l1Bytes/8*cs)
	h := s.hdr
	be.PutUint32(h[0:], magic)
	be.PutUint32(h[4:], 3)
	be.PutUint32(h[20:], 9)
	be.PutUint64(h[24:], l1Bytes/8*(cs/8)*cs)
	be.PutUint32(h[36:], l1Bytes/8)
	be.PutUint64(h[40:], uint64(s.l1Off))
	be.PutUint64(h[48:], uint64(s.refOff))
	be.PutUint32(h[56:], refBytes/cs)
	be.PutUint32(h[96:], 4)
	be.PutUint32(h[100:], 104)

	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	img, err := Open(s, s.n, Options{})
	runtime.ReadMemStats(&m1)
	if err != nil {
		t.Fatal(err)
	}
	alloc := m1.TotalAlloc - m0.TotalAlloc
	t.Logf("file %d MiB (sparse), guest %d GiB, %d metadata regions: Open allocated %d KiB", s.n>>20, img.Size()>>30, len(img.clusters), alloc>>10)
	if limit := uint64(3*(refBytes+l1Bytes) + 256<<10); alloc > limit {
		t.Fatalf("Open allocated %d bytes for %d bytes of tables (limit %d)", alloc, refBytes+l1Bytes, limit)
	}
}

// TestMinDeflated checks the bound Map's compressed-sharing rule relies on: deflate at its
// best never goes below minDeflated, and minDeflated keeps data within 1032 times the file.
func TestMinDeflated(t *testing.T) {
	for bits := minClusterBits; bits <= maxClusterBits; bits++ {
		cs := uint64(1) << bits
		var z bytes.Buffer
		w, _ := flate.NewWriter(&z, flate.BestCompression)
		w.Write(make([]byte, cs))
		w.Close()
		m := minDeflated(cs)
		if m < 1 || uint64(z.Len()) < m || cs > 1032*m {
			t.Errorf("cluster %d: minDeflated %d, deflate made %d bytes", cs, m, z.Len())
		}
	}
}
