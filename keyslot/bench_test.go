package keyslot

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// reportCPU, called before a benchmark's loop, returns a function to call after it that
// reports the process's user and system CPU time per operation (GC and the kernel's work for
// the benchmark's system calls included): a measure other processes on a busy machine
// disturb far less than the wall time of ns/op.
func reportCPU(b *testing.B) func() {
	usage := func() (user, sys time.Duration) {
		var ru unix.Rusage
		if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
			b.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
	}
	u0, s0 := usage()
	return func() {
		u1, s1 := usage()
		n := float64(b.N)
		b.ReportMetric(float64((u1-u0).Microseconds())/n, "user-µs/op")
		b.ReportMetric(float64((s1-s0).Microseconds())/n, "sys-µs/op")
	}
}

// BenchmarkUnlock measures unlocking a keyslot with pbkdf2-sha256 at 1000 iterations, the
// setting used for random, high-entropy passphrases: KDF, reading and decrypting the 256000
// bytes of keyslot material, AF merge over 4000 stripes, and the digest check.
func BenchmarkUnlock(b *testing.B) {
	_, img, vk := newMemImage(b, "bench passphrase")
	b.ReportAllocs()
	b.SetBytes(int64(afSize(len(vk))))
	for b.Loop() {
		key, _, err := img.Unlock([]byte("bench passphrase"), AnyKeyslot)
		if err != nil {
			b.Fatal(err)
		}
		clear(key)
	}
}

// BenchmarkTokenUpdate measures one atomic token replacement: read both copies, validate,
// write both copies.
func BenchmarkTokenUpdate(b *testing.B) {
	_, img, _ := newMemImage(b, "p")
	id, err := img.AddToken(AnyToken, []byte(`{"type":"crkvol-crk","keyslots":["0"],"ciphertext":"AAAA"}`))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	defer reportCPU(b)()
	for b.Loop() {
		if err := img.ReplaceToken(id, []byte(`{"type":"crkvol-crk","keyslots":["0"],"ciphertext":"BBBB"}`)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOpen measures opening an image file: reading both header copies, checking their
// checksums, parsing and validating the JSON metadata.
func BenchmarkOpen(b *testing.B) { benchmarkOpen(b, nil) }

// BenchmarkOpenBuffers is BenchmarkOpen with one Buffers shared by the Images, as a program
// opening many images should.
func BenchmarkOpenBuffers(b *testing.B) { benchmarkOpen(b, &Options{Buffers: &Buffers{}}) }

func benchmarkOpen(b *testing.B, opts *Options) {
	path, _, _ := newFileImage(b, "p", smallFormat())
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	b.ReportAllocs()
	defer reportCPU(b)()
	for b.Loop() {
		if _, err := OpenContext(context.Background(), f, opts); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOpenTokenUpdate measures what a rewrap does to an image file's header: open it,
// then replace a token (read both copies again under the exclusive lock, validate, write and
// sync both copies). The two syncs are most of the wall time on a real disk; B/op and
// allocs/op are the package's own cost.
func BenchmarkOpenTokenUpdate(b *testing.B) { benchmarkOpenTokenUpdate(b, nil) }

// BenchmarkOpenTokenUpdateBuffers is BenchmarkOpenTokenUpdate with one Buffers shared by the
// Images, as a fleet rewrap should.
func BenchmarkOpenTokenUpdateBuffers(b *testing.B) {
	benchmarkOpenTokenUpdate(b, &Options{Buffers: &Buffers{}})
}

func benchmarkOpenTokenUpdate(b *testing.B, opts *Options) {
	path, img, _ := newFileImage(b, "p", smallFormat())
	id, err := img.AddToken(AnyToken, []byte(`{"type":"crkvol-crk","keyslots":["0"],"key_id":"0b9e3c7a-52f1-4d0e-9a55-6f1f2f8a1c3e","ciphertext":"AAAA"}`))
	if err != nil {
		b.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	next := []byte(`{"type":"crkvol-crk","keyslots":["0"],"key_id":"0b9e3c7a-52f1-4d0e-9a55-6f1f2f8a1c3e","ciphertext":"BBBB"}`)
	ctx := context.Background()
	b.ReportAllocs()
	defer reportCPU(b)()
	for b.Loop() {
		img, err := OpenContext(ctx, f, opts)
		if err != nil {
			b.Fatal(err)
		}
		if err := img.UpdateTokenContext(ctx, id, func(json.RawMessage) ([]byte, error) { return next, nil }); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAFMerge measures the AF merge of a 64-byte key: 4000 stripes, 7998 diffusion
// hashes with sha256.
func BenchmarkAFMerge(b *testing.B) {
	material := make([]byte, 64*afStripes)
	for i := range material {
		material[i] = byte(i * 7)
	}
	b.ReportAllocs()
	for b.Loop() {
		key, err := afMerge(material, 64, "sha256")
		if err != nil {
			b.Fatal(err)
		}
		clear(key)
	}
}

// BenchmarkPBKDF2 measures pbkdf2-sha256 at 1000 iterations, the setting of crkvol's
// keyslots and of every volume key digest: a 64-byte keyslot key (two blocks) and a 32-byte
// digest (one block).
func BenchmarkPBKDF2(b *testing.B) {
	salt := make([]byte, saltSize)
	h, err := hashByName("sha256")
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range []int{32, 64} {
		b.Run(fmt.Sprintf("%dB", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				key, err := pbkdf2Derive(context.Background(), []byte("passphrase"), salt, 1000, n, h)
				if err != nil {
					b.Fatal(err)
				}
				clear(key)
			}
		})
	}
}
