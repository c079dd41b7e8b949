package crk

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
)

// BenchmarkRewrapBatch compares rewrapping 1000 ciphertexts (a fleet rotation's key-service
// work) in one RewrapBatch with 1000 Rewrap calls made one after the other, on a bbolt store
// with fsync: ns/item, and the store's commits and flushes per item (StoreStats).
func BenchmarkRewrapBatch(b *testing.B) {
	for _, mode := range []string{"batch", "single"} {
		b.Run(mode, func(b *testing.B) {
			ctx := context.Background()
			svc, err := Open(filepath.Join(b.TempDir(), "crk.db"), Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer svc.Close()
			k, err := svc.CreateRootKey(ctx, "bench")
			if err != nil {
				b.Fatal(err)
			}
			items := make([]RewrapItem, MaxBatchItems)
			for i := range items {
				aad := []string{fmt.Sprintf("5b3ae5d6-6a4c-4b8e-9f0e-2f4c1d7a%04d", i)}
				w, err := svc.Wrap(ctx, k.ID, material(32, byte(i)), aad)
				if err != nil {
					b.Fatal(err)
				}
				items[i] = RewrapItem{Ciphertext: w.Ciphertext, AAD: aad}
			}
			if _, err := svc.RotateKey(ctx, k.ID, nil); err != nil {
				b.Fatal(err)
			}
			before := svc.StoreStats()
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if mode == "batch" {
					if _, _, err := svc.RewrapBatch(ctx, k.ID, items); err != nil {
						b.Fatal(err)
					}
					continue
				}
				for _, it := range items {
					if _, err := svc.Rewrap(ctx, k.ID, it.Ciphertext, it.AAD); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.StopTimer()
			st := svc.StoreStats()
			n := float64(b.N * len(items))
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/n, "ns/item")
			b.ReportMetric(float64(st.Commits-before.Commits)/n, "commits/item")
			b.ReportMetric(float64(st.Flushes-before.Flushes)/n, "flushes/item")
		})
	}
}
