package kms_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// BenchmarkRemoteRewrapBatch rewraps 1000 volumes' passphrases over HTTP (kpapi on loopback,
// a bbolt store with fsync): in one RewrapBatch ("batch"), and as a Key Protect without the
// batch route makes it, volume.EachConcurrency Rewrap calls at once ("single"). It reports
// ns/item and the server store's commits and flushes per item.
func BenchmarkRemoteRewrapBatch(b *testing.B) {
	for _, mode := range []string{"batch", "single"} {
		b.Run(mode, func(b *testing.B) {
			ctx := context.Background()
			tenants, err := kpapi.OpenTenants(filepath.Join(b.TempDir(), "state"), crk.Options{MasterKey: bytes.Repeat([]byte{4}, 32)})
			if err != nil {
				b.Fatal(err)
			}
			defer tenants.Close()
			inst, svc := tenants.Default()
			srv := httptest.NewServer(kpapi.NewServer(tenants))
			defer srv.Close()
			apiKey, err := tenants.CreateAPIKey(inst)
			if err != nil {
				b.Fatal(err)
			}
			remote, err := kms.NewRemote(kms.RemoteConfig{URL: srv.URL, Instance: inst, APIKey: apiKey})
			if err != nil {
				b.Fatal(err)
			}
			k, err := svc.CreateRootKey(ctx, "bench")
			if err != nil {
				b.Fatal(err)
			}
			items := make([]volume.RewrapItem, kpapi.MaxBatchItems)
			for i := range items {
				aad := []string{fmt.Sprintf("5b3ae5d6-6a4c-4b8e-9f0e-2f4c1d7a%04d", i)}
				w, err := svc.Wrap(ctx, k.ID, []byte("a volume passphrase of 32 bytes!"), aad)
				if err != nil {
					b.Fatal(err)
				}
				items[i] = volume.RewrapItem{Ciphertext: w.Ciphertext, AAD: aad}
			}
			if _, err := svc.RotateKey(ctx, k.ID, nil); err != nil {
				b.Fatal(err)
			}
			before := svc.StoreStats()
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				var errs []error
				if mode == "batch" {
					_, errs, err = remote.RewrapBatch(ctx, k.ID, items)
				} else {
					_, errs = volume.RewrapEach(ctx, remote, k.ID, items)
				}
				if err != nil {
					b.Fatal(err)
				}
				for _, e := range errs {
					if e != nil {
						b.Fatal(e)
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
