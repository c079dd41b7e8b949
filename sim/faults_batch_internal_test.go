package sim

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// TestFaultyKMSBatchFaultsPerItem: the batch calls draw each item's faults from its volume's
// own sequence, as its single calls do: the same scenario fails the same items whether they
// are sent one by one or in one batch, and an outage fails every item.
func TestFaultyKMSBatchFaultsPerItem(t *testing.T) {
	ctx := context.Background()
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := crk.NewManualClock(start)
	svc, err := crk.Open(filepath.Join(t.TempDir(), "crk.db"), crk.Options{Clock: clock, NoSync: true})
	require.NoError(t, err)
	defer svc.Close()
	k, err := svc.CreateRootKey(ctx, "faults")
	require.NoError(t, err)
	local := kms.NewLocal(svc)
	const n = 40
	var items []volume.RewrapItem
	var updates []volume.RegistrationUpdate
	for i := range n {
		uuid := fmt.Sprintf("5b3ae5d6-6a4c-4b8e-9f0e-2f4c1d7a%04d", i)
		w, err := local.Wrap(ctx, k.ID, []byte("passphrase"), []string{uuid})
		require.NoError(t, err)
		items = append(items, volume.RewrapItem{Ciphertext: w.Ciphertext, AAD: []string{uuid}})
		require.NoError(t, local.Register(ctx, k.ID, volume.CRN(uuid), w.VersionID, false))
		updates = append(updates, volume.RegistrationUpdate{CRN: volume.CRN(uuid), VersionID: w.VersionID})
	}
	sc := &Scenario{Seed: 11, Start: start, Months: 1, Faults: Faults{FailRate: 0.3}}
	newFaulty := func() *faultyKMS {
		f := newFaultyKMS(local, clock, sc, rand.New(rand.NewPCG(1, 2)))
		for i := range n {
			f.name(volume.CRN(items[i].AAD[0]), i)
		}
		return f
	}
	failed := func(errs []error) []int {
		var out []int
		for i, e := range errs {
			if e != nil {
				require.ErrorIs(t, e, ErrInjectedFailure)
				out = append(out, i)
			}
		}
		return out
	}

	single, batch := newFaulty(), newFaulty()
	singleErrs := make([]error, n)
	for i, it := range items {
		_, singleErrs[i] = single.Rewrap(ctx, k.ID, it.Ciphertext, it.AAD)
	}
	out, errs, err := batch.RewrapBatch(ctx, k.ID, items)
	require.NoError(t, err)
	want := failed(singleErrs)
	assert.Equal(t, want, failed(errs))
	assert.NotEmpty(t, want)
	assert.Less(t, len(want), n)
	for i := range n {
		if errs[i] == nil {
			assert.NotEmpty(t, out[i].Ciphertext)
		}
	}
	assert.Equal(t, single.snapshot().KMSErrors, batch.snapshot().KMSErrors)

	for i, u := range updates {
		singleErrs[i] = single.UpdateRegistration(ctx, k.ID, u.CRN, u.VersionID)
	}
	errs, err = batch.UpdateRegistrations(ctx, k.ID, updates)
	require.NoError(t, err)
	assert.Equal(t, failed(singleErrs), failed(errs))

	// An outage fails every item, each counted.
	down := &Scenario{Seed: 11, Start: start, Months: 1, Faults: Faults{Outages: []Outage{{Duration: Duration(time.Hour)}}}}
	f := newFaultyKMS(local, clock, down, rand.New(rand.NewPCG(1, 2)))
	_, errs, err = f.RewrapBatch(ctx, k.ID, items[:5])
	require.NoError(t, err)
	for _, e := range errs {
		assert.ErrorIs(t, e, ErrKMSUnavailable)
	}
	assert.Equal(t, 5, f.snapshot().Unavailable)
}
