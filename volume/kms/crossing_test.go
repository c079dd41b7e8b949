package kms_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/keyslot"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// crossFixture is one store reached both ways, as `crkvol` is in local mode and with
// --kms-url against `crkvol kms serve` on the same store: the default instance of the server
// is the embedded service.
type crossFixture struct {
	dir    string
	clock  *crk.ManualClock
	svc    *crk.Service
	remote *kms.Remote
	reg    *volume.Registry
}

func newCrossFixture(t *testing.T, st serverStore) *crossFixture {
	t.Helper()
	dir := t.TempDir()
	clock := crk.NewManualClock(time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC))
	tenants, inst, svc := st.open(t, dir, crk.Options{Clock: clock, MasterKey: bytes.Repeat([]byte{4}, 32)})
	srv := httptest.NewServer(kpapi.NewServer(tenants))
	t.Cleanup(srv.Close)
	apiKey, err := tenants.CreateAPIKey(inst)
	require.NoError(t, err)
	remote, err := kms.NewRemote(kms.RemoteConfig{URL: srv.URL, Instance: inst, APIKey: apiKey})
	require.NoError(t, err)
	reg, err := volume.OpenRegistry(filepath.Join(dir, "volumes.db"))
	require.NoError(t, err)
	t.Cleanup(func() { reg.Close() })
	return &crossFixture{dir: dir, clock: clock, svc: svc, remote: remote, reg: reg}
}

// ks returns the key service of mode "local" or "remote".
func (f *crossFixture) ks(mode string) volume.KeyService {
	if mode == "remote" {
		return f.remote
	}
	return kms.NewLocal(f.svc)
}

// manager returns a volume manager through the key service of mode, closed when the test
// ends.
func (f *crossFixture) manager(t *testing.T, mode string) *volume.Manager {
	t.Helper()
	m := volume.NewManager(f.ks(mode), f.reg, volume.Options{})
	t.Cleanup(m.Close)
	return m
}

// readBack opens path through mgr and checks that it holds data at off.
func readBack(t *testing.T, mgr *volume.Manager, path string, data []byte, off int64) {
	t.Helper()
	v, err := mgr.Open(t.Context(), path)
	require.NoError(t, err)
	got := make([]byte, len(data))
	_, err = v.ReadAt(got, off)
	require.NoError(t, err)
	require.NoError(t, v.Close())
	assert.True(t, bytes.Equal(data, got), "data read back")
}

// createWithData creates a volume at path through the key service of mode, writes data at
// off, and closes its manager (which so has no rotation hook left).
func createWithData(t *testing.T, f *crossFixture, mode, keyID, path string, data []byte, off int64) {
	t.Helper()
	ctx := context.Background()
	creator := volume.NewManager(f.ks(mode), f.reg, volume.Options{})
	defer creator.Close()
	_, err := creator.Create(ctx, path, volume.CreateOptions{KeyID: keyID, Size: 2 << 20, KeyslotsSize: 512 << 10})
	require.NoError(t, err)
	v, err := creator.Open(ctx, path)
	require.NoError(t, err)
	_, err = v.WriteAt(data, off)
	require.NoError(t, err)
	require.NoError(t, v.Close())
}

// tokenCiphertext returns the ciphertext member of the volume's crkvol token.
func tokenCiphertext(t *testing.T, path string) string {
	t.Helper()
	fh, err := os.Open(path)
	require.NoError(t, err)
	defer fh.Close()
	img, err := keyslot.Open(fh, nil)
	require.NoError(t, err)
	raw, err := img.Token(img.Tokens()[0].ID)
	require.NoError(t, err)
	var tok struct {
		Ciphertext string `json:"ciphertext"`
	}
	require.NoError(t, json.Unmarshal(raw, &tok))
	return tok.Ciphertext
}

// setTokenCiphertext rewrites the ciphertext member of the volume's crkvol token, as an older
// crkvol would have written it.
func setTokenCiphertext(t *testing.T, path, ct string) {
	t.Helper()
	fh, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer fh.Close()
	img, err := keyslot.Open(fh, nil)
	require.NoError(t, err)
	require.NoError(t, img.UpdateToken(img.Tokens()[0].ID, func(cur json.RawMessage) ([]byte, error) {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(cur, &m); err != nil {
			return nil, err
		}
		v, err := json.Marshal(ct)
		if err != nil {
			return nil, err
		}
		m["ciphertext"] = v
		return json.Marshal(m)
	}))
}

// assertKeyProtectForm checks that a token's ciphertext is the Key Protect ciphertext string:
// the base64 of the service's binary ciphertext (which starts with "CRK1"), not base64 of
// base64.
func assertKeyProtectForm(t *testing.T, ct string) {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(ct)
	require.NoError(t, err)
	assert.True(t, bytes.HasPrefix(raw, []byte("CRK1")), "the token holds the Key Protect ciphertext string")
}

// rotateThroughServer rotates key keyID with the API, as `crkvol --kms-url … key rotate`
// does, and returns the new latest version.
func rotateThroughServer(t *testing.T, f *crossFixture, keyID string) string {
	t.Helper()
	f.clock.Advance(2 * time.Hour) // past the one-rotation-per-hour limit
	require.NoError(t, f.remote.RotateKey(t.Context(), keyID, nil))
	k, err := f.svc.GetKeyMetadata(t.Context(), keyID)
	require.NoError(t, err)
	return k.KeyVersion.ID
}

// TestVolumeCrossesModes: a volume made through one way of reaching the key service opens
// through the other, a rotation through the server followed by a sync (in either mode)
// rewraps it, and it opens again the first way; every token written holds the one encoding,
// the Key Protect ciphertext string.
func TestVolumeCrossesModes(t *testing.T) {
	forEachStore(t, func(t *testing.T, st serverStore) {
		cases := []struct{ name, create, open, sync string }{
			{"local create, remote open, remote sync", "local", "remote", "remote"},
			{"local create, remote open, local sync", "local", "remote", "local"},
			{"remote create, local open, local sync", "remote", "local", "local"},
			{"remote create, local open, remote sync", "remote", "local", "remote"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				f := newCrossFixture(t, st)
				ctx := t.Context()
				key, err := f.svc.CreateRootKey(ctx, "crossing")
				require.NoError(t, err)
				path := filepath.Join(f.dir, "vol.img")

				data := bytes.Repeat([]byte("crossing "), 1000)
				createWithData(t, f, c.create, key.ID, path, data, 4096) // the sync below does the rewrap
				assertKeyProtectForm(t, tokenCiphertext(t, path))

				opener := volume.NewManager(f.ks(c.open), f.reg, volume.Options{})
				readBack(t, opener, path, data, 4096)
				opener.Close()

				latest := rotateThroughServer(t, f, key.ID)
				rep, err := f.manager(t, c.sync).Sync(ctx, key.ID)
				require.NoError(t, err)
				require.NoError(t, rep.Err())
				assert.Equal(t, 1, rep.Rewrapped)
				d, err := volume.Describe(path)
				require.NoError(t, err)
				assert.Equal(t, latest, d.KeyVersion)
				assertKeyProtectForm(t, tokenCiphertext(t, path))

				readBack(t, f.manager(t, c.create), path, data, 4096)
				readBack(t, f.manager(t, c.open), path, data, 4096)
			})
		}
	})
}

// TestOldTokenFormsOpenBothWays: tokens written by earlier crkvol versions, base64 of the
// binary ciphertext (local mode) or base64 of the Key Protect ciphertext string (--kms-url
// mode), open in both modes, and the next rewrap (by sync, or lazily on open) writes the one
// encoding.
func TestOldTokenFormsOpenBothWays(t *testing.T) {
	forEachStore(t, func(t *testing.T, st serverStore) {
		oldForms := map[string]func(kp string) string{
			"old local form":  func(kp string) string { return kp }, // base64 of the binary ciphertext
			"old remote form": func(kp string) string { return base64.StdEncoding.EncodeToString([]byte(kp)) },
		}
		cases := []struct {
			form, mode string
			lazy       bool // rewrap on open instead of by sync
		}{
			{"old local form", "local", false},
			{"old local form", "remote", false},
			{"old local form", "remote", true},
			{"old remote form", "local", false},
			{"old remote form", "remote", false},
			{"old remote form", "local", true},
			{"old remote form", "remote", true},
		}
		for _, c := range cases {
			name := c.form + " " + c.mode
			if c.lazy {
				name += " lazy"
			}
			t.Run(name, func(t *testing.T) {
				f := newCrossFixture(t, st)
				ctx := t.Context()
				key, err := f.svc.CreateRootKey(ctx, "old forms")
				require.NoError(t, err)
				path := filepath.Join(f.dir, "vol.img")
				data := bytes.Repeat([]byte("old form "), 1000)
				createWithData(t, f, "local", key.ID, path, data, 8192)
				kp := tokenCiphertext(t, path)
				old := oldForms[c.form](kp)
				setTokenCiphertext(t, path, old)

				mgr := volume.NewManager(f.ks(c.mode), f.reg, volume.Options{})
				readBack(t, mgr, path, data, 8192)
				mgr.Close()
				assert.Equal(t, old, tokenCiphertext(t, path), "a read without a rewrap leaves the token as it is")

				latest := rotateThroughServer(t, f, key.ID)
				mgr = f.manager(t, c.mode)
				if c.lazy {
					readBack(t, mgr, path, data, 8192)
				} else {
					rep, err := mgr.Sync(ctx, key.ID)
					require.NoError(t, err)
					require.NoError(t, rep.Err())
					assert.Equal(t, 1, rep.Rewrapped)
				}
				d, err := volume.Describe(path)
				require.NoError(t, err)
				assert.Equal(t, latest, d.KeyVersion)
				assertKeyProtectForm(t, tokenCiphertext(t, path))
				readBack(t, f.manager(t, "local"), path, data, 8192)
				readBack(t, f.manager(t, "remote"), path, data, 8192)
			})
		}
	})
}

// TestRemoteCiphertextEncoding: Remote sends a binary ciphertext as its Key Protect string
// (standard base64) and hands back the binary ciphertext of the answer's string; an answer
// whose ciphertext is not standard base64 that encodes back to itself is refused with
// volume.ErrIncompleteAnswer, as nothing crkvol stores could hold it exactly.
func TestRemoteCiphertextEncoding(t *testing.T) {
	const v = `{"id":"0f9e4a55-1c1e-4f5e-8d1a-6b2f0b9e8a11"}`
	answers := map[string]func(ct string) string{
		"wrap": func(ct string) string { return `{"ciphertext":"` + ct + `","keyVersion":` + v + `}` },
		"unwrap": func(ct string) string {
			return `{"plaintext":"c2VjcmV0","keyVersion":` + v + `,"ciphertext":"` + ct + `","rewrappedKeyVersion":` + v + `}`
		},
		"rewrap": func(ct string) string {
			return `{"ciphertext":"` + ct + `","keyVersion":` + v + `,"rewrappedKeyVersion":` + v + `}`
		},
	}
	cases := []struct {
		name, answer string
		want         []byte // nil: refused
	}{
		{"standard base64", "Y3Q=", []byte("ct")},
		{"binary", "AAEC", []byte{0, 1, 2}},
		{"not base64", "!!", nil},
		{"unpadded", "Y3Q", nil},
		{"line break", `Y3Q=\n`, nil},
		{"url alphabet", "-_8=", nil},
	}
	for call, answer := range answers {
		for _, c := range cases {
			t.Run(call+" "+c.name, func(t *testing.T) {
				var sent struct {
					Ciphertext string `json:"ciphertext"`
				}
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					_ = json.NewDecoder(r.Body).Decode(&sent)
					w.Header().Set("Content-Type", "application/json")
					_, _ = w.Write([]byte(answer(c.answer)))
				}))
				defer srv.Close()
				r, err := kms.NewRemote(kms.RemoteConfig{URL: srv.URL, Instance: "inst", Token: "t"})
				require.NoError(t, err)
				in := []byte{0xff, 0, 'C'} // binary: sent as "/wBD"
				var got []byte
				switch call {
				case "wrap":
					var w volume.Wrapped
					w, err = r.Wrap(t.Context(), "k", []byte("secret"), nil)
					got = w.Ciphertext
				case "unwrap":
					var u volume.Unwrapped
					u, err = r.Unwrap(t.Context(), "k", in, nil)
					if u.Rewrapped != nil {
						got = u.Rewrapped.Ciphertext
					}
					assert.Equal(t, "/wBD", sent.Ciphertext, "the Key Protect string of the binary ciphertext")
				case "rewrap":
					var w volume.Wrapped
					w, err = r.Rewrap(t.Context(), "k", in, nil)
					got = w.Ciphertext
					assert.Equal(t, "/wBD", sent.Ciphertext, "the Key Protect string of the binary ciphertext")
				}
				if c.want == nil {
					require.ErrorIs(t, err, volume.ErrIncompleteAnswer)
					assert.NotErrorIs(t, err, volume.ErrKeyRefused)
					return
				}
				require.NoError(t, err)
				assert.Equal(t, c.want, got)
			})
		}
	}
}
