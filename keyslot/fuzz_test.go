package keyslot

import (
	"bytes"
	"encoding/binary"
	"flag"
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

// compactCopy encodes one 16 KiB header copy of a seed image for FuzzParseHeader: the used
// part of its binary header followed by its JSON area without the trailing zero padding.
func compactCopy(f *testing.F, c []byte) []byte {
	if !allZero(c[binHeaderUsed:binHeaderSize]) {
		f.Fatal("seed binary header has data past the checksum")
	}
	area := bytes.TrimRight(c[binHeaderSize:], "\x00")
	return append(bytes.Clone(c[:binHeaderUsed]), area...)
}

// fuzzDevice assembles a device from two compact copies (see compactCopy): the primary at 0
// and the secondary at the offset the loader looks at first — the primary's hdr_size when
// that is a size LUKS2 allows, else 16 KiB — or, when at is not 0, at the at-th allowed size,
// so that the probe over every size is fuzzed too. Each copy's first binHeaderUsed bytes go
// to its binary header, the rest to its JSON area; whatever does not fit before the next copy
// or the device end is dropped. With fix, each copy gets a correct checksum so that mutations
// reach the JSON parser.
func fuzzDevice(primary, secondary []byte, at uint8, fix bool) []byte {
	primarySize := uint64(16 << 10)
	if len(primary) >= offHdrSize+8 {
		if n := binary.BigEndian.Uint64(primary[offHdrSize:]); validHdrSize(n) {
			primarySize = n
		}
	}
	off := primarySize
	if at != 0 {
		off = hdrSizes[int(at-1)%len(hdrSizes)]
	}
	data := make([]byte, max(2*off, primarySize))
	place := func(c []byte, at, end uint64) {
		n := min(len(c), binHeaderUsed)
		copy(data[at:at+binHeaderSize], c[:n])
		if uint64(len(c)) > binHeaderUsed && at+binHeaderSize < end {
			copy(data[at+binHeaderSize:end], c[binHeaderUsed:])
		}
	}
	place(primary, 0, min(off, uint64(len(data))))
	place(secondary, off, uint64(len(data)))
	if fix {
		fixChecksum(data, 0)
		fixChecksum(data, off)
	}
	return data
}

// fixChecksum recomputes the checksum of the copy at off when its binary header parses and
// its area fits the device.
func fixChecksum(data []byte, off uint64) {
	if uint64(len(data)) < off+binHeaderSize {
		return
	}
	h, err := parseBinHeader(data[off:])
	if err != nil || uint64(len(data))-off < h.hdrSize {
		return
	}
	sum, err := diskChecksum(h.csumAlg, data[off:off+binHeaderSize], data[off+binHeaderSize:off+h.hdrSize])
	if err != nil {
		return
	}
	copy(data[off+offCsum:off+offCsum+csumLen], sum[:])
}

// FuzzParseHeader opens a device made of two fuzzed header copies (see fuzzDevice). It must
// never panic, metadata that parses must survive a marshal/parse round trip unchanged, and
// KeyslotText must find each keyslot's text as encoding/json does.
//
// Speed: the fuzzer minimizes every input that finds new coverage, and minimizing a byte
// slice takes a number of runs quadratic in its length (Go's internal/fuzz minimizeBytes
// removes every sub-range). For the raw 32 KiB of a device, mostly zero padding, each new
// input used the whole default budget of 60 s, so a 30 s run showed 9 execs (0/s). The inputs
// are therefore the two copies in compact form (about 3 KiB: minimization is ~100 times
// cheaper), and unless -fuzzminimizetime is given the budget is fuzzMinimizeRuns runs per
// input, which still shortens the tail of an input and minimizes crashers a good deal.
func FuzzParseHeader(f *testing.F) {
	limitMinimization(f)
	for _, s := range headerSeeds(f) {
		p, sec := compactCopy(f, s[:DefaultMetadataSize]), compactCopy(f, s[DefaultMetadataSize:])
		if d := fuzzDevice(p, sec, 0, false); !bytes.Equal(d, s) {
			f.Fatal("the compact form of a seed does not give back its header region")
		}
		f.Add(p, sec, uint8(0), false)
		f.Add(p, sec, uint8(0), true)
		f.Add(p, sec, uint8(2), true) // secondary at 32 KiB, where it is not
	}
	f.Fuzz(func(t *testing.T, primary, secondary []byte, at uint8, fix bool) {
		data := fuzzDevice(primary, secondary, at, fix)
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
		checkKeyslotText(t, st.text, st.meta)
		for _, ks := range img.Keyslots() {
			if kt, err := img.KeyslotText(ks.ID); err == nil && kt.SeqID != img.SeqID() {
				t.Fatalf("KeyslotText(%d).SeqID %d, image %d", ks.ID, kt.SeqID, img.SeqID())
			}
		}
		_ = img.Tokens()
		_ = img.Segment()
		_ = img.Health()
	})
}

// fuzzMinimizeRuns is the default minimization budget of FuzzParseHeader, in runs.
const fuzzMinimizeRuns = "2000x"

// limitMinimization sets -test.fuzzminimizetime to fuzzMinimizeRuns unless the command line
// gave it; the coordinator reads it when f.Fuzz starts fuzzing.
func limitMinimization(f *testing.F) {
	const name = "test.fuzzminimizetime"
	given := false
	flag.Visit(func(fl *flag.Flag) { given = given || fl.Name == name })
	if given || flag.Lookup(name) == nil {
		return
	}
	if err := flag.Set(name, fuzzMinimizeRuns); err != nil {
		f.Fatalf("setting -%s: %v", name, err)
	}
}

// FuzzParseMetadata feeds arbitrary JSON text straight to the metadata parser; for text that
// parses, KeyslotText must find each keyslot's text as encoding/json does.
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
		checkKeyslotText(t, text, m)
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
