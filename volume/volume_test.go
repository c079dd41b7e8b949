package volume_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/internal/tooltest"
	"crkvol/keyslot"
	"crkvol/volume"
	"crkvol/volume/kms"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

type fixture struct {
	dir     string
	svc     *crk.Service
	clock   *crk.ManualClock
	ks      volume.KeyService
	reg     *volume.Registry
	mgr     *volume.Manager
	key     *crk.Key
	ctx     context.Context
	reports []*volume.Report
	mu      sync.Mutex
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir(), clock: crk.NewManualClock(t0), ctx: context.Background()}
	var err error
	f.svc, err = crk.Open(filepath.Join(f.dir, "crk.db"), crk.Options{Clock: f.clock, MasterKey: bytes.Repeat([]byte{7, 9}, 16)})
	require.NoError(t, err)
	t.Cleanup(func() { f.svc.Close() })
	f.ks = kms.NewLocal(f.svc)
	f.reg, err = volume.OpenRegistry(filepath.Join(f.dir, "volumes.db"))
	require.NoError(t, err)
	t.Cleanup(func() { f.reg.Close() })
	f.mgr = volume.NewManager(f.ks, f.reg, volume.Options{
		Now:      f.clock.Now,
		Backoff:  func(int) time.Duration { return time.Millisecond },
		OnReport: func(r *volume.Report) { f.mu.Lock(); f.reports = append(f.reports, r); f.mu.Unlock() },
	})
	t.Cleanup(f.mgr.Close)
	f.key, err = f.svc.CreateRootKey(f.ctx, "volumes")
	require.NoError(t, err)
	return f
}

// small is a compact layout: 16 KiB metadata, 256 KiB keyslots, data at 1 MiB.
func (f *fixture) create(t testing.TB, name string, size int64) *volume.Info {
	t.Helper()
	info, err := f.mgr.Create(f.ctx, filepath.Join(f.dir, name), volume.CreateOptions{
		KeyID: f.key.ID, Size: size, KeyslotsSize: 512 << 10,
	})
	require.NoError(t, err)
	return info
}

func (f *fixture) rotate(t testing.TB) *crk.Key {
	t.Helper()
	f.clock.Advance(time.Hour)
	k, err := f.svc.RotateKey(f.ctx, f.key.ID, nil)
	require.NoError(t, err)
	return k
}

func (f *fixture) lastReport() *volume.Report {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reports[len(f.reports)-1]
}

func pattern(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func fileHash(t testing.TB, path string, from int64) [32]byte {
	t.Helper()
	fh, err := os.Open(path)
	require.NoError(t, err)
	defer fh.Close()
	_, err = fh.Seek(from, io.SeekStart)
	require.NoError(t, err)
	h := sha256.New()
	_, err = io.Copy(h, fh)
	require.NoError(t, err)
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// TestRotateNeverTouchesData writes a pattern, rotates three times and reopens: every byte
// reads back, the data area's hash is unchanged and only header bytes differ.
func TestRotateNeverTouchesData(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	const size = 8 << 20
	info := f.create(t, "vol.img", size)
	assert.Equal(t, int64(size), info.Size)
	assert.Equal(t, int64(1<<20), info.DataOffset)
	assert.Equal(t, f.key.KeyVersion.ID, info.KeyVersion)

	v, err := f.mgr.Open(f.ctx, info.Path)
	require.NoError(t, err)
	want := pattern(size, 1)
	// Aligned, unaligned, sub-sector and chunk-crossing writes.
	for _, w := range [][2]int{{0, size}, {1, 100}, {4095, 2}, {8191, 4097}, {1<<20 - 3, 1<<20 + 7}, {size - 5, 5}} {
		copy(want[w[0]:w[0]+w[1]], pattern(w[1], uint64(w[0])))
		n, err := v.WriteAt(want[w[0]:w[0]+w[1]], int64(w[0]))
		require.NoError(t, err)
		require.Equal(t, w[1], n)
	}
	require.NoError(t, v.Sync())
	got := make([]byte, size)
	_, err = v.ReadAt(got, 0)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got))
	require.NoError(t, v.Close())
	assert.ErrorIs(t, v.Close(), volume.ErrClosed)
	_, err = v.ReadAt(got[:1], 0)
	assert.ErrorIs(t, err, volume.ErrClosed)

	before, err := os.ReadFile(info.Path)
	require.NoError(t, err)
	dataHash := fileHash(t, info.Path, info.DataOffset)
	var latest *crk.Key
	for i := range 3 {
		latest = f.rotate(t)
		rep := f.lastReport()
		require.NoError(t, rep.Err(), "rotation %d", i)
		assert.Equal(t, 1, rep.Rewrapped)
		assert.Equal(t, latest.KeyVersion.ID, rep.NewVersion)
	}
	after, err := os.ReadFile(info.Path)
	require.NoError(t, err)
	assert.Equal(t, dataHash, fileHash(t, info.Path, info.DataOffset), "data area unchanged")
	firstDiff, lastDiff := -1, -1
	for i := range before {
		if before[i] != after[i] {
			if firstDiff < 0 {
				firstDiff = i
			}
			lastDiff = i
		}
	}
	assert.Less(t, lastDiff, int(info.DataOffset), "only header bytes changed (first %d, last %d)", firstDiff, lastDiff)
	assert.GreaterOrEqual(t, firstDiff, 0, "the header did change")

	d, err := volume.Describe(info.Path)
	require.NoError(t, err)
	assert.Equal(t, latest.KeyVersion.ID, d.KeyVersion, "token names the new version")
	regs, err := f.svc.ListRegistrations(f.ctx, crk.RegistrationFilter{KeyID: f.key.ID})
	require.NoError(t, err)
	require.Len(t, regs, 1)
	assert.Equal(t, latest.KeyVersion.ID, regs[0].KeyVersion.ID)
	assert.True(t, regs[0].PreventKeyDeletion)
	vs, err := f.svc.ListVersions(f.ctx, f.key.ID)
	require.NoError(t, err)
	require.Len(t, vs, 4)
	assert.Equal(t, 1, vs[0].Registrations)
	for _, old := range vs[1:] {
		assert.Zero(t, old.Registrations, "version %s unreferenced", old.ID)
	}

	v, err = f.mgr.Open(f.ctx, info.Path)
	require.NoError(t, err)
	defer v.Close()
	clear(got)
	_, err = v.ReadAt(got, 0)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(want, got), "every byte reads back after three rotations")
}

// TestRandomIO checks reads and writes at random offsets and lengths against a model: 300 of
// them per sector size in the long run, 100 otherwise.
func TestRandomIO(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for _, ss := range []int{512, 4096} {
		t.Run(fmt.Sprint(ss), func(t *testing.T) {
			const size = 3 << 20
			info, err := f.mgr.Create(f.ctx, filepath.Join(f.dir, fmt.Sprintf("rand-%d.img", ss)), volume.CreateOptions{
				KeyID: f.key.ID, Size: size, SectorSize: ss, KeyslotsSize: 512 << 10,
			})
			require.NoError(t, err)
			v, err := f.mgr.Open(f.ctx, info.Path)
			require.NoError(t, err)
			defer v.Close()
			assert.Equal(t, ss, v.SectorSize())
			// Never-written sectors read as whatever their zeros decrypt to, as with
			// cryptsetup: start the model from what the volume holds.
			model := make([]byte, size)
			_, err = v.ReadAt(model, 0)
			require.NoError(t, err)
			rng := rand.New(rand.NewPCG(uint64(ss), 3))
			for i := range tooltest.Scale(300, 100) {
				off := rng.Int64N(size)
				n := 1 + rng.IntN(min(int(size-off), 1<<21))
				if i%3 == 0 {
					n = min(n, 700)
				}
				if rng.IntN(2) == 0 {
					p := pattern(n, uint64(i))
					copy(model[off:], p)
					_, err := v.WriteAt(p, off)
					require.NoError(t, err)
				} else {
					p := make([]byte, n)
					_, err := v.ReadAt(p, off)
					require.NoError(t, err)
					require.True(t, bytes.Equal(model[off:off+int64(n)], p), "read %d at %d", n, off)
				}
			}
			// EOF and range handling.
			p := make([]byte, 10)
			n, err := v.ReadAt(p, size-4)
			assert.Equal(t, 4, n)
			assert.ErrorIs(t, err, io.EOF)
			assert.Equal(t, model[size-4:], p[:4])
			_, err = v.ReadAt(p, size)
			assert.ErrorIs(t, err, io.EOF)
			_, err = v.ReadAt(p, -1)
			assert.ErrorIs(t, err, volume.ErrOutOfRange)
			_, err = v.WriteAt(p, size-4)
			assert.ErrorIs(t, err, volume.ErrOutOfRange)
			_, err = v.WriteAt(p, -1)
			assert.ErrorIs(t, err, volume.ErrOutOfRange)
			n, err = v.WriteAt(nil, size)
			assert.NoError(t, err)
			assert.Zero(t, n)
		})
	}
}

// TestAADBindsToken: a token copied into another volume's header does not unwrap there, even
// with its public volume_crn member edited to pass for the other volume's (a verbatim copy is
// refused before any unwrap: TestTokenCheckedAgainstImage).
func TestAADBindsToken(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	a := f.create(t, "a.img", 1<<20)
	b := f.create(t, "b.img", 1<<20)
	tokA := bytes.Replace(readToken(t, a.Path), []byte(a.CRN), []byte(b.CRN), 1)
	require.Contains(t, string(tokA), b.CRN)
	fb, err := os.OpenFile(b.Path, os.O_RDWR, 0)
	require.NoError(t, err)
	img, err := keyslot.Open(fb, nil)
	require.NoError(t, err)
	require.NoError(t, img.ReplaceToken(img.Tokens()[0].ID, tokA))
	fb.Close()
	_, err = f.mgr.Open(f.ctx, b.Path)
	require.Error(t, err)
	assert.ErrorIs(t, err, crk.ErrAuth)
	assert.Contains(t, err.Error(), "unwrapping the passphrase")
}

func readToken(t testing.TB, path string) []byte {
	t.Helper()
	fh, err := os.Open(path)
	require.NoError(t, err)
	defer fh.Close()
	img, err := keyslot.Open(fh, nil)
	require.NoError(t, err)
	raw, err := img.Token(img.Tokens()[0].ID)
	require.NoError(t, err)
	return raw
}

// TestDisabledKeyRefusesOpen: a suspended key makes attach fail with a clear error;
// enabling it makes attach work again.
func TestDisabledKeyRefusesOpen(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	info := f.create(t, "v.img", 1<<20)
	_, err := f.svc.DisableKey(f.ctx, f.key.ID)
	require.NoError(t, err)
	_, err = f.mgr.Open(f.ctx, info.Path)
	require.ErrorIs(t, err, crk.ErrKeySuspended)
	assert.Contains(t, err.Error(), "key is suspended")
	f.clock.Advance(30 * time.Second)
	_, err = f.svc.EnableKey(f.ctx, f.key.ID)
	require.NoError(t, err)
	v, err := f.mgr.Open(f.ctx, info.Path)
	require.NoError(t, err)
	require.NoError(t, v.Close())
}

// TestLazyRewrapOnOpen: when no hook rewrapped a volume, attaching stores the rewrapped
// ciphertext and updates the registration.
func TestLazyRewrapOnOpen(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	info := f.create(t, "lazy.img", 1<<20)
	f.mgr.Close() // no rotation hook
	k := f.rotate(t)
	assert.Equal(t, info.KeyVersion, mustDescribe(t, info.Path).KeyVersion)

	mgr := volume.NewManager(f.ks, f.reg, volume.Options{})
	defer mgr.Close()
	v, err := mgr.Open(f.ctx, info.Path)
	require.NoError(t, err)
	require.NoError(t, v.Close())
	assert.Equal(t, k.KeyVersion.ID, mustDescribe(t, info.Path).KeyVersion)
	regs, err := f.svc.ListRegistrations(f.ctx, crk.RegistrationFilter{KeyID: f.key.ID})
	require.NoError(t, err)
	assert.Equal(t, k.KeyVersion.ID, regs[0].KeyVersion.ID)
}

func mustDescribe(t testing.TB, path string) *volume.Info {
	t.Helper()
	d, err := volume.Describe(path)
	require.NoError(t, err)
	return d
}

// flakyKMS fails Rewrap for chosen volumes a number of times.
type flakyKMS struct {
	volume.KeyService
	mu       sync.Mutex
	failures map[string]int // volume UUID -> remaining failures (-1: always)
}

func (k *flakyKMS) Rewrap(ctx context.Context, keyID string, ct []byte, aad []string) (volume.Wrapped, error) {
	k.mu.Lock()
	n := k.failures[aad[0]]
	if n != 0 {
		k.failures[aad[0]] = n - 1
		if n < 0 {
			k.failures[aad[0]] = n
		}
	}
	k.mu.Unlock()
	if n != 0 {
		return volume.Wrapped{}, errors.New("kms unavailable")
	}
	return k.KeyService.Rewrap(ctx, keyID, ct, aad)
}

// RewrapBatch rewraps each item through flakyKMS's own Rewrap, so its behaviour holds for batches.
func (k *flakyKMS) RewrapBatch(ctx context.Context, keyID string, items []volume.RewrapItem) ([]volume.Wrapped, []error, error) {
	out, errs := volume.RewrapEach(ctx, k, keyID, items)
	return out, errs, nil
}

// TestFailedRewrapKeepsOldWrapping: transient failures are retried; a volume that keeps
// failing keeps its old, working wrapping, and Sync brings it up to date later.
func TestFailedRewrapKeepsOldWrapping(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.mgr.Close()
	flaky := &flakyKMS{KeyService: f.ks, failures: map[string]int{}}
	var reports []*volume.Report
	mgr := volume.NewManager(flaky, f.reg, volume.Options{
		Backoff: func(int) time.Duration { return 0 }, Attempts: 3,
		OnReport: func(r *volume.Report) { reports = append(reports, r) },
	})
	defer mgr.Close()
	a := f.create(t, "a.img", 1<<20)
	b := f.create(t, "b.img", 1<<20)
	c := f.create(t, "c.img", 1<<20)
	flaky.failures[a.UUID] = 2  // succeeds on the third attempt
	flaky.failures[b.UUID] = -1 // never succeeds

	k := f.rotate(t)
	require.Len(t, reports, 1)
	rep := reports[0]
	assert.Equal(t, 3, rep.Volumes)
	assert.Equal(t, 2, rep.Rewrapped)
	assert.Equal(t, 2+2, rep.Retries)
	require.Len(t, rep.Failed, 1)
	assert.Contains(t, rep.Failed[b.CRN].Error(), "kms unavailable")
	assert.ErrorContains(t, rep.Err(), b.CRN)
	assert.Equal(t, k.KeyVersion.ID, mustDescribe(t, a.Path).KeyVersion)
	assert.Equal(t, k.KeyVersion.ID, mustDescribe(t, c.Path).KeyVersion)
	assert.Equal(t, b.KeyVersion, mustDescribe(t, b.Path).KeyVersion, "old wrapping kept")

	// b still opens with its old wrapping (and that lazily rewraps it); instead, Sync.
	flaky.failures[b.UUID] = 0
	srep, err := mgr.Sync(f.ctx, f.key.ID)
	require.NoError(t, err)
	assert.Equal(t, 3, srep.Volumes, "every volume of the key")
	assert.Equal(t, 1, srep.Rewrapped)
	assert.Equal(t, 2, srep.AlreadyCurrent, "a and c")
	assert.Equal(t, k.KeyVersion.ID, mustDescribe(t, b.Path).KeyVersion)
	v, err := mgr.Open(f.ctx, b.Path)
	require.NoError(t, err)
	require.NoError(t, v.Close())
	srep, err = mgr.Sync(f.ctx, f.key.ID)
	require.NoError(t, err)
	assert.Equal(t, 3, srep.Volumes)
	assert.Equal(t, 3, srep.AlreadyCurrent, "nothing stale")
	assert.Zero(t, srep.Rewrapped)
}

// TestBytesPerRewrapIndependentOfSize: rewrapping a 1 MiB and a 1 GiB (sparse) volume writes
// the same number of bytes: header metadata only.
func TestBytesPerRewrapIndependentOfSize(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.create(t, "small.img", 1<<20)
	f.create(t, "large.img", 1<<30)
	f.mgr.Close()
	var perVolume []int64
	for _, name := range []string{"small.img", "large.img"} {
		k := f.rotate(t)
		info := mustDescribe(t, filepath.Join(f.dir, name))
		mgr := volume.NewManager(f.ks, f.reg, volume.Options{})
		rep := mgr.Rewrap(f.ctx, f.key.ID, k.KeyVersion.ID, []string{info.CRN})
		mgr.Close()
		require.NoError(t, rep.Err())
		require.Equal(t, 1, rep.Rewrapped)
		perVolume = append(perVolume, rep.BytesWritten)
	}
	assert.Equal(t, perVolume[0], perVolume[1])
	assert.Equal(t, int64(2*(4096+12288+4096)), perVolume[0], "two header copies: binary header twice and the JSON area")
}

// TestDelete: crypto-erase makes the data unrecoverable, and the volume is deregistered.
func TestDelete(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	info := f.create(t, "del.img", 1<<20)
	keep := f.create(t, "keep.img", 1<<20)
	require.NoError(t, f.mgr.Delete(f.ctx, info.Path, volume.DeleteOptions{CryptoErase: true}))
	_, err := f.mgr.Open(f.ctx, info.Path)
	assert.ErrorIs(t, err, volume.ErrErased)
	regs, err := f.svc.ListRegistrations(f.ctx, crk.RegistrationFilter{KeyID: f.key.ID})
	require.NoError(t, err)
	require.Len(t, regs, 1)
	assert.Equal(t, keep.CRN, regs[0].ResourceCRN)
	_, err = f.reg.Get(info.CRN)
	assert.ErrorIs(t, err, volume.ErrNotRegistered)
	require.NoError(t, f.mgr.Delete(f.ctx, keep.Path, volume.DeleteOptions{RemoveImage: true}))
	_, err = os.Stat(keep.Path)
	assert.True(t, os.IsNotExist(err))
	_, err = f.svc.DeleteKey(f.ctx, f.key.ID, crk.DeleteOptions{})
	assert.NoError(t, err, "no registrations left")
}

// TestConcurrentIOWhileRotating: 8 goroutines read and write at random while the key rotates
// 20 times (8 outside the long run: the workers spin for as long as the rotations take);
// no error, no torn sector, no lost write.
func TestConcurrentIOWhileRotating(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	const size = 4 << 20
	info := f.create(t, "busy.img", size)
	v, err := f.mgr.Open(f.ctx, info.Path)
	require.NoError(t, err)
	defer v.Close()

	const workers = 8
	region := int64(size / (workers + 1)) // each worker owns one region; the last is shared
	shared := int64(workers) * region
	stop := make(chan struct{})
	errs := make(chan error, workers+1)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 11))
			model := make([]byte, region)
			base := int64(w) * region
			if _, err := v.ReadAt(model, base); err != nil {
				errs <- err
				return
			}
			for i := 0; ; i++ {
				select {
				case <-stop:
					errs <- nil
					return
				default:
				}
				off := rng.Int64N(region - 1)
				n := 1 + rng.Int64N(min(region-off, 64<<10))
				if rng.IntN(2) == 0 {
					p := pattern(int(n), uint64(w<<32|i))
					copy(model[off:], p)
					if _, err := v.WriteAt(p, base+off); err != nil {
						errs <- err
						return
					}
				} else {
					p := make([]byte, n)
					if _, err := v.ReadAt(p, base+off); err != nil {
						errs <- err
						return
					}
					if !bytes.Equal(p, model[off:off+n]) {
						errs <- fmt.Errorf("worker %d: read at %d differs from what it wrote", w, off)
						return
					}
				}
				// Everyone also writes whole copies of one 4 KiB sector, partially, in the
				// shared region: each must read back as one writer's bytes, never a mix.
				fill := bytes.Repeat([]byte{byte(w + 1)}, 4096)
				if _, err := v.WriteAt(fill[:4000], shared+50); err != nil {
					errs <- err
					return
				}
				got := make([]byte, 4000)
				if _, err := v.ReadAt(got, shared+50); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, bytes.Repeat(got[:1], 4000)) {
					errs <- fmt.Errorf("torn shared sector")
					return
				}
			}
		}()
	}
	rotations := tooltest.Scale(20, 8)
	for range rotations {
		f.rotate(t)
		require.NoError(t, f.lastReport().Err())
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	vs, err := f.svc.ListVersions(f.ctx, f.key.ID)
	require.NoError(t, err)
	assert.Len(t, vs, rotations+1)
	assert.Equal(t, vs[0].ID, mustDescribe(t, info.Path).KeyVersion)
}

func TestOpenWithPassphraseAndErrors(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	info := f.create(t, "p.img", 1<<20)
	pass := unwrapPassphrase(t, f, info.Path)
	v, err := volume.OpenWithPassphrase(info.Path, pass)
	require.NoError(t, err)
	require.NoError(t, v.Close())
	_, err = volume.OpenWithPassphrase(info.Path, []byte("wrong"))
	assert.ErrorIs(t, err, keyslot.ErrWrongPassphrase)
	_, err = f.mgr.Create(f.ctx, info.Path, volume.CreateOptions{KeyID: f.key.ID, Size: 1 << 20})
	assert.Error(t, err, "existing file")
	_, err = f.mgr.Create(f.ctx, filepath.Join(f.dir, "bad.img"), volume.CreateOptions{KeyID: f.key.ID, Size: 1000})
	assert.ErrorIs(t, err, volume.ErrBadSize)
	_, err = os.Stat(filepath.Join(f.dir, "bad.img"))
	assert.True(t, os.IsNotExist(err))
	_, err = f.mgr.Create(f.ctx, filepath.Join(f.dir, "nokey.img"), volume.CreateOptions{KeyID: "00000000-0000-4000-8000-000000000000", Size: 1 << 20})
	assert.ErrorIs(t, err, crk.ErrKeyNotFound)
	_, err = os.Stat(filepath.Join(f.dir, "nokey.img"))
	assert.True(t, os.IsNotExist(err), "a failed create leaves no image")
	st, err := os.Stat(info.Path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
}

// unwrapPassphrase recovers a volume's LUKS passphrase the way an operator with the key
// would.
func unwrapPassphrase(t testing.TB, f *fixture, path string) []byte {
	t.Helper()
	var tok struct {
		KeyID      string `json:"key_id"`
		Ciphertext string `json:"ciphertext"`
	}
	require.NoError(t, json.Unmarshal(readToken(t, path), &tok))
	ct, err := base64.StdEncoding.DecodeString(tok.Ciphertext)
	require.NoError(t, err)
	u, err := f.svc.Unwrap(f.ctx, tok.KeyID, ct, []string{mustDescribe(t, path).UUID})
	require.NoError(t, err)
	return u.Plaintext
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	require.NoError(t, err, "%s %v: %s", name, args, out)
}

// noRegUpdateKMS loses every registration update, as a crash between the token commit and
// the registration update would.
type noRegUpdateKMS struct{ volume.KeyService }

func (noRegUpdateKMS) UpdateRegistration(context.Context, string, string, string) error {
	return errors.New("crashed before the registration update")
}

// UpdateRegistrations updates each registration through noRegUpdateKMS's own UpdateRegistration, so its
// behaviour holds for batches.
func (k noRegUpdateKMS) UpdateRegistrations(ctx context.Context, keyID string, updates []volume.RegistrationUpdate) ([]error, error) {
	return volume.UpdateEach(ctx, k, keyID, updates), nil
}

// TestSyncRepairsLaggingRegistration: a token already on the new version with its
// registration left behind is caught up by Sync, and the registration then matches.
func TestSyncRepairsLaggingRegistration(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.mgr.Close()
	broken := volume.NewManager(noRegUpdateKMS{f.ks}, f.reg, volume.Options{Attempts: 1})
	info := f.create(t, "lag.img", 1<<20)
	k := f.rotate(t)
	broken.Close()
	assert.Equal(t, k.KeyVersion.ID, mustDescribe(t, info.Path).KeyVersion, "token moved on")
	regs, err := f.svc.ListRegistrations(f.ctx, crk.RegistrationFilter{KeyID: f.key.ID})
	require.NoError(t, err)
	assert.Equal(t, info.KeyVersion, regs[0].KeyVersion.ID, "registration left behind")

	mgr := volume.NewManager(f.ks, f.reg, volume.Options{})
	defer mgr.Close()
	rep, err := mgr.Sync(f.ctx, f.key.ID)
	require.NoError(t, err)
	require.NoError(t, rep.Err())
	assert.Equal(t, 1, rep.AlreadyCurrent)
	regs, err = f.svc.ListRegistrations(f.ctx, crk.RegistrationFilter{KeyID: f.key.ID})
	require.NoError(t, err)
	assert.Equal(t, k.KeyVersion.ID, regs[0].KeyVersion.ID)
}

// TestDataAreaLock: a read-write open excludes every other open of the data area; shared
// read-only opens coexist; rotation rewraps a volume that is open, and delete refuses one
// (TestOpenLockModes has every pair of opens).
func TestDataAreaLock(t *testing.T) {
	// Not parallel: a test that starts a process forks this one, and the child holds a copy
	// of every open descriptor until it execs, so the lock of a volume closed at that moment
	// outlives its Close for a few microseconds, and the reopen below would see ErrInUse.
	f := newFixture(t)
	info := f.create(t, "lock.img", 1<<20)

	busy, err := volume.InUse(info.Path)
	require.NoError(t, err)
	assert.False(t, busy)
	rw, err := f.mgr.Open(f.ctx, info.Path)
	require.NoError(t, err)
	busy, err = volume.InUse(info.Path)
	require.NoError(t, err)
	assert.True(t, busy)
	for _, opts := range []volume.OpenOptions{{}, {ReadOnly: true}, {ReadOnly: true, Exclusive: true}} {
		_, err := f.mgr.OpenWith(f.ctx, info.Path, opts)
		require.ErrorIs(t, err, volume.ErrInUse, "%+v", opts)
		assert.Contains(t, err.Error(), "lock.img")
	}
	_, err = volume.OpenWithPassphrase(info.Path, unwrapPassphrase(t, f, info.Path))
	require.ErrorIs(t, err, volume.ErrInUse)
	require.ErrorIs(t, f.mgr.Delete(f.ctx, info.Path, volume.DeleteOptions{RemoveImage: true}), volume.ErrInUse)

	// Rotation still rewraps the open volume's header.
	k := f.rotate(t)
	require.NoError(t, f.lastReport().Err())
	assert.Equal(t, k.KeyVersion.ID, mustDescribe(t, info.Path).KeyVersion)
	data := pattern(8192, 5)
	_, err = rw.WriteAt(data, 4096)
	require.NoError(t, err)
	require.NoError(t, rw.Close())

	r1, err := f.mgr.OpenWith(f.ctx, info.Path, volume.OpenOptions{ReadOnly: true})
	require.NoError(t, err)
	r2, err := f.mgr.OpenWith(f.ctx, info.Path, volume.OpenOptions{ReadOnly: true})
	require.NoError(t, err, "shared readers coexist")
	busy, err = volume.InUse(info.Path)
	require.NoError(t, err)
	assert.False(t, busy, "shared readers are not an exclusive use")
	_, err = r1.WriteAt([]byte{1}, 0)
	require.ErrorIs(t, err, volume.ErrReadOnly)
	got := make([]byte, len(data))
	_, err = r2.ReadAt(got, 4096)
	require.NoError(t, err)
	assert.Equal(t, data, got)
	require.NoError(t, r1.Close())
	require.NoError(t, r2.Close())

	v, err := f.mgr.OpenWith(f.ctx, info.Path, volume.OpenOptions{ReadOnly: true, Exclusive: true})
	require.NoError(t, err, "free again once every open is closed")
	require.NoError(t, v.Close())
}

// TestOpenLockModes: every pair of opens of one image, the first held while the second is
// tried. A writer (read-write open, or read-write attachment) excludes every other open; a
// read-only attachment lets readers (volume read) in but no writer and no other attachment;
// readers share. InUse counts writers and attachments, not readers. Rotation rewraps the
// header whatever is open, and the readers of a read-only attachment read the data.
func TestOpenLockModes(t *testing.T) {
	// Not parallel: see TestDataAreaLock.
	f := newFixture(t)
	info := f.create(t, "modes.img", 1<<20)
	data := pattern(4096, 9)
	v, err := f.mgr.Open(f.ctx, info.Path)
	require.NoError(t, err)
	_, err = v.WriteAt(data, 0)
	require.NoError(t, err)
	require.NoError(t, v.Close())

	modes := map[string]volume.OpenOptions{
		"write":     {},
		"read":      {ReadOnly: true},
		"attach":    {Exclusive: true},
		"attach-ro": {ReadOnly: true, Exclusive: true},
	}
	tests := []struct {
		first  string
		inUse  bool
		admits []string // the second opens that succeed; the others fail with ErrInUse
	}{
		{first: "write", inUse: true},
		{first: "attach", inUse: true},
		{first: "attach-ro", inUse: true, admits: []string{"read"}},
		{first: "read", admits: []string{"read", "attach-ro"}},
	}
	for _, tt := range tests {
		t.Run(tt.first, func(t *testing.T) {
			first, err := f.mgr.OpenWith(f.ctx, info.Path, modes[tt.first])
			require.NoError(t, err)
			defer func() { require.NoError(t, first.Close()) }()
			busy, err := volume.InUse(info.Path)
			require.NoError(t, err)
			assert.Equal(t, tt.inUse, busy, "InUse")
			for _, second := range []string{"write", "read", "attach", "attach-ro"} {
				v, err := f.mgr.OpenWith(f.ctx, info.Path, modes[second])
				if !slices.Contains(tt.admits, second) {
					require.ErrorIs(t, err, volume.ErrInUse, "%s while %s", second, tt.first)
					continue
				}
				require.NoError(t, err, "%s while %s", second, tt.first)
				got := make([]byte, len(data))
				_, err = v.ReadAt(got, 0)
				require.NoError(t, err)
				assert.Equal(t, data, got)
				require.NoError(t, v.Close())
			}
			k := f.rotate(t)
			require.NoError(t, f.lastReport().Err())
			assert.Equal(t, k.KeyVersion.ID, mustDescribe(t, info.Path).KeyVersion, "rotation rewraps while %s", tt.first)
		})
	}
}
