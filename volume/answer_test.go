package volume_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/internal/tooltest"
	"crkvol/keyslot"
	"crkvol/volume"
)

// incompleteKMS answers Wrap, Rewrap, or Unwrap's rewrapped ciphertext with a chosen (empty or
// partial) result as a success, as a broken or incompatible key service might.
type incompleteKMS struct {
	volume.KeyService
	wrap, rewrap, rewrapped *volume.Wrapped
	emptyPlaintext          bool
}

func (k *incompleteKMS) Wrap(ctx context.Context, keyID string, pt []byte, aad []string) (volume.Wrapped, error) {
	if k.wrap != nil {
		return *k.wrap, nil
	}
	return k.KeyService.Wrap(ctx, keyID, pt, aad)
}

func (k *incompleteKMS) Rewrap(ctx context.Context, keyID string, ct []byte, aad []string) (volume.Wrapped, error) {
	if k.rewrap != nil {
		return *k.rewrap, nil
	}
	return k.KeyService.Rewrap(ctx, keyID, ct, aad)
}

// RewrapBatch rewraps each item through incompleteKMS's own Rewrap, so its behaviour holds for batches.
func (k *incompleteKMS) RewrapBatch(ctx context.Context, keyID string, items []volume.RewrapItem) ([]volume.Wrapped, []error, error) {
	out, errs := volume.RewrapEach(ctx, k, keyID, items)
	return out, errs, nil
}

func (k *incompleteKMS) Unwrap(ctx context.Context, keyID string, ct []byte, aad []string) (volume.Unwrapped, error) {
	u, err := k.KeyService.Unwrap(ctx, keyID, ct, aad)
	if err != nil {
		return u, err
	}
	if k.emptyPlaintext {
		clear(u.Plaintext)
		u.Plaintext = nil
	}
	if k.rewrapped != nil && u.Rewrapped != nil {
		w := *k.rewrapped
		u.Rewrapped = &w
	}
	return u, nil
}

// incompleteAnswer is a wrap result crkvol must never store.
type incompleteAnswer struct {
	name string
	w    volume.Wrapped
}

// incompleteAnswers lists the wrap results crkvol must never store.
func incompleteAnswers() []incompleteAnswer {
	return []incompleteAnswer{
		{"empty", volume.Wrapped{}},
		{"no key version", volume.Wrapped{Ciphertext: []byte("c2VjcmV0")}},
		{"no ciphertext", volume.Wrapped{VersionID: "0f9e4a55-1c1e-4f5e-8d1a-6b2f0b9e8a11"}},
		{"empty ciphertext", volume.Wrapped{Ciphertext: []byte{}, VersionID: "0f9e4a55-1c1e-4f5e-8d1a-6b2f0b9e8a11"}},
	}
}

// registeredVersion returns the key version the key service has for crn.
func registeredVersion(t testing.TB, f *fixture, crn string) string {
	t.Helper()
	regs, err := f.svc.ListRegistrations(f.ctx, crk.RegistrationFilter{CRN: crn})
	require.NoError(t, err)
	require.Len(t, regs, 1)
	return regs[0].KeyVersion.ID
}

// openAndClose opens the volume at path with mgr and closes it.
func openAndClose(t testing.TB, f *fixture, mgr *volume.Manager, path string) {
	t.Helper()
	v, err := mgr.Open(f.ctx, path)
	require.NoError(t, err)
	require.NoError(t, v.Close())
}

// TestIncompleteRewrapAnswerKeepsToken: a key service whose Rewrap succeeds without a
// ciphertext or a key version (a 200 with an empty body) does not destroy the only wrapped
// copy of the passphrase: the token stays byte for byte, the volume still opens, the
// registration stays, and the rewrap is reported failed with ErrIncompleteAnswer, which is
// not a refusal.
func TestIncompleteRewrapAnswerKeepsToken(t *testing.T) {
	t.Parallel()
	for _, c := range incompleteAnswers() {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			info := f.create(t, "v.img", 1<<20)
			f.mgr.Close()
			k := f.rotate(t)
			before := readToken(t, info.Path)

			mgr := volume.NewManager(&incompleteKMS{KeyService: f.ks, rewrap: &c.w}, f.reg, volume.Options{Attempts: 2})
			mgr.Close()
			rep := mgr.Rewrap(f.ctx, f.key.ID, k.KeyVersion.ID, []string{info.CRN})
			require.Len(t, rep.Failed, 1)
			require.ErrorIs(t, rep.Failed[info.CRN], volume.ErrIncompleteAnswer)
			assert.NotErrorIs(t, rep.Failed[info.CRN], volume.ErrKeyRefused, "a failure, not a refusal")
			assert.Equal(t, 1, rep.Retries, "retried like any failure")
			assert.Zero(t, rep.Rewrapped)

			assert.Equal(t, before, readToken(t, info.Path), "token byte for byte")
			assert.Equal(t, info.KeyVersion, registeredVersion(t, f, info.CRN))
			openAndClose(t, f, f.mgr, info.Path) // and this lazily rewraps it for real
			assert.Equal(t, k.KeyVersion.ID, mustDescribe(t, info.Path).KeyVersion)
		})
	}
}

// TestIncompleteLazyRewrapKeepsToken: an unwrap whose rewrapped ciphertext lacks a ciphertext
// or a key version opens the volume (the old ciphertext worked), leaves the token byte for
// byte and the registration where it was, and logs the lazy rewrap as failed.
func TestIncompleteLazyRewrapKeepsToken(t *testing.T) {
	t.Parallel()
	for _, c := range incompleteAnswers() {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			info := f.create(t, "v.img", 1<<20)
			f.mgr.Close()
			f.rotate(t)
			before := readToken(t, info.Path)

			var log tooltest.SyncBuffer
			mgr := volume.NewManager(&incompleteKMS{KeyService: f.ks, rewrapped: &c.w}, f.reg,
				volume.Options{Logger: slog.New(slog.NewTextHandler(&log, nil))})
			mgr.Close()
			openAndClose(t, f, mgr, info.Path)
			assert.Equal(t, before, readToken(t, info.Path), "token byte for byte")
			assert.Equal(t, info.KeyVersion, registeredVersion(t, f, info.CRN))
			assert.Contains(t, log.String(), "lazy rewrap failed")
			assert.Contains(t, log.String(), volume.ErrIncompleteAnswer.Error())
			openAndClose(t, f, f.mgr, info.Path)
		})
	}
}

// TestIncompleteWrapAnswerFailsCreate: a Wrap answer without a ciphertext or a key version
// fails Create with ErrIncompleteAnswer and leaves nothing behind (no image, no registration).
func TestIncompleteWrapAnswerFailsCreate(t *testing.T) {
	t.Parallel()
	for _, c := range incompleteAnswers() {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			mgr := volume.NewManager(&incompleteKMS{KeyService: f.ks, wrap: &c.w}, f.reg, volume.Options{})
			mgr.Close()
			path := f.dir + "/v.img"
			_, err := mgr.Create(f.ctx, path, volume.CreateOptions{KeyID: f.key.ID, Size: 1 << 20, KeyslotsSize: 512 << 10})
			require.ErrorIs(t, err, volume.ErrIncompleteAnswer)
			_, err = os.Stat(path)
			assert.True(t, os.IsNotExist(err), "no image left")
			regs, err := f.svc.ListRegistrations(f.ctx, crk.RegistrationFilter{KeyID: f.key.ID})
			require.NoError(t, err)
			assert.Empty(t, regs)
		})
	}
}

// TestEmptyUnwrapPlaintextFailsOpen: an unwrap answer without a plaintext is reported as
// ErrIncompleteAnswer rather than as a wrong passphrase.
func TestEmptyUnwrapPlaintextFailsOpen(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	info := f.create(t, "v.img", 1<<20)
	mgr := volume.NewManager(&incompleteKMS{KeyService: f.ks, emptyPlaintext: true}, f.reg, volume.Options{})
	mgr.Close()
	_, err := mgr.Open(f.ctx, info.Path)
	require.ErrorIs(t, err, volume.ErrIncompleteAnswer)
	assert.NotErrorIs(t, err, keyslot.ErrWrongPassphrase)
}

// setTokenMember replaces the value of member name in the crkvol-crk token of the image at
// path, as a hand edit with cryptsetup token import would.
func setTokenMember(t testing.TB, path, name, value string) {
	t.Helper()
	require.NoError(t, updateToken(t, path, func(cur json.RawMessage) ([]byte, error) {
		var members map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(cur, &members))
		old, ok := members[name]
		require.True(t, ok, "token has %s", name)
		out := bytes.Replace(cur, []byte(`"`+name+`":`+string(old)), []byte(`"`+name+`":`+value), 1)
		require.NotEqual(t, []byte(cur), out)
		return out, nil
	}))
}

// TestTokenWithoutKeyslotIsNotErased: a token whose keyslots member is empty is a bad token
// (naming the member) while the image still has keyslots, and means crypto-erased only when
// no keyslot is left. (A null keyslots member never reaches crkvol from an image: LUKS2
// metadata requires an array, and the keyslot package refuses the header.)
func TestTokenWithoutKeyslotIsNotErased(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		erase bool // crypto-erase (which empties the token's keyslots) instead of a hand edit
		want  error
	}{
		{"emptied by hand, keyslots left", false, volume.ErrBadToken},
		{"crypto-erased", true, volume.ErrErased},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			info := f.create(t, "v.img", 1<<20)
			if c.erase {
				fh, err := os.OpenFile(info.Path, os.O_RDWR, 0)
				require.NoError(t, err)
				img, err := keyslot.Open(fh, nil)
				require.NoError(t, err)
				require.NoError(t, img.Erase())
				require.NoError(t, fh.Close())
			} else {
				setTokenMember(t, info.Path, "keyslots", `[]`)
			}
			_, values := tokenMembers(t, readToken(t, info.Path))
			require.Equal(t, `[]`, values["keyslots"])
			_, err := f.mgr.Open(f.ctx, info.Path)
			require.ErrorIs(t, err, c.want)
			if c.want == volume.ErrBadToken {
				assert.NotErrorIs(t, err, volume.ErrErased)
				assert.Contains(t, err.Error(), "keyslots")
			}
		})
	}
}

// TestHandEditedWrappedAtStillOpens: a wrapped_at that is not an RFC 3339 time does not lock
// the volume out: it opens and describes (WrappedAt zero), the member survives as read, and
// the next rewrap writes a proper time.
func TestHandEditedWrappedAtStillOpens(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	info := f.create(t, "v.img", 1<<20)
	setTokenMember(t, info.Path, "wrapped_at", `"last tuesday"`)

	openAndClose(t, f, f.mgr, info.Path)
	d := mustDescribe(t, info.Path)
	assert.True(t, d.WrappedAt.IsZero())
	_, values := tokenMembers(t, readToken(t, info.Path))
	assert.Equal(t, `"last tuesday"`, values["wrapped_at"])

	k := f.rotate(t) // the hook rewraps
	require.NoError(t, f.lastReport().Err())
	d = mustDescribe(t, info.Path)
	assert.Equal(t, k.KeyVersion.ID, d.KeyVersion)
	assert.Equal(t, f.clock.Now().UTC().Truncate(1e9), d.WrappedAt)
	_, values = tokenMembers(t, readToken(t, info.Path))
	assert.False(t, strings.Contains(values["wrapped_at"], "tuesday"))
	openAndClose(t, f, f.mgr, info.Path)
}

// heldRegUpdateKMS holds its first UpdateRegistration until released, as a slow network
// round trip would.
type heldRegUpdateKMS struct {
	volume.KeyService
	entered, release chan struct{}
	once             sync.Once
}

func (k *heldRegUpdateKMS) UpdateRegistration(ctx context.Context, keyID, crn, versionID string) error {
	first := false
	k.once.Do(func() { first = true })
	if first {
		close(k.entered)
		<-k.release
	}
	return k.KeyService.UpdateRegistration(ctx, keyID, crn, versionID)
}

// UpdateRegistrations updates each registration through heldRegUpdateKMS's own UpdateRegistration, so its
// behaviour holds for batches.
func (k *heldRegUpdateKMS) UpdateRegistrations(ctx context.Context, keyID string, updates []volume.RegistrationUpdate) ([]error, error) {
	return volume.UpdateEach(ctx, k, keyID, updates), nil
}

// TestLateLazyRegistrationUpdateIsIgnored: a lazy rewrap on open commits v2 and its
// registration update is delayed; meanwhile a rotation rewraps the volume to v3 and records
// v3. When the lazy path's update to v2 finally lands, the crk service (through kms.Local)
// ignores it: the registration stays on v3, matching the token.
func TestLateLazyRegistrationUpdateIsIgnored(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	info := f.create(t, "v.img", 1<<20)
	f.mgr.Close()
	v2 := f.rotate(t).KeyVersion.ID

	held := &heldRegUpdateKMS{KeyService: f.ks, entered: make(chan struct{}), release: make(chan struct{})}
	lazy := volume.NewManager(held, f.reg, volume.Options{})
	lazy.Close()
	opened := make(chan error, 1)
	go func() {
		v, err := lazy.Open(f.ctx, info.Path)
		if err == nil {
			err = v.Close()
		}
		opened <- err
	}()
	<-held.entered
	require.Equal(t, v2, mustDescribe(t, info.Path).KeyVersion, "the lazy rewrap committed v2")

	var reports []*volume.Report
	var mu sync.Mutex
	hook := volume.NewManager(f.ks, f.reg, volume.Options{OnReport: func(r *volume.Report) { mu.Lock(); reports = append(reports, r); mu.Unlock() }})
	v3 := f.rotate(t).KeyVersion.ID
	hook.Close()
	mu.Lock()
	require.Len(t, reports, 1)
	require.NoError(t, reports[0].Err())
	assert.Equal(t, 1, reports[0].Rewrapped)
	mu.Unlock()
	require.Equal(t, v3, registeredVersion(t, f, info.CRN))

	close(held.release) // the late update to v2 lands now
	require.NoError(t, <-opened)
	assert.Equal(t, v3, registeredVersion(t, f, info.CRN), "not moved back to v2")
	assert.Equal(t, v3, mustDescribe(t, info.Path).KeyVersion)
	openAndClose(t, f, f.mgr, info.Path)
}
