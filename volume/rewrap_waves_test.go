package volume_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/internal/tooltest"
	"crkvol/keyslot"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// callCountingKMS counts the calls made through it to the key service, by method.
type callCountingKMS struct {
	volume.KeyService
	rewrapBatches, updateBatches, rewraps, updates, unwraps atomic.Int64
	// batchErr, if set, fails every RewrapBatch call as a whole (a transient failure).
	batchErr error
}

func (k *callCountingKMS) RewrapBatch(ctx context.Context, keyID string, items []volume.RewrapItem) ([]volume.Wrapped, []error, error) {
	k.rewrapBatches.Add(1)
	if k.batchErr != nil {
		return nil, nil, k.batchErr
	}
	return k.KeyService.RewrapBatch(ctx, keyID, items)
}

func (k *callCountingKMS) UpdateRegistrations(ctx context.Context, keyID string, updates []volume.RegistrationUpdate) ([]error, error) {
	k.updateBatches.Add(1)
	return k.KeyService.UpdateRegistrations(ctx, keyID, updates)
}

func (k *callCountingKMS) Rewrap(ctx context.Context, keyID string, ct []byte, aad []string) (volume.Wrapped, error) {
	k.rewraps.Add(1)
	return k.KeyService.Rewrap(ctx, keyID, ct, aad)
}

func (k *callCountingKMS) UpdateRegistration(ctx context.Context, keyID, crn, versionID string) error {
	k.updates.Add(1)
	return k.KeyService.UpdateRegistration(ctx, keyID, crn, versionID)
}

func (k *callCountingKMS) Unwrap(ctx context.Context, keyID string, ct []byte, aad []string) (volume.Unwrapped, error) {
	k.unwraps.Add(1)
	return k.KeyService.Unwrap(ctx, keyID, ct, aad)
}

// total is every call counted.
func (k *callCountingKMS) total() int64 {
	return k.rewrapBatches.Load() + k.updateBatches.Load() + k.rewraps.Load() + k.updates.Load() + k.unwraps.Load()
}

// fleet is volumes of one key made for a rewrap pass, with the key service they were made
// through (local: crk embedded; remote: crk/kpapi over HTTP on its own bolt store).
type fleet struct {
	dir   string
	svc   *crk.Service // the store's service: the server's, when remote
	clock *crk.ManualClock
	ks    volume.KeyService
	reg   *volume.Registry
	keyID string
	crns  []string
	paths []string
}

// newFleet makes n volumes of one key through the key service of mode, concurrently.
func newFleet(t testing.TB, mode string, n int) *fleet {
	t.Helper()
	f := &fleet{dir: t.TempDir(), clock: crk.NewManualClock(t0)}
	opts := crk.Options{Clock: f.clock, MasterKey: bytes.Repeat([]byte{7, 9}, 16)}
	switch mode {
	case "local":
		svc, err := crk.Open(filepath.Join(f.dir, "crk.db"), opts)
		require.NoError(t, err)
		t.Cleanup(func() { svc.Close() })
		f.svc, f.ks = svc, kms.NewLocal(svc)
	case "remote":
		tenants, err := kpapi.OpenTenants(filepath.Join(f.dir, "state"), opts)
		require.NoError(t, err)
		t.Cleanup(func() { tenants.Close() })
		inst, svc := tenants.Default()
		srv := httptest.NewServer(kpapi.NewServer(tenants))
		t.Cleanup(srv.Close)
		apiKey, err := tenants.CreateAPIKey(inst)
		require.NoError(t, err)
		remote, err := kms.NewRemote(kms.RemoteConfig{URL: srv.URL, Instance: inst, APIKey: apiKey})
		require.NoError(t, err)
		f.svc, f.ks = svc, remote
	}
	var err error
	f.reg, err = volume.OpenRegistry(filepath.Join(f.dir, "volumes.db"))
	require.NoError(t, err)
	t.Cleanup(func() { f.reg.Close() })
	key, err := f.svc.CreateRootKey(context.Background(), "fleet")
	require.NoError(t, err)
	f.keyID = key.ID
	mgr := volume.NewManager(f.ks, f.reg, volume.Options{})
	mgr.Close() // no rotation hook: the tests run their passes themselves
	f.crns, f.paths = make([]string, n), make([]string, n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	sem := make(chan struct{}, 8)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			info, err := mgr.Create(context.Background(), filepath.Join(f.dir, fmt.Sprintf("v%04d.img", i)),
				volume.CreateOptions{KeyID: f.keyID, Size: 1 << 20, KeyslotsSize: 512 << 10})
			if err == nil {
				f.crns[i], f.paths[i] = info.CRN, info.Path
			}
			errs[i] = err
		})
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	return f
}

// rotate rotates the fleet's key and returns the new version.
func (f *fleet) rotate(t testing.TB) string {
	t.Helper()
	f.clock.Advance(time.Hour) // one rotation an hour
	k, err := f.svc.RotateKey(context.Background(), f.keyID, nil)
	require.NoError(t, err)
	return k.KeyVersion.ID
}

// passCounts is what a rewrap pass cost, by the contract's flush model.
type passCounts struct {
	rep                          *volume.Report
	storeCommits, storeFlushes   uint64
	regCommits, regFlushes       uint64
	flushesPerVolume             float64
	kms                          *callCountingKMS
	rewrapBatches, updateBatches int64
}

// rewrapPass rotates the fleet's key and rewraps every volume with a Manager of opts, counting
// what it did: the key service's calls, its store's commits and flushes (the server's, when
// remote), the registry's, and the header flushes of the report.
func (f *fleet) rewrapPass(t testing.TB, opts volume.Options) passCounts {
	t.Helper()
	latest := f.rotate(t)
	counting := &callCountingKMS{KeyService: f.ks}
	mgr := volume.NewManager(counting, f.reg, opts)
	mgr.Close()
	store0, reg0 := f.svc.StoreStats(), f.reg.Stats()
	rep := mgr.Rewrap(context.Background(), f.keyID, latest, f.crns)
	require.NoError(t, rep.Err())
	store1, reg1 := f.svc.StoreStats(), f.reg.Stats()
	c := passCounts{rep: rep, kms: counting,
		storeCommits: store1.Commits - store0.Commits, storeFlushes: store1.Flushes - store0.Flushes,
		regCommits: reg1.Commits - reg0.Commits, regFlushes: reg1.Flushes - reg0.Flushes,
		rewrapBatches: counting.rewrapBatches.Load(), updateBatches: counting.updateBatches.Load()}
	c.flushesPerVolume = float64(uint64(rep.HeaderFlushes)+c.storeFlushes+c.regFlushes) / float64(rep.Rewrapped)
	t.Logf("%d volumes, RewrapBatch option %d (0: the default): %d header flushes, key service store %d commits %d flushes, registry %d commits %d flushes: %.3f flushes/volume, %d key service calls",
		rep.Rewrapped, opts.RewrapBatch, rep.HeaderFlushes, c.storeCommits, c.storeFlushes, c.regCommits, c.regFlushes, c.flushesPerVolume, rep.KMSCalls)
	return c
}

// TestRewrapWavesCounts: a pass over n volumes in waves of B makes 2 key service calls per
// wave (one batch rewrap, one batch registration update) and nothing else — the volumes'
// fingerprints spare the unwraps of the check —, 1 registry commit per wave, 2 store commits
// per wave (the batch rewrap's audit events, the registrations), and 2 header flushes per
// volume; locally (crk embedded) and remotely (crk/kpapi over HTTP: the server's store). The
// long run checks the acceptance count over 1,000 volumes with the default batch: at most 2.5
// flushes per rewrapped volume.
func TestRewrapWavesCounts(t *testing.T) {
	for _, mode := range []string{"local", "remote"} {
		t.Run(mode, func(t *testing.T) {
			n, batch := 24, 8
			if tooltest.Long() {
				n, batch = 1000, 0 // the default
			}
			f := newFleet(t, mode, n)
			c := f.rewrapPass(t, volume.Options{RewrapBatch: batch})
			if batch == 0 {
				batch = volume.DefaultWorkers
			}
			waves := int64((n + batch - 1) / batch)
			rep := c.rep
			assert.Equal(t, n, rep.Rewrapped)
			assert.Zero(t, rep.Retries)
			assert.Equal(t, waves, c.rewrapBatches, "one batch rewrap per wave")
			assert.Equal(t, waves, c.updateBatches, "one batch registration update per wave")
			assert.Equal(t, 2*waves, c.kms.total(), "no other key service call (no unwrap: every volume has its fingerprint)")
			assert.Equal(t, int(2*waves), rep.KMSCalls)
			assert.Equal(t, int64(2*n), rep.HeaderFlushes, "two header flushes per volume")
			assert.Equal(t, uint64(waves), c.regCommits, "one registry commit per wave")
			assert.Equal(t, uint64(2*waves), c.storeCommits, "two store commits per wave")
			// bbolt: 2 flushes per commit, plus 1 per commit that grows the file.
			assert.GreaterOrEqual(t, c.regFlushes, 2*c.regCommits)
			assert.LessOrEqual(t, c.regFlushes, 3*c.regCommits)
			assert.GreaterOrEqual(t, c.storeFlushes, 2*c.storeCommits)
			assert.LessOrEqual(t, c.storeFlushes, 3*c.storeCommits)
			if tooltest.Long() {
				assert.LessOrEqual(t, c.flushesPerVolume, 2.5, "flushes per rewrapped volume over 1,000 volumes")
			}
			// A second pass costs the same: the fingerprints moved to the new ciphertexts.
			again := f.rewrapPass(t, volume.Options{RewrapBatch: batch})
			assert.Equal(t, n, again.rep.Rewrapped)
			assert.Equal(t, 2*waves, again.kms.total())
			assert.Equal(t, uint64(waves), again.regCommits)
		})
	}
}

// TestRewrapBatchFailureRetriesEachVolume: a batch rewrap that fails as a whole (a transient
// failure) leaves each volume of its wave to be retried on its own, with single calls: a
// retry each, one single rewrap and one single registration update each, one registry commit
// each (its fingerprint moves).
func TestRewrapBatchFailureRetriesEachVolume(t *testing.T) {
	f := newFleet(t, "local", 5)
	latest := f.rotate(t)
	counting := &callCountingKMS{KeyService: f.ks, batchErr: errors.New("kms unavailable")}
	mgr := volume.NewManager(counting, f.reg, volume.Options{RewrapBatch: 8, Backoff: func(int) time.Duration { return 0 }})
	mgr.Close()
	reg0 := f.reg.Stats()
	rep := mgr.Rewrap(context.Background(), f.keyID, latest, f.crns)
	require.NoError(t, rep.Err())
	assert.Equal(t, 5, rep.Rewrapped)
	assert.Equal(t, 5, rep.Retries)
	assert.Equal(t, int64(1), counting.rewrapBatches.Load())
	assert.Zero(t, counting.updateBatches.Load(), "nothing of the wave left to register")
	assert.Equal(t, int64(5), counting.rewraps.Load())
	assert.Equal(t, int64(5), counting.updates.Load())
	assert.Zero(t, counting.unwraps.Load())
	assert.Equal(t, 1+5+5, rep.KMSCalls)
	assert.Equal(t, uint64(5), f.reg.Stats().Commits-reg0.Commits)
	for _, p := range f.paths {
		assert.Equal(t, latest, mustDescribe(t, p).KeyVersion)
	}
}

// keyslotArea returns the offset and size of the volume's first keyslot area.
func keyslotArea(t testing.TB, path string) (int64, int64) {
	t.Helper()
	fh, err := os.Open(path)
	require.NoError(t, err)
	defer fh.Close()
	img, err := keyslot.Open(fh, nil)
	require.NoError(t, err)
	ks := img.Keyslots()[0]
	return int64(ks.AreaOffset), int64(ks.AreaSize)
}

// TestRewrapFingerprint: the pre-rewrap check's unwrap and keyslot unlock are skipped while a
// volume is in the state this Manager proved (its registry fingerprint), and run in full when
// anything it depends on changed: a damaged keyslot area is still refused as unhealthy, a
// hand-replaced ciphertext is checked (and refused when it holds another passphrase), an
// entry without a fingerprint (an older registry) is checked and gets one.
func TestRewrapFingerprint(t *testing.T) {
	f := newFleet(t, "local", 5)
	damaged, replaced, foreign, old := 0, 1, 2, 3
	first := f.rewrapPass(t, volume.Options{})
	assert.Zero(t, first.kms.unwraps.Load(), "created volumes are proved")

	// Damage in the middle of the keyslot area: one bit.
	off, size := keyslotArea(t, f.paths[damaged])
	fh, err := os.OpenFile(f.paths[damaged], os.O_RDWR, 0)
	require.NoError(t, err)
	b := make([]byte, 1)
	_, err = fh.ReadAt(b, off+size/2)
	require.NoError(t, err)
	b[0] ^= 0x10
	_, err = fh.WriteAt(b, off+size/2)
	require.NoError(t, err)
	require.NoError(t, fh.Close())

	// Another ciphertext of the same passphrase, put in by hand.
	setCiphertext := func(path string, ct []byte) {
		fh, err := os.OpenFile(path, os.O_RDWR, 0)
		require.NoError(t, err)
		defer fh.Close()
		img, err := keyslot.Open(fh, nil)
		require.NoError(t, err)
		require.NoError(t, img.UpdateToken(img.Tokens()[0].ID, func(cur json.RawMessage) ([]byte, error) {
			var m map[string]any
			if err := json.Unmarshal(cur, &m); err != nil {
				return nil, err
			}
			m["ciphertext"] = base64.StdEncoding.EncodeToString(ct)
			return json.Marshal(m)
		}))
	}
	ctx := context.Background()
	info := mustDescribe(t, f.paths[replaced])
	ct := tokenCiphertextBytes(t, f.paths[replaced])
	w, err := f.ks.Rewrap(ctx, f.keyID, ct, []string{info.UUID})
	require.NoError(t, err)
	setCiphertext(f.paths[replaced], w.Ciphertext)
	// A valid ciphertext of another passphrase.
	finfo := mustDescribe(t, f.paths[foreign])
	w, err = f.ks.Wrap(ctx, f.keyID, bytes.Repeat([]byte{1}, 32), []string{finfo.UUID})
	require.NoError(t, err)
	setCiphertext(f.paths[foreign], w.Ciphertext)
	// An entry of an older registry: no fingerprint.
	e, err := f.reg.Get(f.crns[old])
	require.NoError(t, err)
	require.NotEmpty(t, e.Verified)
	e.Verified = ""
	require.NoError(t, f.reg.Put(e))

	latest := f.rotate(t)
	counting := &callCountingKMS{KeyService: f.ks}
	mgr := volume.NewManager(counting, f.reg, volume.Options{Attempts: 1})
	mgr.Close()
	rep := mgr.Rewrap(ctx, f.keyID, latest, f.crns)
	assert.Equal(t, 3, rep.Rewrapped, "the replaced ciphertext, the old entry and the untouched volume")
	require.Len(t, rep.Failed, 2)
	assert.ErrorIs(t, rep.Failed[f.crns[damaged]], volume.ErrUnhealthy)
	assert.ErrorIs(t, rep.Failed[f.crns[foreign]], volume.ErrUnhealthy)
	assert.NotEqual(t, latest, mustDescribe(t, f.paths[damaged]).KeyVersion, "nothing written to the damaged volume")
	assert.NotEqual(t, latest, mustDescribe(t, f.paths[foreign]).KeyVersion)
	assert.Equal(t, int64(4), counting.unwraps.Load(), "full checks: damaged, replaced, foreign, old")
	e, err = f.reg.Get(f.crns[old])
	require.NoError(t, err)
	assert.NotEmpty(t, e.Verified, "the old entry got its fingerprint")

	// The next pass checks in full only the volumes still failing.
	latest = f.rotate(t)
	counting = &callCountingKMS{KeyService: f.ks}
	mgr = volume.NewManager(counting, f.reg, volume.Options{Attempts: 1})
	mgr.Close()
	rep = mgr.Rewrap(ctx, f.keyID, latest, f.crns)
	assert.Equal(t, 3, rep.Rewrapped)
	assert.Len(t, rep.Failed, 2)
	assert.Equal(t, int64(2), counting.unwraps.Load(), "only the two unhealthy volumes")
}

// tokenCiphertextBytes returns the binary ciphertext of the volume's token.
func tokenCiphertextBytes(t testing.TB, path string) []byte {
	t.Helper()
	var tok struct {
		Ciphertext string `json:"ciphertext"`
	}
	require.NoError(t, json.Unmarshal(readToken(t, path), &tok))
	ct, err := base64.StdEncoding.DecodeString(tok.Ciphertext)
	require.NoError(t, err)
	return ct
}

// rewriteMetadata rewrites the JSON text of both header copies of the image at path with edit
// and fixes their checksums, as a hostile writer of the image file could.
func rewriteMetadata(t *testing.T, path string, edit func(text string) string) {
	t.Helper()
	img, err := os.ReadFile(path)
	require.NoError(t, err)
	hdrSize := binary.BigEndian.Uint64(img[8:16])
	for _, off := range []uint64{0, hdrSize} {
		area := img[off+4096 : off+hdrSize]
		text := edit(string(area[:bytes.IndexByte(area, 0)]))
		require.Less(t, len(text), len(area))
		clear(area)
		copy(area, text)
		hdr := img[off : off+4096]
		clear(hdr[448:512])
		sum := sha256.New()
		sum.Write(hdr)
		sum.Write(area)
		copy(hdr[448:], sum.Sum(nil))
	}
	require.NoError(t, os.WriteFile(path, img, 0o600))
}

// TestRewrapFingerprintIgnoresLookalikeMembers: a hostile image whose keyslot is changed
// (its salt: it no longer opens) and which carries the original keyslots under a member name
// that differs only in letter case (or by a Unicode lookalike) does not keep its
// fingerprint: the fingerprint is of the members the LUKS2 parser uses, named exactly, so the
// full check runs and finds the volume unhealthy.
func TestRewrapFingerprintIgnoresLookalikeMembers(t *testing.T) {
	for _, name := range []string{"KEYSLOTS", "Keyslots", "\u212aeyslots"} {
		t.Run(name, func(t *testing.T) {
			f := newFleet(t, "local", 2)
			f.rewrapPass(t, volume.Options{}) // fingerprints recorded
			rewriteMetadata(t, f.paths[0], func(text string) string {
				var top map[string]json.RawMessage
				require.NoError(t, json.Unmarshal([]byte(text), &top))
				orig := string(top["keyslots"])
				i := strings.Index(text, `"salt":"`) + len(`"salt":"`)
				require.Greater(t, i, len(`"salt":"`))
				c := byte('A')
				if text[i] == 'A' {
					c = 'B'
				}
				text = text[:i] + string(c) + text[i+1:]
				return strings.TrimSuffix(text, "}") + `,"` + name + `":` + orig + `}`
			})
			latest := f.rotate(t)
			mgr := volume.NewManager(f.ks, f.reg, volume.Options{Attempts: 1})
			mgr.Close()
			rep := mgr.Rewrap(context.Background(), f.keyID, latest, f.crns)
			require.Len(t, rep.Failed, 1)
			assert.ErrorIs(t, rep.Failed[f.crns[0]], volume.ErrUnhealthy)
			assert.Equal(t, 1, rep.Rewrapped, "the other volume")
		})
	}
}
