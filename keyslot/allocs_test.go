package keyslot

import (
	"context"
	"encoding/json"
	"runtime"
	"runtime/debug"
	"testing"
)

// TestOpenTokenUpdateAllocs pins the allocations of what a fleet rewrap does to each image's
// header — open it, then update its token — with one Buffers shared by the Images: a count
// and a byte total per image, both machine-independent. Before the header buffers, parse
// arenas and token-only updates (commit 373e3a7), the same open and update allocated 310
// times and about 115 KB.
func TestOpenTokenUpdateAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts mean nothing under the race detector (its sync.Pool drops items)")
	}
	dev, img, _ := newMemImage(t, "p")
	id, err := img.AddToken(AnyToken, []byte(`{"type":"crkvol-crk","keyslots":["0"],"key_id":"0b9e3c7a-52f1-4d0e-9a55-6f1f2f8a1c3e","ciphertext":"AAAA"}`))
	if err != nil {
		t.Fatal(err)
	}
	next := []byte(`{"type":"crkvol-crk","keyslots":["0"],"key_id":"0b9e3c7a-52f1-4d0e-9a55-6f1f2f8a1c3e","ciphertext":"BBBB"}`)
	opts := &Options{Buffers: &Buffers{}}
	ctx := context.Background()
	rewrap := func() {
		img, err := OpenContext(ctx, dev, opts)
		if err != nil {
			t.Fatal(err)
		}
		if err := img.UpdateTokenContext(ctx, id, func(json.RawMessage) ([]byte, error) { return next, nil }); err != nil {
			t.Fatal(err)
		}
	}
	allocs := testing.AllocsPerRun(50, rewrap)

	// Bytes: the runtime's total over many runs (with GC off, so that sync.Pool keeps the
	// lent buffers as it does between collections).
	const runs = 200
	rewrap()
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range runs {
		rewrap()
	}
	runtime.ReadMemStats(&after)
	bytes := float64(after.TotalAlloc-before.TotalAlloc) / runs
	t.Logf("open + token update: %v allocations, %.0f bytes", allocs, bytes)
	if allocs > 88 {
		t.Errorf("open + token update allocates %v times, want at most 88", allocs)
	}
	if bytes > 13<<10 {
		t.Errorf("open + token update allocates %.0f bytes, want at most 13 KiB", bytes)
	}
}
