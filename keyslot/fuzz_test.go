package keyslot

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// headerSeeds returns the header regions (both 16 KiB copies) of the cryptsetup-made images.
func headerSeeds(f *testing.F) [][]byte {
	paths, err := filepath.Glob(filepath.Join(imagesDir, "*.img"))
	if err != nil || len(paths) == 0 {
		f.Fatalf("no seed images in %s (%v)", imagesDir, err)
	}
	var seeds [][]byte
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, b[:2*DefaultMetadataSize])
	}
	return seeds
}

// fixPrimaryChecksum recomputes the primary copy's checksum so that mutations reach the JSON
// parser instead of stopping at the checksum.
func fixPrimaryChecksum(data []byte) {
	if len(data) < binHeaderSize {
		return
	}
	h, err := parseBinHeader(data)
	if err != nil || uint64(len(data)) < h.hdrSize {
		return
	}
	sum, err := diskChecksum(h.csumAlg, data[:binHeaderSize], data[binHeaderSize:h.hdrSize])
	if err != nil {
		return
	}
	copy(data[offCsum:offCsum+csumLen], sum[:])
}

// FuzzParseHeader opens arbitrary bytes as a LUKS2 device. It must never panic, and metadata
// that parses must survive a marshal/parse round trip unchanged.
func FuzzParseHeader(f *testing.F) {
	for _, s := range headerSeeds(f) {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, data []byte, fix bool) {
		if len(data) > 8<<20 {
			return
		}
		data = bytes.Clone(data)
		if fix {
			fixPrimaryChecksum(data)
		}
		img, err := Open(&memDevice{buf: data}, nil)
		if err != nil {
			return
		}
		st := img.snapshot()
		text := st.meta.marshal()
		again, err := parseMetadata(text, st.bin.hdrSize)
		if err != nil {
			t.Fatalf("marshalled metadata does not parse: %v\n%s", err, text)
		}
		if !bytes.Equal(again.marshal(), text) {
			t.Fatalf("marshal is not stable:\n%s\n%s", text, again.marshal())
		}
		_ = img.Keyslots()
		_ = img.Tokens()
		_ = img.Segment()
		_ = img.Health()
	})
}

// FuzzParseMetadata feeds arbitrary JSON text straight to the metadata parser.
func FuzzParseMetadata(f *testing.F) {
	for _, s := range headerSeeds(f) {
		text, err := jsonText(s[binHeaderSize:DefaultMetadataSize])
		if err != nil {
			f.Fatal(err)
		}
		f.Add(text)
	}
	f.Fuzz(func(t *testing.T, text []byte) {
		m, err := parseMetadata(text, DefaultMetadataSize)
		if err != nil {
			return
		}
		out := m.marshal()
		again, err := parseMetadata(out, DefaultMetadataSize)
		if err != nil {
			t.Fatalf("marshalled metadata does not parse: %v\n%s", err, out)
		}
		if !bytes.Equal(again.marshal(), out) {
			t.Fatalf("marshal is not stable")
		}
	})
}

// FuzzAFMerge checks that merging arbitrary material never panics and inverts a split.
func FuzzAFMerge(f *testing.F) {
	f.Add([]byte("0123456789abcdef0123456789abcdef"), uint8(1))
	f.Fuzz(func(t *testing.T, key []byte, h uint8) {
		if len(key) == 0 || len(key) > 128 {
			return
		}
		name := []string{"sha1", "sha256", "sha512"}[h%3]
		split, err := afSplit(key, name, bytes.NewReader(bytes.Repeat([]byte{h}, len(key)*afStripes)))
		if err != nil {
			t.Fatal(err)
		}
		got, err := afMerge(split, len(key), name)
		if err != nil || !bytes.Equal(got, key) {
			t.Fatalf("merge(split(key)) != key: %v", err)
		}
	})
}
