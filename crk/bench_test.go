package crk

import (
	"context"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

func benchService(b *testing.B, noSync bool) (*Service, *Key) {
	b.Helper()
	svc, err := Open(filepath.Join(b.TempDir(), "crk.db"), Options{MasterKey: material(32, 1), NoSync: noSync, Clock: NewManualClock(t0)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { svc.Close() })
	k, err := svc.CreateRootKey(context.Background(), "bench")
	if err != nil {
		b.Fatal(err)
	}
	return svc, k
}

// BenchmarkRewrap measures one rewrap of a 32-byte passphrase to the latest version, with
// its durable audit event (events of concurrent callers share one fsync).
func BenchmarkRewrap(b *testing.B) {
	svc, k := benchService(b, false)
	ctx := context.Background()
	w, err := svc.Wrap(ctx, k.ID, material(32, 2), []string{"vol"})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := svc.RotateKey(ctx, k.ID, nil); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetParallelism(16) // a fleet rotation's worker pool
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := svc.Rewrap(ctx, k.ID, w.Ciphertext, []string{"vol"}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkRotate measures one durable rotation (a new sealed version and its event).
func BenchmarkRotate(b *testing.B) {
	svc, k := benchService(b, false)
	clock := svc.clock.(*ManualClock)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		clock.Advance(time.Hour)
		if _, err := svc.RotateKey(ctx, k.ID, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUpdateRegistration measures one durable registration update by a lone caller (a
// batched change: concurrent callers share its commit, a lone one commits at once, with no
// wait for company).
func BenchmarkUpdateRegistration(b *testing.B) {
	svc, k := benchService(b, false)
	ctx := context.Background()
	const crn = "crn:v1:local:public:is:local:a/crkvol::volume:bench"
	if _, err := svc.Register(ctx, k.ID, crn, RegisterOptions{}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		desc := strconv.Itoa(i)
		if _, err := svc.UpdateRegistration(ctx, k.ID, crn, RegistrationUpdate{Description: &desc}); err != nil {
			b.Fatal(err)
		}
	}
}
