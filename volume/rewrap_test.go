package volume_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/internal/tooltest"
	"crkvol/keyslot"
	"crkvol/volume"
)

// tokenMembers returns the names of a token's members in document order and their values
// exactly as stored.
func tokenMembers(t testing.TB, raw []byte) ([]string, map[string]string) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(raw))
	tok, err := dec.Token()
	require.NoError(t, err)
	require.Equal(t, json.Delim('{'), tok)
	var names []string
	values := map[string]string{}
	for dec.More() {
		k, err := dec.Token()
		require.NoError(t, err)
		var v json.RawMessage
		require.NoError(t, dec.Decode(&v))
		names = append(names, k.(string))
		values[k.(string)] = string(v)
	}
	return names, values
}

// extraMember is a member crkvol does not know, with values of every JSON kind.
const extraMember = `"x-ops":{"owner":"storage-team","ticket":[4711,-1,18446744073709551615],"note":"a/b \"c\" é","on":true,"none":null}`

// withExtraMember inserts extraMember before key_version in a token.
func withExtraMember(t testing.TB, raw []byte) []byte {
	t.Helper()
	out := bytes.Replace(raw, []byte(`"key_version":`), []byte(extraMember+`,"key_version":`), 1)
	require.NotEqual(t, raw, out)
	return out
}

// updateToken applies fn to the crkvol-crk token of the image at path through its own open
// file (as another process would), with a deadline.
func updateToken(t testing.TB, path string, fn func(cur json.RawMessage) ([]byte, error)) error {
	t.Helper()
	fh, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer fh.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	img, err := keyslot.OpenContext(ctx, fh, nil)
	if err != nil {
		return err
	}
	return img.UpdateTokenContext(ctx, img.Tokens()[0].ID, fn)
}

// TestUnknownTokenMemberSurvivesRewrap: a member crkvol does not know, added to the token by
// another tool (cryptsetup token import) or through the library, keeps its place and its
// bytes through a rotation's rewrap and through a lazy rewrap on open, while the members
// crkvol owns move to the new key version.
func TestUnknownTokenMemberSurvivesRewrap(t *testing.T) {
	adders := []struct {
		name string
		add  func(t *testing.T, f *fixture, path string)
	}{
		{"library", func(t *testing.T, f *fixture, path string) {
			require.NoError(t, updateToken(t, path, func(cur json.RawMessage) ([]byte, error) {
				return withExtraMember(t, cur), nil
			}))
		}},
		{"cryptsetup token import", func(t *testing.T, f *fixture, path string) {
			cs := tooltest.Require(t, "cryptsetup")["cryptsetup"]
			out, err := exec.Command(cs, "token", "export", "--token-id", "0", path).Output()
			require.NoError(t, err)
			file := filepath.Join(f.dir, "token.json")
			require.NoError(t, os.WriteFile(file, withExtraMember(t, bytes.TrimSpace(out)), 0o600))
			run(t, cs, "token", "import", "--token-id", "0", "--token-replace", "--json-file", file, path)
		}},
	}
	rewraps := []struct {
		name   string
		rewrap func(t *testing.T, f *fixture, path string) *crk.Key
	}{
		{"rotation", func(t *testing.T, f *fixture, path string) *crk.Key {
			k := f.rotate(t)
			require.NoError(t, f.lastReport().Err())
			require.Equal(t, 1, f.lastReport().Rewrapped)
			return k
		}},
		{"lazy on open", func(t *testing.T, f *fixture, path string) *crk.Key {
			f.mgr.Close() // no rotation hook: the open rewraps
			k := f.rotate(t)
			mgr := volume.NewManager(f.ks, f.reg, volume.Options{})
			defer mgr.Close()
			v, err := mgr.Open(f.ctx, path)
			require.NoError(t, err)
			require.NoError(t, v.Close())
			return k
		}},
	}
	for _, a := range adders {
		for _, r := range rewraps {
			t.Run(a.name+"/"+r.name, func(t *testing.T) {
				f := newFixture(t)
				info := f.create(t, "v.img", 1<<20)
				a.add(t, f, info.Path)
				before := readToken(t, info.Path)
				names, values := tokenMembers(t, before)
				require.Contains(t, values, "x-ops")

				k := r.rewrap(t, f, info.Path)

				after := readToken(t, info.Path)
				gotNames, gotValues := tokenMembers(t, after)
				assert.Equal(t, names, gotNames, "member order kept")
				assert.Equal(t, values["x-ops"], gotValues["x-ops"], "unknown member byte for byte")
				assert.Equal(t, `"`+k.KeyVersion.ID+`"`, gotValues["key_version"])
				assert.NotEqual(t, values["ciphertext"], gotValues["ciphertext"])
				assert.Equal(t, k.KeyVersion.ID, mustDescribe(t, info.Path).KeyVersion)
				v, err := f.mgr.Open(f.ctx, info.Path)
				require.NoError(t, err)
				require.NoError(t, v.Close())
				if a.name == "cryptsetup token import" {
					out, err := exec.Command("cryptsetup", "token", "export", "--token-id", "0", info.Path).Output()
					require.NoError(t, err)
					assert.Contains(t, string(out), values["x-ops"], "cryptsetup reads the member back")
				}
			})
		}
	}
}

// TestTokenCheckedAgainstImage: a token that does not belong to its image is refused before any
// key service call, naming the member at fault. (A token naming a keyslot the image lacks
// cannot be written: the keyslot package refuses such metadata on write and on read.)
func TestTokenCheckedAgainstImage(t *testing.T) {
	cases := []struct {
		name   string
		edit   func(f *fixture, a, b *volume.Info, cur []byte) []byte
		member string
	}{
		{"copied verbatim from another volume", func(f *fixture, a, b *volume.Info, cur []byte) []byte {
			return readToken(t, a.Path)
		}, "volume_crn"},
		{"volume_crn of another volume", func(f *fixture, a, b *volume.Info, cur []byte) []byte {
			return bytes.Replace(cur, []byte(b.CRN), []byte(a.CRN), 1)
		}, "volume_crn"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			a := f.create(t, "a.img", 1<<20)
			b := f.create(t, "b.img", 1<<20)
			require.NoError(t, updateToken(t, b.Path, func(cur json.RawMessage) ([]byte, error) {
				return c.edit(f, a, b, cur), nil
			}))
			counting := &countingKMS{KeyService: f.ks}
			mgr := volume.NewManager(counting, f.reg, volume.Options{})
			defer mgr.Close()
			_, err := mgr.Open(f.ctx, b.Path)
			require.ErrorIs(t, err, volume.ErrBadToken)
			assert.Contains(t, err.Error(), c.member)
			_, err = volume.Describe(b.Path)
			require.ErrorIs(t, err, volume.ErrBadToken)
			assert.Zero(t, counting.unwraps.Load(), "refused before any unwrap")
		})
	}
}

// countingKMS counts key service calls; Rewrap fails with rewrapErr when it is set.
type countingKMS struct {
	volume.KeyService
	unwraps, rewraps atomic.Int32
	rewrapErr        error
}

func (k *countingKMS) Unwrap(ctx context.Context, keyID string, ct []byte, aad []string) (volume.Unwrapped, error) {
	k.unwraps.Add(1)
	return k.KeyService.Unwrap(ctx, keyID, ct, aad)
}

func (k *countingKMS) Rewrap(ctx context.Context, keyID string, ct []byte, aad []string) (volume.Wrapped, error) {
	k.rewraps.Add(1)
	if k.rewrapErr != nil {
		return volume.Wrapped{}, k.rewrapErr
	}
	return k.KeyService.Rewrap(ctx, keyID, ct, aad)
}

// RewrapBatch rewraps each item through countingKMS's own Rewrap, so its behaviour holds for batches.
func (k *countingKMS) RewrapBatch(ctx context.Context, keyID string, items []volume.RewrapItem) ([]volume.Wrapped, []error, error) {
	out, errs := volume.RewrapEach(ctx, k, keyID, items)
	return out, errs, nil
}

// TestRewrapRetriesOnlyTransientFailures: a refusal of the key service (marked with
// ErrKeyRefused) is tried once and reported with its own error; a transient failure is tried
// Attempts times; either way the old wrapping stays.
func TestRewrapRetriesOnlyTransientFailures(t *testing.T) {
	suspended := errors.New("key is suspended")
	cases := []struct {
		name      string
		err       error
		wantCalls int32
		wantIs    error
	}{
		{"refusal", fmt.Errorf("kms: rewrap: %w: %w", volume.ErrKeyRefused, suspended), 1, suspended},
		{"refusal from the crk service", fmt.Errorf("%w: %w", volume.ErrKeyRefused, crk.ErrKeySuspended), 1, crk.ErrKeySuspended},
		{"transient", errors.New("connection reset by peer"), 5, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			info := f.create(t, "v.img", 1<<20)
			f.mgr.Close()
			k := f.rotate(t)
			counting := &countingKMS{KeyService: f.ks, rewrapErr: c.err}
			mgr := volume.NewManager(counting, f.reg, volume.Options{Attempts: 5, Backoff: func(int) time.Duration { return 0 }})
			defer mgr.Close()
			rep := mgr.Rewrap(f.ctx, f.key.ID, k.KeyVersion.ID, []string{info.CRN})
			assert.Equal(t, c.wantCalls, counting.rewraps.Load())
			assert.Equal(t, int(c.wantCalls)-1, rep.Retries)
			require.Len(t, rep.Failed, 1)
			require.ErrorIs(t, rep.Failed[info.CRN], c.err)
			if c.wantIs != nil {
				require.ErrorIs(t, rep.Err(), c.wantIs)
			}
			assert.Equal(t, info.KeyVersion, mustDescribe(t, info.Path).KeyVersion, "old wrapping kept")
		})
	}
}

// blockingKMS holds its first Rewrap's answer (already computed by the key service) until
// released, as a slow network round trip would.
type blockingKMS struct {
	volume.KeyService
	entered, release chan struct{}
	calls            atomic.Int32
}

func newBlockingKMS(ks volume.KeyService) *blockingKMS {
	return &blockingKMS{KeyService: ks, entered: make(chan struct{}), release: make(chan struct{})}
}

func (k *blockingKMS) Rewrap(ctx context.Context, keyID string, ct []byte, aad []string) (volume.Wrapped, error) {
	w, err := k.KeyService.Rewrap(ctx, keyID, ct, aad)
	if k.calls.Add(1) == 1 {
		close(k.entered)
		select {
		case <-k.release:
		case <-ctx.Done():
			return volume.Wrapped{}, ctx.Err()
		}
	}
	return w, err
}

// RewrapBatch rewraps each item through blockingKMS's own Rewrap, so its behaviour holds for batches.
func (k *blockingKMS) RewrapBatch(ctx context.Context, keyID string, items []volume.RewrapItem) ([]volume.Wrapped, []error, error) {
	out, errs := volume.RewrapEach(ctx, k, keyID, items)
	return out, errs, nil
}

// rewrapInBackground starts a rewrap of info's volume to latest through a Manager on ks (not
// subscribed to rotations: it rewraps only when told) and returns its report when done.
func rewrapInBackground(f *fixture, ks volume.KeyService, latest string, info *volume.Info) <-chan *volume.Report {
	mgr := volume.NewManager(ks, f.reg, volume.Options{})
	mgr.Close()
	done := make(chan *volume.Report, 1)
	go func() { done <- mgr.Rewrap(f.ctx, f.key.ID, latest, []string{info.CRN}) }()
	return done
}

// TestRewrapHoldsNoLockAcrossKeyService: while the key service's Rewrap is in flight, the
// image's header lock is free: another open of the image (its own file, as another process)
// updates the token at once. The rewrap then commits on top of that update, keeping it.
func TestRewrapHoldsNoLockAcrossKeyService(t *testing.T) {
	f := newFixture(t)
	info := f.create(t, "v.img", 1<<20)
	f.mgr.Close()
	k := f.rotate(t)
	slow := newBlockingKMS(f.ks)
	done := rewrapInBackground(f, slow, k.KeyVersion.ID, info)
	<-slow.entered

	start := time.Now()
	require.NoError(t, updateToken(t, info.Path, func(cur json.RawMessage) ([]byte, error) {
		return withExtraMember(t, cur), nil
	}), "the header lock is free while the key service works")
	assert.Less(t, time.Since(start), 20*time.Second, "not held up by the key service (a failure bound, not a speed target)")
	_, values := tokenMembers(t, readToken(t, info.Path))
	assert.Equal(t, `"`+info.KeyVersion+`"`, values["key_version"], "not committed yet")

	close(slow.release)
	rep := <-done
	require.NoError(t, rep.Err())
	assert.Equal(t, 1, rep.Rewrapped)
	_, values = tokenMembers(t, readToken(t, info.Path))
	assert.Equal(t, `"`+k.KeyVersion.ID+`"`, values["key_version"])
	assert.Contains(t, values, "x-ops", "the concurrent update is kept")
	v, err := f.mgr.Open(f.ctx, info.Path)
	require.NoError(t, err)
	require.NoError(t, v.Close())
}

// TestRewrapLosesRaceToNewerCiphertext: another writer rewraps the token while this rewrap's
// key service call is in flight. The compare and swap fails, the other writer's newer (or as
// new) ciphertext is never replaced by the older answer, and the volume opens, registered on
// the version its token has.
func TestRewrapLosesRaceToNewerCiphertext(t *testing.T) {
	cases := []struct {
		name string
		// meanwhile runs while the first rewrap's answer is held; it returns the version the
		// token must end on.
		meanwhile func(t *testing.T, f *fixture, info *volume.Info, latest string) string
		// keepsTheirs: the other writer's ciphertext survives byte for byte.
		keepsTheirs bool
	}{
		{"same version", func(t *testing.T, f *fixture, info *volume.Info, latest string) string {
			rep := <-rewrapInBackground(f, f.ks, latest, info)
			require.NoError(t, rep.Err())
			require.Equal(t, 1, rep.Rewrapped)
			return latest
		}, true},
		{"newer version after another rotation", func(t *testing.T, f *fixture, info *volume.Info, latest string) string {
			k := f.rotate(t)
			rep := <-rewrapInBackground(f, f.ks, k.KeyVersion.ID, info)
			require.NoError(t, rep.Err())
			require.Equal(t, 1, rep.Rewrapped)
			return k.KeyVersion.ID
		}, false},
		{"lazy rewrap on open", func(t *testing.T, f *fixture, info *volume.Info, latest string) string {
			mgr := volume.NewManager(f.ks, f.reg, volume.Options{})
			mgr.Close()
			v, err := mgr.Open(f.ctx, info.Path)
			require.NoError(t, err)
			require.NoError(t, v.Close())
			return latest
		}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			info := f.create(t, "v.img", 1<<20)
			f.mgr.Close()
			k := f.rotate(t)
			slow := newBlockingKMS(f.ks)
			done := rewrapInBackground(f, slow, k.KeyVersion.ID, info)
			<-slow.entered
			want := c.meanwhile(t, f, info, k.KeyVersion.ID)
			_, theirs := tokenMembers(t, readToken(t, info.Path))
			require.Equal(t, `"`+want+`"`, theirs["key_version"])

			close(slow.release)
			rep := <-done
			require.NoError(t, rep.Err())
			_, got := tokenMembers(t, readToken(t, info.Path))
			assert.Equal(t, `"`+want+`"`, got["key_version"], "never moved back to an older version")
			if c.keepsTheirs {
				assert.Equal(t, theirs["ciphertext"], got["ciphertext"], "the other writer's ciphertext is kept")
				assert.Equal(t, 1, rep.AlreadyCurrent)
				assert.Equal(t, int32(1), slow.calls.Load())
			}
			regs, err := f.svc.ListRegistrations(f.ctx, crk.RegistrationFilter{CRN: info.CRN})
			require.NoError(t, err)
			assert.Equal(t, want, regs[0].KeyVersion.ID)
			v, err := f.mgr.Open(f.ctx, info.Path)
			require.NoError(t, err)
			require.NoError(t, v.Close())
		})
	}
}

// TestGivesUpOnLockHeldByAnotherProcess: while another process holds the image's exclusive
// header lock, a rewrap, an open and a single-volume rewrap whose context is cancelled return
// promptly with context.Canceled instead of waiting for the lock.
func TestGivesUpOnLockHeldByAnotherProcess(t *testing.T) {
	f := newFixture(t)
	info := f.create(t, "v.img", 1<<20)
	f.mgr.Close()
	k := f.rotate(t)

	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), lockHelperEnv+"="+info.Path)
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	var once sync.Once
	stop := func() { once.Do(func() { stdin.Close(); _ = cmd.Wait() }) }
	defer stop()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "locked", strings.TrimSpace(line))

	mgr := volume.NewManager(f.ks, f.reg, volume.Options{})
	defer mgr.Close()
	calls := []struct {
		name string
		fn   func(ctx context.Context) error
	}{
		{"Rewrap", func(ctx context.Context) error {
			// Given up while waiting for the lock: not started (nothing was written), not failed.
			rep := mgr.Rewrap(ctx, f.key.ID, k.KeyVersion.ID, []string{info.CRN})
			assert.Equal(t, 1, rep.NotStarted)
			assert.Empty(t, rep.Failed)
			return rep.Err()
		}},
		{"RewrapVolume", func(ctx context.Context) error { _, err := mgr.RewrapVolume(ctx, info.Path); return err }},
		{"Open", func(ctx context.Context) error { _, err := mgr.Open(ctx, info.Path); return err }},
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			time.AfterFunc(50*time.Millisecond, cancel)
			start := time.Now()
			err := c.fn(ctx)
			require.ErrorIs(t, err, context.Canceled)
			assert.Less(t, time.Since(start), 20*time.Second, "returned, not waited for the lock holder (a failure bound, not a speed target)")
		})
	}
	stop()
	require.NoError(t, mgr.Rewrap(f.ctx, f.key.ID, k.KeyVersion.ID, []string{info.CRN}).Err(), "works once the lock is free")
	assert.Equal(t, k.KeyVersion.ID, mustDescribe(t, info.Path).KeyVersion)
}

// secretsKMS keeps the passphrase buffers its Unwrap returned, to check they were cleared;
// with unwrapErr set, Unwrap fails but still returns the plaintext (a careless
// implementation).
type secretsKMS struct {
	volume.KeyService
	mu        sync.Mutex
	returned  [][]byte
	unwrapErr error
}

func (k *secretsKMS) Unwrap(ctx context.Context, keyID string, ct []byte, aad []string) (volume.Unwrapped, error) {
	u, err := k.KeyService.Unwrap(ctx, keyID, ct, aad)
	k.mu.Lock()
	k.returned = append(k.returned, u.Plaintext)
	k.mu.Unlock()
	if err == nil && k.unwrapErr != nil {
		return u, k.unwrapErr
	}
	return u, err
}

// TestOpenClearsPassphraseOnEveryPath: whether an open fails after the unwrap (a keyslot the
// passphrase does not open, an unusable data area, an unwrap that fails but hands back a
// plaintext) or succeeds, the passphrase the key service returned is zeroed when it returns.
func TestOpenClearsPassphraseOnEveryPath(t *testing.T) {
	cases := []struct {
		name      string
		prepare   func(t *testing.T, f *fixture, info *volume.Info)
		unwrapErr error
		wantErr   error
	}{
		{"success", func(*testing.T, *fixture, *volume.Info) {}, nil, nil},
		{"token names a keyslot the passphrase does not open", func(t *testing.T, f *fixture, info *volume.Info) {
			pass := unwrapPassphrase(t, f, info.Path)
			fh, err := os.OpenFile(info.Path, os.O_RDWR, 0)
			require.NoError(t, err)
			defer fh.Close()
			img, err := keyslot.Open(fh, nil)
			require.NoError(t, err)
			vk, _, err := img.Unlock(pass, 0)
			require.NoError(t, err)
			_, err = img.AddKeyslot(vk, []byte("another passphrase"), keyslot.SlotOptions{ID: 1, KDF: keyslot.PBKDF2("sha256", 1000)})
			require.NoError(t, err)
			clear(vk)
			require.NoError(t, img.UpdateToken(img.Tokens()[0].ID, func(cur json.RawMessage) ([]byte, error) {
				return bytes.Replace(cur, []byte(`"keyslots":["0"]`), []byte(`"keyslots":["1"]`), 1), nil
			}))
		}, nil, keyslot.ErrWrongPassphrase},
		{"data area unusable", func(t *testing.T, f *fixture, info *volume.Info) {
			require.NoError(t, os.Truncate(info.Path, info.DataOffset))
		}, nil, volume.ErrUnsupportedImage},
		{"unwrap fails but returns a plaintext", func(*testing.T, *fixture, *volume.Info) {}, errors.New("audit write failed"), nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			info := f.create(t, "v.img", 1<<20)
			c.prepare(t, f, info)
			ks := &secretsKMS{KeyService: f.ks, unwrapErr: c.unwrapErr}
			mgr := volume.NewManager(ks, f.reg, volume.Options{})
			defer mgr.Close()
			v, err := mgr.Open(f.ctx, info.Path)
			switch {
			case c.unwrapErr != nil:
				require.ErrorIs(t, err, c.unwrapErr)
			case c.wantErr != nil:
				require.ErrorIs(t, err, c.wantErr)
			default:
				require.NoError(t, err)
				require.NoError(t, v.Close())
			}
			require.Len(t, ks.returned, 1)
			require.Len(t, ks.returned[0], 32)
			assert.Equal(t, make([]byte, 32), ks.returned[0], "passphrase cleared")
		})
	}
}
