package qcow2

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"

	"crkvol/internal/tooltest"
)

// memFile is an in-memory io.WriterAt and io.ReaderAt.
type memFile struct{ b []byte }

func (m *memFile) WriteAt(p []byte, off int64) (int, error) {
	if end := int(off) + len(p); end > len(m.b) {
		if end > cap(m.b) {
			m.b = append(make([]byte, 0, max(end, 2*cap(m.b))), m.b...)
		}
		m.b = m.b[:end]
	}
	copy(m.b[off:], p)
	return len(p), nil
}

func (m *memFile) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// checkRefcounts does what qemu-img check does for an image of this package: it counts the
// references to every cluster (header, LUKS area, L1, L2, data, refcount table and blocks)
// and compares them with the refcount blocks, which must say 1 for each used cluster and 0
// beyond; and it checks the copied flags.
func checkRefcounts(t testing.TB, b []byte) {
	t.Helper()
	img := mustOpen(t, b)
	if len(b)%int(img.clusterSize) != 0 {
		t.Fatalf("file size %d is not a whole number of clusters", len(b))
	}
	cs := img.clusterSize
	n := uint64(len(b)) / cs
	refs := make([]int, n)
	use := func(off, length uint64) {
		for c := off / cs; c < (off+length+cs-1)/cs; c++ {
			refs[c]++
		}
	}
	h := img.h
	use(0, cs)
	if h.encryption {
		use(h.encOffset, h.encLength)
	}
	use(h.l1Offset, uint64(h.l1Size)*8)
	use(h.refTableOffset, uint64(h.refTableClusters)*cs)
	be := binary.BigEndian
	for i := uint64(0); i < uint64(h.refTableClusters)*cs/8; i++ {
		if e := be.Uint64(b[h.refTableOffset+8*i:]); e != 0 {
			use(e, cs)
		}
	}
	for i := uint64(0); i < uint64(h.l1Size); i++ {
		e := be.Uint64(b[h.l1Offset+8*i:])
		if e == 0 {
			continue
		}
		if e&flagCopied == 0 {
			t.Fatalf("L1 entry %d lacks the copied flag", i)
		}
		l2 := e & offsetMask
		use(l2, cs)
		for j := uint64(0); j < cs/8; j++ {
			d := be.Uint64(b[l2+8*j:])
			if d == 0 {
				continue
			}
			if d&flagCopied == 0 {
				t.Fatalf("L2 entry %d/%d lacks the copied flag", i, j)
			}
			use(d&offsetMask, cs)
		}
	}
	for c := uint64(0); c < n; c++ {
		blk := be.Uint64(b[h.refTableOffset+8*(c/(cs/2)):])
		rc := be.Uint16(b[blk+2*(c%(cs/2)):])
		if refs[c] != 1 || rc != 1 {
			t.Fatalf("cluster %d: %d references, refcount %d; want 1 and 1", c, refs[c], rc)
		}
	}
}

// want returns what the image of src written with extents reads as: src inside the Data
// extents, zeros outside.
func wantContent(src []byte, extents []Extent) []byte {
	if extents == nil {
		return bytes.Clone(src)
	}
	out := make([]byte, len(src))
	for _, e := range extents {
		if e.Data && e.Offset < int64(len(src)) {
			end := min(e.Offset+e.Length, int64(len(src)))
			copy(out[e.Offset:end], src[e.Offset:end])
		}
	}
	return out
}

func TestWriteRoundTrip(t *testing.T) {
	src := makeSource(2<<20+4096, 7)
	sparse := []Extent{
		{Offset: 0, Length: 5000, Data: true},
		{Offset: 5000, Length: 100000, Data: false},
		{Offset: 105000, Length: 700, Data: true}, // two Data extents in one cluster
		{Offset: 105700, Length: 300, Data: false},
		{Offset: 106000, Length: 1 << 20, Data: true},
		{Offset: 2<<20 - 8192, Length: 10 << 20, Data: true}, // runs past the size
	}
	header := bytes.Repeat([]byte("LUKS\xba\xbe"), 2000)
	for _, cs := range []int{512, 4096, 65536, 2 << 20} {
		for _, tc := range []struct {
			name      string
			extents   []Extent
			encrypted bool
		}{{"all", nil, false}, {"sparse", sparse, false}, {"encrypted", nil, true}, {"encrypted-sparse", sparse, true}} {
			t.Run(fmt.Sprintf("%d/%s", cs, tc.name), func(t *testing.T) {
				if !tooltest.Long() && (cs == 4096 || cs == 2<<20 && tc.name != "encrypted-sparse") {
					t.Skip("long run only (CRKVOL_LONG_TESTS=1): the plain run keeps this test under 0.3 s")
				}
				opts := WriteOptions{Size: int64(len(src)), ClusterSize: cs}
				var c SectorCipher
				if tc.encrypted {
					c = dummyCipher()
					opts.EncryptionHeader, opts.Cipher = header, c
				}
				var f memFile
				var calls []int64
				opts.Progress = func(done, total int64) {
					if total != int64(len(src)) || (len(calls) > 0 && done < calls[len(calls)-1]) {
						t.Fatalf("progress %d/%d after %v", done, total, calls)
					}
					calls = append(calls, done)
				}
				st, err := Write(context.Background(), &f, bytes.NewReader(src), tc.extents, opts)
				if err != nil {
					t.Fatal(err)
				}
				if st.FileSize != int64(len(f.b)) {
					t.Fatalf("FileSize %d, wrote %d bytes", st.FileSize, len(f.b))
				}
				if len(calls) < 2 || calls[0] != 0 || calls[len(calls)-1] != int64(len(src)) {
					t.Fatalf("progress calls %v", calls)
				}
				checkRefcounts(t, f.b)
				img := mustOpen(t, f.b)
				if img.Version() != 3 || img.ClusterSize() != cs || img.Size() != int64(len(src)) || img.Encrypted() != tc.encrypted {
					t.Fatalf("version %d cluster %d size %d encrypted %v", img.Version(), img.ClusterSize(), img.Size(), img.Encrypted())
				}
				if tc.encrypted {
					eh, err := io.ReadAll(img.EncryptionHeader())
					if err != nil || !bytes.Equal(eh, header) {
						t.Fatalf("EncryptionHeader: %d bytes, %v", len(eh), err)
					}
					if bytes.Contains(f.b, src[:4096]) {
						t.Fatal("plaintext found in the encrypted image")
					}
				}
				want := wantContent(src, tc.extents)
				if got := readAll(t, img, c); !bytes.Equal(got, want) {
					t.Fatal("reads back different content")
				}
				// Exactly the clusters with non-zero content are stored.
				var stored int64
				for off := 0; off < len(want); off += cs {
					if !allZero(want[off:min(off+cs, len(want))]) {
						stored++
					}
				}
				if st.DataClusters != stored {
					t.Fatalf("DataClusters %d, want %d", st.DataClusters, stored)
				}
				ext, err := img.Map(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				var mapped int64
				for _, e := range ext {
					if e.Data {
						mapped += (e.Length + int64(cs) - 1) / int64(cs)
					}
				}
				if mapped != stored {
					t.Fatalf("Map has %d data clusters, want %d", mapped, stored)
				}
			})
		}
	}
}

// TestWriteEmpty writes an image with no data: header, L1, refcounts only.
func TestWriteEmpty(t *testing.T) {
	var f memFile
	st, err := Write(context.Background(), &f, bytes.NewReader(nil), []Extent{{Offset: 0, Length: 1 << 30}}, WriteOptions{Size: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	if st.DataClusters != 0 || st.FileSize != 4*65536 {
		t.Fatalf("%+v, want no data in 4 clusters (header, L1, refcount block and table)", st)
	}
	checkRefcounts(t, f.b)
	ext, err := mustOpen(t, f.b).Map(context.Background())
	if err != nil || len(ext) != 1 || ext[0].Data {
		t.Fatalf("Map = %v, %v", ext, err)
	}
}

// TestWriteManyRefcountBlocks writes enough 512-byte clusters to need several refcount
// blocks (256 clusters each) and a multi-cluster refcount table.
func TestWriteManyRefcountBlocks(t *testing.T) {
	src := make([]byte, 9<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < len(src); i += 512 {
		src[i] = byte(rng.Uint32() | 1)
	}
	var f memFile
	st, err := Write(context.Background(), &f, bytes.NewReader(src), nil, WriteOptions{Size: int64(len(src)), ClusterSize: 512})
	if err != nil {
		t.Fatal(err)
	}
	img := mustOpen(t, f.b)
	if img.h.refTableClusters < 2 {
		t.Fatalf("refcount table of %d clusters, want several", img.h.refTableClusters)
	}
	if st.DataClusters != int64(len(src)/512) {
		t.Fatalf("DataClusters %d", st.DataClusters)
	}
	checkRefcounts(t, f.b)
	if got := readAll(t, img, nil); !bytes.Equal(got, src) {
		t.Fatal("reads back different content")
	}
}

type failWriter struct{}

func (failWriter) WriteAt([]byte, int64) (int, error) { return 0, errors.New("disk full") }

func TestWriteErrors(t *testing.T) {
	src := bytes.NewReader(make([]byte, 1<<20))
	hdr := []byte("hdr")
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	cases := []struct {
		name    string
		ctx     context.Context
		dst     io.WriterAt
		src     io.ReaderAt
		extents []Extent
		opts    WriteOptions
		want    string
	}{
		{name: "no size", opts: WriteOptions{}, want: "positive multiple of 512"},
		{name: "odd size", opts: WriteOptions{Size: 1000}, want: "positive multiple of 512"},
		{name: "cluster 1000", opts: WriteOptions{Size: 1 << 20, ClusterSize: 1000}, want: "power of two"},
		{name: "cluster 256", opts: WriteOptions{Size: 1 << 20, ClusterSize: 256}, want: "power of two"},
		{name: "cluster 4M", opts: WriteOptions{Size: 1 << 20, ClusterSize: 4 << 20}, want: "power of two"},
		{name: "header without cipher", opts: WriteOptions{Size: 1 << 20, EncryptionHeader: hdr}, want: "go together"},
		{name: "cipher without header", opts: WriteOptions{Size: 1 << 20, Cipher: dummyCipher()}, want: "go together"},
		{name: "empty header", opts: WriteOptions{Size: 1 << 20, EncryptionHeader: []byte{}, Cipher: dummyCipher()}, want: "empty EncryptionHeader"},
		{name: "too big for L1", opts: WriteOptions{Size: 1 << 50, ClusterSize: 512}, want: "over QEMU's limit"},
		{name: "unsorted extents", extents: []Extent{{Offset: 4096, Length: 10, Data: true}, {Offset: 0, Length: 10, Data: true}}, opts: WriteOptions{Size: 1 << 20}, want: "overlaps or precedes"},
		{name: "overlapping extents", extents: []Extent{{Offset: 0, Length: 10}, {Offset: 5, Length: 10}}, opts: WriteOptions{Size: 1 << 20}, want: "overlaps or precedes"},
		{name: "negative extent", extents: []Extent{{Offset: -1, Length: 10}}, opts: WriteOptions{Size: 1 << 20}, want: "out of range"},
		{name: "short source", src: bytes.NewReader(make([]byte, 1000)), opts: WriteOptions{Size: 1 << 20}, want: "reading the source"},
		{name: "write fails", dst: failWriter{}, opts: WriteOptions{Size: 1 << 20}, want: "disk full"},
		{name: "canceled", ctx: canceled, opts: WriteOptions{Size: 1 << 20}, want: context.Canceled.Error()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, dst, s := tc.ctx, tc.dst, tc.src
			if ctx == nil {
				ctx = context.Background()
			}
			if dst == nil {
				dst = &memFile{}
			}
			if s == nil {
				s = src
			}
			_, err := Write(ctx, dst, s, tc.extents, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
