package qcow2

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
)

// TestReadAtEdges reads across cluster boundaries, unaligned (inside encrypted sectors),
// at the end of the disk and past it.
func TestReadAtEdges(t *testing.T) {
	for _, name := range []string{"v3-512", "compressed-64k", "luks-v3-4k-aes128-sha1", "zero-v3-4k"} {
		t.Run(name, func(t *testing.T) {
			b := seed(t, name)
			img := mustOpen(t, b)
			var c SectorCipher
			if img.Encrypted() {
				c = dummyCipher()
			}
			whole := readAll(t, img, c)
			r, err := img.Reader(c)
			if err != nil {
				t.Fatal(err)
			}
			size := img.Size()
			rng := rand.New(rand.NewPCG(3, 4))
			for range 300 {
				off := rng.Int64N(size)
				n := rng.IntN(3 * img.ClusterSize())
				p := make([]byte, n)
				got, err := r.ReadAt(p, off)
				want := min(int64(n), size-off)
				if int64(got) != want {
					t.Fatalf("ReadAt(%d bytes at %d) = %d, want %d", n, off, got, want)
				}
				if (want < int64(n)) != errors.Is(err, io.EOF) || (err != nil && !errors.Is(err, io.EOF)) {
					t.Fatalf("ReadAt(%d bytes at %d): %v", n, off, err)
				}
				if !bytes.Equal(p[:got], whole[off:off+want]) {
					t.Fatalf("ReadAt(%d bytes at %d) differs from the whole read", n, off)
				}
			}
			if n, err := r.ReadAt(make([]byte, 10), size); n != 0 || err != io.EOF {
				t.Fatalf("ReadAt at the end: %d, %v", n, err)
			}
			if n, err := r.ReadAt(make([]byte, 10), size+12345); n != 0 || err != io.EOF {
				t.Fatalf("ReadAt past the end: %d, %v", n, err)
			}
			if _, err := r.ReadAt(make([]byte, 10), -1); err == nil {
				t.Fatal("ReadAt at -1 succeeded")
			}
		})
	}
}

// TestReaderCipher checks that Reader wants a cipher exactly for encrypted images.
func TestReaderCipher(t *testing.T) {
	plain := mustOpen(t, seed(t, "v3-4k"))
	enc := mustOpen(t, seed(t, "luks-v3-4k-aes128-sha1"))
	if _, err := plain.Reader(dummyCipher()); err == nil {
		t.Error("plain image accepted a cipher")
	}
	if _, err := enc.Reader(nil); err == nil {
		t.Error("encrypted image read without a cipher")
	}
	if plain.EncryptionHeader() != nil {
		t.Error("plain image has an encryption header")
	}
	if eh := enc.EncryptionHeader(); eh == nil || eh.Size() != 1052672 {
		t.Errorf("encryption header %v, want QEMU's 1052672-byte LUKS1 area for a 32-byte key", eh)
	}
}

// TestConcurrentReads reads one image from many goroutines through a one-table cache, so
// that tables are evicted and reloaded while others use them; run with -race.
func TestConcurrentReads(t *testing.T) {
	b := seed(t, "v3-512") // eight L2 tables
	img, err := Open(bytes.NewReader(b), int64(len(b)), Options{CacheClusters: 1})
	if err != nil {
		t.Fatal(err)
	}
	whole := readAll(t, mustOpen(t, b), nil)
	r, err := img.Reader(nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 9))
			p := make([]byte, 4096)
			for range 200 {
				off := rng.Int64N(img.Size() - int64(len(p)))
				if _, err := r.ReadAt(p, off); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(p, whole[off:off+int64(len(p))]) {
					errs <- errors.New("concurrent read differs")
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := img.cache.len(); n != 1 {
		t.Fatalf("cache holds %d tables, want at most 1", n)
	}
}

// TestMapCanceled checks that Map stops when its context ends.
func TestMapCanceled(t *testing.T) {
	img := mustOpen(t, seed(t, "v3-512"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := img.Map(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Map: %v, want context.Canceled", err)
	}
}

// TestOpenArguments checks Open's own argument errors.
func TestOpenArguments(t *testing.T) {
	b := seed(t, "v3-4k")
	if _, err := Open(nil, 100, Options{}); err == nil {
		t.Error("nil reader accepted")
	}
	if _, err := Open(bytes.NewReader(b), -1, Options{}); err == nil {
		t.Error("negative size accepted")
	}
	if _, err := Open(bytes.NewReader(b), int64(len(b)), Options{CacheClusters: -1}); err == nil {
		t.Error("negative cache accepted")
	}
	// A file cut short: the tables past the cut fail to read, as ErrFormat.
	if _, err := openAll(b[:8192], nil); !errors.Is(err, ErrFormat) {
		t.Errorf("short read: %v", err)
	}
}
