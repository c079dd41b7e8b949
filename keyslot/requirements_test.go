package keyslot

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
)

// TestUnknownRequirementsKillSlot: with an unmet mandatory requirement cryptsetup still
// destroys a keyslot (crypt_keyslot_destroy is CRYPT_CD_UNRESTRICTED; luksKillSlot works), so
// RemoveKeyslot does too, keeping the requirement; other changes stay refused.
func TestUnknownRequirementsKillSlot(t *testing.T) {
	t.Parallel()
	dev, img, vk := newMemImage(t, "pass")
	_, err := img.AddKeyslot(vk, []byte("two"), SlotOptions{ID: 1, KDF: testKDF})
	require.NoError(t, err)
	text := string(img.snapshot().meta.marshal())
	writeRawMetadata(t, dev, strings.Replace(text, `"keyslots_size":"786432"}`, `"keyslots_size":"786432","requirements":{"mandatory":["future-feature"]}}`, 1))
	original := dev.clone()
	require.NoError(t, img.Reload())
	seq := img.SeqID()

	require.NoError(t, img.RemoveKeyslot(1))
	require.NoError(t, img.Reload())
	assert.Equal(t, seq+1, img.SeqID())
	assert.Len(t, img.Keyslots(), 1)
	assert.Equal(t, []string{"future-feature"}, img.Requirements(), "the requirement is kept")
	_, _, err = img.Unlock([]byte("two"), AnyKeyslot)
	assert.ErrorIs(t, err, ErrWrongPassphrase)
	_, _, err = img.Unlock([]byte("pass"), AnyKeyslot)
	require.NoError(t, err)
	assert.ErrorIs(t, img.RemoveKeyslot(0), ErrLastKeyslot)
	_, err = img.AddToken(AnyToken, []byte(`{"type":"t","keyslots":[]}`))
	assert.ErrorIs(t, err, ErrUnmetRequirement)

	if cs := tooltest.Available(t, "cryptsetup")["cryptsetup"]; cs != "" {
		path := filepath.Join(t.TempDir(), "req.img")
		require.NoError(t, os.WriteFile(path, original.buf, 0o600))
		out, err := exec.Command(cs, "luksKillSlot", "-q", path, "1").CombinedOutput()
		require.NoError(t, err, "cryptsetup kills the keyslot too: %s", out)
		out, err = exec.Command(cs, "config", "--label", "x", path).CombinedOutput()
		require.Error(t, err, "and refuses other changes")
		assert.Contains(t, string(out), "Unmet LUKS2 requirements")
	}
}

// TestRequirementsImageLikeCryptsetup mirrors cryptsetup 2.6.1's requirements image
// (tests/luks2_header_requirements, used by api-test-2.c Luks2Requirements): mandatory
// requirements "req0" and "req1", tokens of a user type, luks2-keyring and luks2-reserved
// types at ids 0, 1 and 6. Built here from the validation reference (that image's layout) with
// the same metadata, it must read, list, unlock and verify, refuse every change cryptsetup
// refuses with "Unmet LUKS2 requirements detected" and allow the keyslot removal it allows; with
// cryptsetup installed each operation is also run by cryptsetup on the same image.
func TestRequirementsImageLikeCryptsetup(t *testing.T) {
	t.Parallel()
	ref := makeRefHeader(t)
	c := newGenCase(t, ref)
	c.edit(func(m map[string]any) {
		m["tokens"] = map[string]any{
			"0": map[string]any{"type": "user_type", "keyslots": []any{}},
			"1": map[string]any{"type": "luks2-keyring", "key_description": "cs_token_test:test_key0", "keyslots": []any{"0"}},
			"6": map[string]any{"type": "luks2-reserved", "keyslots": []any{"0"}},
		}
		c.obj(m, "config")["requirements"] = map[string]any{"mandatory": []any{"req0", "req1"}}
	})
	c.setBoth()
	c.mangleBoth()
	image := c.img

	img, err := Open(&memDevice{buf: bytes.Clone(image)}, nil)
	require.NoError(t, err)
	assert.Equal(t, []string{"req0", "req1"}, img.Requirements())
	var tokenIDs []int
	for _, tok := range img.Tokens() {
		tokenIDs = append(tokenIDs, tok.ID)
	}
	assert.Equal(t, []int{0, 1, 6}, tokenIDs)
	tok, err := img.Token(0)
	require.NoError(t, err)
	assert.Contains(t, string(tok), "user_type")
	assert.Len(t, img.Keyslots(), 8)
	vk, _, err := img.Unlock([]byte(refPassphrase), AnyKeyslot)
	require.NoError(t, err)
	assert.Equal(t, ref.volumeKey, vk)
	require.NoError(t, img.VerifyVolumeKey(vk))

	tokenJSON := `{"type":"t","keyslots":[]}`
	tests := []struct {
		name string
		op   func(img *Image) error
		// wantErr is nil for operations crkvol allows.
		wantErr error
		// cryptsetup runs the same operation; {path} and {pass} are replaced.
		cryptsetup []string
		csAllowed  bool
		// differs gives the reason where crkvol deliberately differs from cryptsetup.
		differs string
	}{
		{"add keyslot", func(img *Image) error {
			_, err := img.AddKeyslot(vk, []byte("new"), SlotOptions{ID: AnyKeyslot, KDF: testKDF})
			return err
		}, ErrUnmetRequirement, []string{"luksAddKey", "-q", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", "{pass}", "{path}", "{pass}"}, false, ""},
		{"add token", func(img *Image) error {
			_, err := img.AddToken(AnyToken, []byte(tokenJSON))
			return err
		}, ErrUnmetRequirement, []string{"token", "import", "--json-file", "{token}", "{path}"}, false, ""},
		{"replace token", func(img *Image) error { return img.ReplaceToken(0, []byte(tokenJSON)) },
			ErrUnmetRequirement, []string{"token", "import", "--token-id", "0", "--token-replace", "--json-file", "{token}", "{path}"}, false, ""},
		{"update token", func(img *Image) error {
			return img.UpdateToken(1, func(json.RawMessage) ([]byte, error) { return []byte(tokenJSON), nil })
		}, ErrUnmetRequirement, nil, false, ""},
		{"remove token", func(img *Image) error { return img.RemoveToken(0) },
			ErrUnmetRequirement, []string{"token", "remove", "--token-id", "0", "{path}"}, false, ""},
		{"remove keyslot", func(img *Image) error { return img.RemoveKeyslot(1) },
			nil, []string{"luksKillSlot", "-q", "{path}", "1"}, true, ""},
		{"erase", func(img *Image) error { return img.Erase() },
			ErrUnmetRequirement, []string{"luksErase", "-q", "{path}"}, true,
			"Erase would also remove keyslots of types crkvol does not know, which may hold the unknown feature's state (see Image.Erase)"},
		{"unlock", func(img *Image) error {
			_, _, err := img.Unlock([]byte(refPassphrase), AnyKeyslot)
			return err
		}, nil, []string{"luksDump", "--dump-volume-key", "--batch-mode", "--key-file", "{pass}", "{path}"}, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev := &memDevice{buf: bytes.Clone(image)}
			img, err := Open(dev, nil)
			require.NoError(t, err)
			err = tt.op(img)
			if tt.wantErr == nil {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, tt.wantErr)
				assert.Contains(t, err.Error(), `["req0" "req1"]`)
				assert.Equal(t, image[:2*refMetadataSize], dev.buf[:2*refMetadataSize], "a refused change writes nothing")
			}
		})
	}

	t.Run("repair", func(t *testing.T) {
		// cryptsetup's crypt_repair is unrestricted: a damaged copy is rewritten.
		buf := bytes.Clone(image)
		copy(buf[refMetadataSize:], "VACUUM")
		img, err := Open(&memDevice{buf: buf}, nil)
		require.NoError(t, err)
		require.Error(t, img.Health().Secondary.Err)
		require.NoError(t, img.Repair())
		img, err = Open(&memDevice{buf: buf}, nil)
		require.NoError(t, err)
		assert.True(t, img.Health().OK())
		assert.Equal(t, []string{"req0", "req1"}, img.Requirements())
	})

	t.Run("cryptsetup", func(t *testing.T) {
		cs := tooltest.Require(t, "cryptsetup")["cryptsetup"]
		dir := t.TempDir()
		pass := filepath.Join(dir, "pass")
		require.NoError(t, os.WriteFile(pass, []byte(refPassphrase), 0o600))
		token := filepath.Join(dir, "token.json")
		require.NoError(t, os.WriteFile(token, []byte(tokenJSON), 0o600))
		sp := toSparse(image)
		path := filepath.Join(dir, "req.img")
		writeSparse(t, path, &sp)
		out, err := exec.Command(cs, "luksDump", path).CombinedOutput()
		require.NoError(t, err, "%s", out)
		assert.Regexp(t, `Requirements:\s+req0 req1`, string(out))
		for _, tt := range tests {
			if tt.cryptsetup == nil {
				continue
			}
			t.Run(tt.name, func(t *testing.T) {
				writeSparse(t, path, &sp)
				args := make([]string, len(tt.cryptsetup))
				for i, a := range tt.cryptsetup {
					args[i] = strings.NewReplacer("{path}", path, "{pass}", pass, "{token}", token).Replace(a)
				}
				out, err := exec.Command(cs, args...).CombinedOutput()
				if tt.csAllowed {
					require.NoError(t, err, "cryptsetup %s: %s", tt.cryptsetup[0], out)
				} else {
					require.Error(t, err, "cryptsetup %s", tt.cryptsetup[0])
					assert.Contains(t, string(out), "Unmet LUKS2 requirements detected")
				}
				if crkvolAllows := tt.wantErr == nil; crkvolAllows != tt.csAllowed {
					require.NotEmpty(t, tt.differs, "crkvol and cryptsetup differ without a stated reason")
					t.Logf("%s: cryptsetup allows=%v, crkvol allows=%v: %s", tt.name, tt.csAllowed, crkvolAllows, tt.differs)
				}
			})
		}
	})
}
