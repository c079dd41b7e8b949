package qcow2

import (
	"bytes"
	"context"
	"fmt"
	"testing"
)

// BenchmarkReadAt reads a 16 MiB image made by Write in 1 MiB requests, plain and encrypted,
// for the cluster sizes QEMU users pick.
func BenchmarkReadAt(b *testing.B) {
	src := makeSource(16<<20, 5)
	for _, cs := range []int{4096, 65536, 2 << 20} {
		for _, encrypted := range []bool{false, true} {
			b.Run(fmt.Sprintf("cluster=%d/encrypted=%v", cs, encrypted), func(b *testing.B) {
				opts := WriteOptions{Size: int64(len(src)), ClusterSize: cs}
				var c SectorCipher
				if encrypted {
					c = dummyCipher()
					opts.EncryptionHeader, opts.Cipher = make([]byte, 4096), c
				}
				var f memFile
				if _, err := Write(context.Background(), &f, bytes.NewReader(src), nil, opts); err != nil {
					b.Fatal(err)
				}
				img := mustOpen(b, f.b)
				r, err := img.Reader(c)
				if err != nil {
					b.Fatal(err)
				}
				p := make([]byte, 1<<20)
				b.SetBytes(int64(len(src)))
				b.ReportAllocs()
				for b.Loop() {
					for off := int64(0); off < int64(len(src)); off += int64(len(p)) {
						if _, err := r.ReadAt(p, off); err != nil {
							b.Fatal(err)
						}
					}
				}
			})
		}
	}
}
