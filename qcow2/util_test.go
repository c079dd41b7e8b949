package qcow2

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"crkvol/keyslot"
	"crkvol/sector"
)

// testPassphrase is the LUKS passphrase of every encrypted test image.
const testPassphrase = "correct horse battery staple"

// run runs a tool and fails t with its output when it fails.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// secretArgs are qemu-img's arguments defining secret sec0 as testPassphrase.
func secretArgs() []string {
	return []string{"--object", "secret,id=sec0,data=" + testPassphrase}
}

// makeSource returns size bytes of guest content: per 4 KiB block, random data, zeros or
// a byte pattern, with a long hole in the middle, so images made from it have data, holes
// and zero clusters of every cluster size.
func makeSource(size int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 0x9c0d))
	b := make([]byte, size)
	for off := 0; off < size; off += 4096 {
		end := min(off+4096, size)
		if off > size/3 && off < size/2 {
			continue // the hole
		}
		switch rng.IntN(4) {
		case 0, 1:
			for i := off; i < end; i++ {
				b[i] = byte(rng.Uint32())
			}
		case 2:
			for i := off; i < end; i++ {
				b[i] = byte(i / 512)
			}
		}
	}
	return b
}

// writeFile writes b to a new file in dir and returns its path.
func writeFile(t testing.TB, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// openPath opens the image at path.
func openPath(t testing.TB, path string) *Image {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	img, err := Open(bytes.NewReader(b), int64(len(b)), Options{})
	if err != nil {
		t.Fatalf("Open %s: %v", filepath.Base(path), err)
	}
	return img
}

// unlock unlocks an encrypted image's LUKS1 header with testPassphrase and returns its
// data cipher.
func unlock(t testing.TB, img *Image) SectorCipher {
	t.Helper()
	if !img.Encrypted() {
		return nil
	}
	eh := img.EncryptionHeader()
	hdr, err := keyslot.ParseLUKS1(eh, eh.Size())
	if err != nil {
		t.Fatalf("ParseLUKS1: %v", err)
	}
	mk, _, err := hdr.Unlock(context.Background(), eh, []byte(testPassphrase))
	if err != nil {
		t.Fatalf("Unlock: %v", err)
	}
	c, err := sector.New(mk, 512)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// readAll reads the image's whole guest content, checking that the extents of Map that
// have no data read as zeros.
func readAll(t testing.TB, img *Image, c SectorCipher) []byte {
	t.Helper()
	r, err := img.Reader(c)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, img.Size())
	n, err := r.ReadAt(got, 0)
	if n != len(got) || (err != nil && !errors.Is(err, io.EOF)) {
		t.Fatalf("ReadAt: %d of %d bytes, %v", n, len(got), err)
	}
	ext, err := img.Map(context.Background())
	if err != nil {
		t.Fatalf("Map: %v", err)
	}
	checkMap(t, ext, img.Size())
	for _, e := range ext {
		if !e.Data && !allZero(got[e.Offset:e.Offset+e.Length]) {
			t.Fatalf("Map says %d+%d reads as zeros, but it does not", e.Offset, e.Length)
		}
	}
	return got
}

// checkMap checks that extents cover [0, size) in order, merged.
func checkMap(t testing.TB, ext []Extent, size int64) {
	t.Helper()
	var pos int64
	for i, e := range ext {
		if e.Offset != pos || e.Length <= 0 {
			t.Fatalf("extent %d %+v: want offset %d and a positive length", i, e, pos)
		}
		if i > 0 && ext[i-1].Data == e.Data {
			t.Fatalf("extents %d and %d are both Data=%v: not merged", i-1, i, e.Data)
		}
		pos += e.Length
	}
	if pos != size {
		t.Fatalf("extents end at %d, want %d", pos, size)
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// gunzip returns the decompressed content of a gzip file.
func gunzip(t testing.TB, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return b
}
