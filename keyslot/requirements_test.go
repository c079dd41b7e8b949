package keyslot

import (
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
