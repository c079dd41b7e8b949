package qcow2

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// maxFuzzSeed leaves the larger seeds out of the fuzz corpus: the fuzzer minimizes every
// new interesting input, which takes its full minute on inputs of tens of KiB, and a large
// image finds nothing a small one does not.
const maxFuzzSeed = 16 << 10

// fuzzReadBudget bounds the bytes one fuzz input reads: Map refuses host clusters shared
// within the active mapping, but compressed clusters may still claim about 1032 times the
// file's size, and zero clusters and holes any virtual size.
const fuzzReadBudget = 256 << 10

// FuzzOpen opens arbitrary bytes as an image, maps it and reads its extents (data and
// zeros, within a budget): nothing may panic, every error must wrap ErrFormat or
// ErrUnsupported, Map must cover the disk, and ranges Map calls zeros must read as zeros.
// Data extents must total at most 1032 times the input's size plus a cluster (Map's bound
// on sharing).
// Allocations are bounded by the input's size (Open and Map read no table larger than the
// file), which the fuzzer's memory limit checks. Seeded with the small qemu-made images and
// with images Write makes, plain and encrypted. Run it with a bounded minimization, or the
// fuzzer spends most of its time minimizing each new input:
//
//	go test ./qcow2 -run XXX -fuzz FuzzOpen -fuzztime 5m -fuzzminimizetime 1000x -parallel 1
func FuzzOpen(f *testing.F) {
	paths, err := filepath.Glob(filepath.Join("testdata", "*.qcow2.gz"))
	if err != nil || len(paths) == 0 {
		f.Fatalf("no seeds in testdata: %v", err)
	}
	for _, p := range paths {
		if b := gunzip(f, p); len(b) <= maxFuzzSeed {
			f.Add(b)
		}
	}
	src := makeSource(8<<10, 11)
	for _, opts := range []WriteOptions{
		{Size: 8 << 10, ClusterSize: 512},
		{Size: 8 << 10, ClusterSize: 4096},
		{Size: 8 << 10, ClusterSize: 512, EncryptionHeader: bytes.Repeat([]byte{0xa5}, 1000), Cipher: dummyCipher()},
	} {
		var m memFile
		if _, err := Write(context.Background(), &m, bytes.NewReader(src), nil, opts); err != nil {
			f.Fatal(err)
		}
		f.Add(m.b)
	}
	f.Fuzz(fuzzOpen)
}

// fuzzOpen is FuzzOpen's body.
func fuzzOpen(t *testing.T, b []byte) {
	{
		sentinel := func(what string, err error) {
			if !errors.Is(err, ErrFormat) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("%s: error wraps neither ErrFormat nor ErrUnsupported: %v", what, err)
			}
		}
		img, err := Open(bytes.NewReader(b), int64(len(b)), Options{CacheClusters: 2})
		if err != nil {
			sentinel("Open", err)
			return
		}
		ext, err := img.Map(context.Background())
		if err != nil {
			sentinel("Map", err)
			return
		}
		checkMap(t, ext, img.Size())
		var data int64
		for _, e := range ext {
			if e.Data {
				data += e.Length
			}
		}
		if limit := 1032*int64(len(b)) + int64(img.ClusterSize()); data > limit {
			t.Fatalf("Map reports %d bytes of data in a file of %d bytes", data, len(b))
		}
		var c SectorCipher
		if img.Encrypted() {
			c = dummyCipher()
		}
		r, err := img.Reader(c)
		if err != nil {
			t.Fatal(err)
		}
		budget := fuzzReadBudget
		buf := make([]byte, 8192)
		for _, e := range ext {
			// The first and last 8 KiB of each extent, and what lies between while the
			// budget lasts.
			for off := e.Offset; off < e.Offset+e.Length && budget > 0; {
				n := int(min(int64(len(buf)), e.Offset+e.Length-off))
				got, err := r.ReadAt(buf[:n], off)
				if err != nil && !errors.Is(err, io.EOF) {
					sentinel("ReadAt", err)
					return
				}
				if got != n {
					t.Fatalf("ReadAt(%d at %d) = %d bytes without an error", n, off, got)
				}
				if !e.Data && !allZero(buf[:n]) {
					t.Fatalf("Map says %d+%d reads as zeros; %d+%d does not", e.Offset, e.Length, off, n)
				}
				budget -= n
				off += int64(n)
				if last := e.Offset + e.Length - int64(len(buf)); off < last && budget < fuzzReadBudget/2 {
					off = last
				}
			}
		}
		if eh := img.EncryptionHeader(); eh != nil {
			if _, err := io.Copy(io.Discard, eh); err != nil {
				t.Fatalf("reading the encryption header Open validated: %v", err)
			}
		}
	}
}

// TestFuzzSeeds checks that the fuzz corpus directory, if present, holds only files the
// fuzzer can read, so a stale corpus fails here rather than confusing a fuzz run.
func TestFuzzSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzOpen")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil || !bytes.HasPrefix(b, []byte("go test fuzz v1\n")) {
			t.Errorf("%s: not a fuzz corpus file (%v)", e.Name(), err)
		}
	}
}
