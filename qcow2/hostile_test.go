package qcow2

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"crkvol/sector"
)

// seed returns a checked-in seed image, decompressed.
func seed(t testing.TB, name string) []byte {
	t.Helper()
	return gunzip(t, filepath.Join("testdata", name+".qcow2.gz"))
}

// mustOpen opens an unmodified image, for the offsets of its tables.
func mustOpen(t testing.TB, b []byte) *Image {
	t.Helper()
	img, err := Open(bytes.NewReader(b), int64(len(b)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// ext returns the offset of the data of the first header extension of type typ.
func ext(t testing.TB, b []byte, typ uint32) int {
	t.Helper()
	off := v2HeaderLength
	if binary.BigEndian.Uint32(b[4:]) == 3 {
		off = int(binary.BigEndian.Uint32(b[100:]))
	}
	for off+8 <= len(b) {
		ty, n := binary.BigEndian.Uint32(b[off:]), int(binary.BigEndian.Uint32(b[off+4:]))
		if ty == typ {
			return off + 8
		}
		if ty == 0 {
			break
		}
		off += 8 + (n+7)&^7
	}
	t.Fatalf("no header extension %#x", typ)
	return 0
}

// firstData returns the file offset of the first allocated L2 entry of L1 entry l1i.
func firstData(t testing.TB, b []byte, l1i int) int {
	t.Helper()
	img := mustOpen(t, b)
	l2 := int(img.l1[l1i])
	for i := 0; i < int(img.l2Entries); i++ {
		if binary.BigEndian.Uint64(b[l2+8*i:])&offsetMask != 0 {
			return l2 + 8*i
		}
	}
	t.Fatal("no allocated L2 entry")
	return 0
}

func put32(b []byte, off int, v uint32) { binary.BigEndian.PutUint32(b[off:], v) }
func put64(b []byte, off int, v uint64) { binary.BigEndian.PutUint64(b[off:], v) }
func get64(b []byte, off int) uint64    { return binary.BigEndian.Uint64(b[off:]) }

// openAll opens b and, if that succeeds, maps it and reads every extent, returning the
// first error: what a caller importing the image would meet.
func openAll(b []byte, c SectorCipher) (*Image, error) {
	img, err := Open(bytes.NewReader(b), int64(len(b)), Options{CacheClusters: 1})
	if err != nil {
		return nil, err
	}
	if img.Encrypted() && c == nil {
		c = dummyCipher()
	}
	ext, err := img.Map(context.Background())
	if err != nil {
		return img, err
	}
	r, err := img.Reader(c)
	if err != nil {
		return img, err
	}
	buf := make([]byte, 64<<10)
	for _, e := range ext {
		for off := e.Offset; off < e.Offset+e.Length; off += int64(len(buf)) {
			n := min(int64(len(buf)), e.Offset+e.Length-off)
			if _, err := r.ReadAt(buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
				return img, err
			}
		}
	}
	return img, nil
}

// dummyCipher is a fixed-key cipher for reading encrypted images whose content does not
// matter.
func dummyCipher() SectorCipher {
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i)
	}
	c, err := sector.New(key, 512)
	if err != nil {
		panic(err)
	}
	return c
}

// TestRefusals checks that each unsupported or malformed image is refused with an error
// wrapping the right sentinel and naming what is wrong, at Open or when its clusters are
// mapped and read.
func TestRefusals(t *testing.T) {
	plain := seed(t, "v3-64k")
	v2 := seed(t, "v2-64k")
	small := seed(t, "v3-512") // eight L1 entries
	luks := seed(t, "luks-v3-4k-aes128-sha1")
	comp := seed(t, "compressed-64k")
	pImg, sImg := mustOpen(t, plain), mustOpen(t, small)
	l1 := int(pImg.h.l1Offset)
	ref := int(pImg.h.refTableOffset)
	l2 := int(pImg.l1[0])
	cs := int(pImg.clusterSize)
	dataEntry := firstData(t, plain, 0)
	compEntry := firstData(t, comp, 0)

	cases := []struct {
		name   string
		base   []byte
		mutate func(b []byte) []byte
		is     error
		want   string
	}{
		// Refused features.
		{"legacy AES", plain, func(b []byte) []byte { put32(b, 32, 1); return b }, ErrUnsupported, "legacy AES encryption"},
		{"unknown crypt method", plain, func(b []byte) []byte { put32(b, 32, 7); return b }, ErrUnsupported, "crypt_method 7"},
		{"unknown incompatible bit", plain, func(b []byte) []byte { put64(b, 72, 1<<7); return b }, ErrUnsupported, "unknown incompatible feature bit 7"},
		{"unknown incompatible bit named", plain, func(b []byte) []byte {
			// Rename the feature table's entry of incompatible bit 3 to bit 9, and set bit 9.
			ft := ext(t, b, extFeatureNames)
			for e := ft; ; e += 48 {
				if b[e] == 0 && b[e+1] == 3 {
					b[e+1] = 9
					break
				}
			}
			put64(b, 72, 1<<9)
			return b
		}, ErrUnsupported, `unknown incompatible feature bit 9 ("compression type")`},
		{"dirty", plain, func(b []byte) []byte { put64(b, 72, incompatDirty); return b }, ErrUnsupported, "dirty: refcounts may be stale"},
		{"corrupt", plain, func(b []byte) []byte { put64(b, 72, incompatCorrupt); return b }, ErrFormat, "corrupt"},
		{"external data file bit", plain, func(b []byte) []byte { put64(b, 72, incompatDataFile); return b }, ErrUnsupported, "external data file"},
		{"extended L2 bit", plain, func(b []byte) []byte { put64(b, 72, incompatExtendedL2); return b }, ErrUnsupported, "extended L2 entries"},
		{"raw external data", plain, func(b []byte) []byte { put64(b, 88, autoclearRawData); return b }, ErrUnsupported, "raw external data"},
		{"compression bit with zlib", plain, func(b []byte) []byte { put64(b, 72, incompatCompression); return b }, ErrFormat, "compression type bit set"},
		{"unknown compression type", plain, func(b []byte) []byte { put64(b, 72, incompatCompression); b[104] = 9; return b }, ErrUnsupported, "compression type 9"},
		{"compression type without bit", plain, func(b []byte) []byte { b[104] = 1; return b }, ErrFormat, "compression_type 1 without"},
		{"backing file", plain, func(b []byte) []byte {
			copy(b[cs-16:], "base.img")
			put64(b, 8, uint64(cs-16))
			put32(b, 16, 8)
			return b
		}, ErrUnsupported, `backing file "base.img"`},
		{"version 4", plain, func(b []byte) []byte { put32(b, 4, 4); return b }, ErrUnsupported, "version 4"},
		{"compressed cluster in encrypted image", luks, func(b []byte) []byte {
			e := firstData(t, b, 0)
			put64(b, e, get64(b, e)&^flagCopied|flagCompressed)
			return b
		}, ErrUnsupported, "compressed cluster in an encrypted image"},
		{"LUKS without its header extension", luks, func(b []byte) []byte { put32(b, ext(t, b, extEncryption)-8, 0x12345678); return b }, ErrFormat, "without the full disk encryption header extension"},
		{"encryption header in a plain image", luks, func(b []byte) []byte { put32(b, 32, 0); return b }, ErrFormat, "in an unencrypted image"},

		// Malformed headers.
		{"empty", plain, func(b []byte) []byte { return b[:0] }, ErrFormat, "shorter than a qcow2 header"},
		{"short", plain, func(b []byte) []byte { return b[:71] }, ErrFormat, "shorter than a qcow2 header"},
		{"wrong magic", plain, func(b []byte) []byte { b[3] = 0xfc; return b }, ErrFormat, "bad magic"},
		{"v3 header cut", plain, func(b []byte) []byte { return b[:90] }, ErrFormat, "version 3 header truncated"},
		{"cluster_bits 8", plain, func(b []byte) []byte { put32(b, 20, 8); return b }, ErrFormat, "cluster_bits 8"},
		{"cluster_bits 22", plain, func(b []byte) []byte { put32(b, 20, 22); return b }, ErrFormat, "cluster_bits 22"},
		{"cluster_bits huge", plain, func(b []byte) []byte { put32(b, 20, 0xffffffff); return b }, ErrFormat, "cluster_bits 4294967295"},
		{"header_length short", plain, func(b []byte) []byte { put32(b, 100, 96); return b }, ErrFormat, "header_length 96"},
		{"header_length odd", plain, func(b []byte) []byte { put32(b, 100, 108); return b }, ErrFormat, "header_length 108"},
		{"header_length past cluster", plain, func(b []byte) []byte { put32(b, 100, 1<<20); return b }, ErrFormat, "header_length 1048576"},
		{"refcount_order 7", plain, func(b []byte) []byte { put32(b, 96, 7); return b }, ErrFormat, "refcount_order 7"},
		{"extension past cluster", plain, func(b []byte) []byte { put32(b, ext(t, b, extFeatureNames)-4, 1<<20); return b }, ErrFormat, "runs past the header cluster"},
		{"extension twice", luks, func(b []byte) []byte {
			e := ext(t, b, extEncryption)
			// Turn the next extension (the feature name table) into a second pointer.
			put32(b, e+16, extEncryption)
			return b
		}, ErrFormat, "appears twice"},
		{"encryption extension length", luks, func(b []byte) []byte { put32(b, ext(t, b, extEncryption)-4, 8); return b }, ErrFormat, "full disk encryption header extension of 8 bytes"},
		{"encryption header unaligned", luks, func(b []byte) []byte { e := ext(t, b, extEncryption); put64(b, e, get64(b, e)+512); return b }, ErrFormat, "full disk encryption header offset"},
		{"encryption header past end", luks, func(b []byte) []byte { e := ext(t, b, extEncryption); put64(b, e+8, 1<<40); return b }, ErrFormat, "runs past the end of the file"},
		{"encryption header length 0", luks, func(b []byte) []byte { put64(b, ext(t, b, extEncryption)+8, 0); return b }, ErrFormat, "length 0"},
		{"encryption header over L1", luks, func(b []byte) []byte { put64(b, ext(t, b, extEncryption), get64(b, 40)); return b }, ErrFormat, "overlaps"},

		// Lying sizes and table offsets.
		{"size huge", plain, func(b []byte) []byte { put64(b, 24, 1<<63); return b }, ErrFormat, "too large"},
		{"size beyond L1", plain, func(b []byte) []byte { put64(b, 24, 1<<40); return b }, ErrFormat, "l1_size 1 too small"},
		{"l1_size overflowing", plain, func(b []byte) []byte { put32(b, 36, 0xffffffff); return b }, ErrFormat, "exceeds QEMU's limit"},
		{"l1_size past end", plain, func(b []byte) []byte { put32(b, 36, 4<<20); return b }, ErrFormat, "L1 table at"},
		{"L1 unaligned", plain, func(b []byte) []byte { put64(b, 40, uint64(l1+8)); return b }, ErrFormat, "L1 table offset"},
		{"L1 at 0", plain, func(b []byte) []byte { put64(b, 40, 0); return b }, ErrFormat, "over the header"},
		{"L1 past end", plain, func(b []byte) []byte { put64(b, 40, 1<<50); return b }, ErrFormat, "runs past the end of the file"},
		{"L1 over refcount table", plain, func(b []byte) []byte { put64(b, 40, uint64(ref)); return b }, ErrFormat, "overlaps"},
		{"refcount table unaligned", plain, func(b []byte) []byte { put64(b, 48, uint64(ref+512)); return b }, ErrFormat, "refcount table offset"},
		{"refcount table past end", plain, func(b []byte) []byte { put64(b, 48, ^uint64(0)&^0xffff); return b }, ErrFormat, "refcount table at"},
		{"refcount table empty", plain, func(b []byte) []byte { put32(b, 56, 0); return b }, ErrFormat, "refcount_table_clusters is 0"},
		{"refcount table huge", plain, func(b []byte) []byte { put32(b, 56, 1<<20); return b }, ErrFormat, "exceeds QEMU's limit"},
		{"refcount block unaligned", plain, func(b []byte) []byte { put64(b, ref, get64(b, ref)+8); return b }, ErrFormat, "refcount block offset"},
		{"refcount block past end", plain, func(b []byte) []byte { put64(b, ref, 1<<50); return b }, ErrFormat, "beyond the end of the file"},
		{"refcount block is the L1 table", plain, func(b []byte) []byte { put64(b, ref, uint64(l1)); return b }, ErrFormat, "overlaps"},
		{"snapshots past end", plain, func(b []byte) []byte { put32(b, 60, 1); put64(b, 64, 1<<50); return b }, ErrFormat, "snapshot table at"},
		{"snapshots unaligned", plain, func(b []byte) []byte { put32(b, 60, 1); put64(b, 64, uint64(cs+8)); return b }, ErrFormat, "snapshot table offset"},
		{"snapshots too many", plain, func(b []byte) []byte { put32(b, 60, 1<<20); put64(b, 64, uint64(cs)); return b }, ErrFormat, "internal snapshots exceed"},

		// Lying L1 entries: cyclic and overlapping tables.
		{"L1 reserved bits", plain, func(b []byte) []byte { put64(b, l1, get64(b, l1)|1<<57); return b }, ErrFormat, "reserved bits set"},
		{"L2 unaligned", plain, func(b []byte) []byte { put64(b, l1, get64(b, l1)+512); return b }, ErrFormat, "not aligned"},
		{"L2 past end", plain, func(b []byte) []byte { put64(b, l1, 1<<50); return b }, ErrFormat, "runs past the end of the file"},
		{"L2 is the L1 table", plain, func(b []byte) []byte { put64(b, l1, uint64(l1)|flagCopied); return b }, ErrFormat, "overlaps"},
		{"L2 is the refcount table", plain, func(b []byte) []byte { put64(b, l1, uint64(ref)); return b }, ErrFormat, "overlaps"},
		{"L2 shared by two L1 entries", small, func(b []byte) []byte {
			o := int(sImg.h.l1Offset)
			put64(b, o+8, get64(b, o))
			return b
		}, ErrFormat, "overlaps"},

		// Lying L2 entries, found by Map.
		{"data in a metadata cluster", plain, func(b []byte) []byte { put64(b, dataEntry, uint64(cs)|flagCopied); return b }, ErrFormat, "inside the"},
		{"data is the L2 table", plain, func(b []byte) []byte { put64(b, dataEntry, uint64(l2)|flagCopied); return b }, ErrFormat, "inside the L2 table"},
		{"data is the L1 table", plain, func(b []byte) []byte { put64(b, dataEntry, uint64(l1)|flagCopied); return b }, ErrFormat, "inside the L1 table"},
		{"data unaligned", plain, func(b []byte) []byte { put64(b, dataEntry, get64(b, dataEntry)+512); return b }, ErrFormat, "not aligned"},
		{"zero cluster unaligned", plain, func(b []byte) []byte { put64(b, dataEntry, get64(b, dataEntry)+512|flagZero); return b }, ErrFormat, "not aligned"},
		{"data sub-cluster bits", plain, func(b []byte) []byte { put64(b, dataEntry, get64(b, dataEntry)|0x100); return b }, ErrFormat, "reserved bits set"},
		{"data past end", plain, func(b []byte) []byte { put64(b, dataEntry, 1<<50|flagCopied); return b }, ErrFormat, "beyond the end of the file"},
		{"data at 0", plain, func(b []byte) []byte { put64(b, dataEntry, flagCopied); return b }, ErrFormat, "host offset 0"},
		{"L2 reserved bits", plain, func(b []byte) []byte { put64(b, dataEntry, get64(b, dataEntry)|1<<60); return b }, ErrFormat, "reserved bits set"},
		{"zero flag in v2", v2, func(b []byte) []byte { e := firstData(t, b, 0); put64(b, e, get64(b, e)|flagZero); return b }, ErrFormat, "zero flag in a version 2 image"},
		{"compressed with copied flag", comp, func(b []byte) []byte { put64(b, compEntry, get64(b, compEntry)|flagCopied); return b }, ErrFormat, "copied flag"},
		{"compressed past end", comp, func(b []byte) []byte { put64(b, compEntry, flagCompressed|1<<50); return b }, ErrFormat, "beyond the end of the file"},
		{"compressed in the L2 table", comp, func(b []byte) []byte {
			put64(b, compEntry, flagCompressed|uint64(mustOpen(t, b).l1[0])+100)
			return b
		}, ErrFormat, "inside the L2 table"},
		{"compressed garbage", comp, func(b []byte) []byte {
			host := get64(b, compEntry) & (1<<54 - 1)
			for i := range 512 {
				b[int(host)+i] = 0xff
			}
			return b
		}, ErrFormat, "compressed cluster"},

		// Host clusters shared within the active mapping, found by Map.
		{"data cluster shared", plain, func(b []byte) []byte {
			put64(b, dataEntry+8, get64(b, dataEntry))
			return b
		}, ErrFormat, "mapped by more than one guest cluster"},
		{"data cluster shared across L2 tables", small, func(b []byte) []byte {
			put64(b, firstData(t, b, 1), get64(b, firstData(t, b, 0)))
			return b
		}, ErrFormat, "mapped by more than one guest cluster"},
		{"compressed data shared", comp, func(b []byte) []byte {
			put64(b, compEntry+8, get64(b, compEntry))
			return b
		}, ErrFormat, "start 0 bytes apart"},
		{"compressed data overlapping", comp, func(b []byte) []byte {
			put64(b, compEntry+8, get64(b, compEntry)+10)
			return b
		}, ErrFormat, "start 10 bytes apart"},
		{"compressed data in a data cluster", comp, func(b []byte) []byte {
			host := get64(b, compEntry) & (1<<54 - 1)
			put64(b, compEntry+8, host&^uint64(cs-1)|flagCopied)
			return append(b, make([]byte, cs-len(b)%cs)...) // the last cluster whole

		}, ErrFormat, "shares host cluster"},
		{"compressed short", comp, func(b []byte) []byte {
			e := get64(b, compEntry)
			put64(b, compEntry, e&(1<<54-1)|flagCompressed) // one sector only
			return b
		}, ErrFormat, "compressed cluster"},
	}
	// The Feature of each refusal wrapping ErrUnsupported.
	wantFeature := map[string]Feature{
		"legacy AES":                            FeatureLegacyAES,
		"unknown crypt method":                  FeatureCryptMethod,
		"unknown incompatible bit":              FeatureUnknownIncompatible,
		"unknown incompatible bit named":        FeatureUnknownIncompatible,
		"dirty":                                 FeatureDirty,
		"external data file bit":                FeatureExternalDataFile,
		"extended L2 bit":                       FeatureExtendedL2,
		"raw external data":                     FeatureExternalDataFile,
		"unknown compression type":              FeatureCompressionType,
		"backing file":                          FeatureBackingFile,
		"version 4":                             FeatureVersion,
		"compressed cluster in encrypted image": FeatureEncryptedCompressed,
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.mutate(bytes.Clone(tc.base))
			_, err := openAll(b, nil)
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v\nwant %v naming %q", err, tc.is, tc.want)
			}
			var ue *UnsupportedError
			if isU := errors.As(err, &ue); isU != (tc.is == ErrUnsupported) {
				t.Fatalf("errors.As(*UnsupportedError) = %v for %v", isU, err)
			} else if isU && ue.Feature != wantFeature[tc.name] {
				t.Fatalf("Feature = %q, want %q", ue.Feature, wantFeature[tc.name])
			}
			t.Log(err)
		})
	}
}

// TestTruncated cuts seeds at many offsets: each cut image is refused with ErrFormat, or
// (cut only past what the image uses) reads back unchanged.
func TestTruncated(t *testing.T) {
	for _, name := range []string{"v3-64k", "v2-512", "compressed-v2-512", "zero-v3-4k", "luks-v3-4k-aes128-sha1"} {
		t.Run(name, func(t *testing.T) {
			b := seed(t, name)
			c := dummyCipher()
			if !mustOpen(t, b).Encrypted() {
				c = nil
			}
			want := readAll(t, mustOpen(t, b), c)
			cuts := []int{0, 1, 71, 72, 103, 104, 111, 112, 511, 512, 513, 4095, 4096}
			for i := 1; i < 100; i++ {
				cuts = append(cuts, len(b)*i/100)
			}
			for _, n := range cuts {
				if n >= len(b) {
					continue
				}
				img, err := openAll(b[:n], c)
				if err != nil {
					if !errors.Is(err, ErrFormat) {
						t.Fatalf("cut at %d: %v, want ErrFormat", n, err)
					}
					continue
				}
				if got := readAll(t, img, c); !bytes.Equal(got, want) {
					t.Fatalf("cut at %d: opens and reads different content", n)
				}
			}
		})
	}
}
