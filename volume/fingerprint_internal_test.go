package volume

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fingerprintMeta is LUKS2 metadata with keyslots 0 and 1, one digest each, and segment 0.
const fingerprintMeta = `{"keyslots":{"0":{"type":"luks2","area":{"offset":"32768"}},"1":{"type":"luks2","area":{"offset":"290816"}}},` +
	`"tokens":{"0":{"type":"crkvol-crk","ciphertext":"AAAA"}},` +
	`"segments":{"0":{"type":"crypt","offset":"16777216"}},` +
	`"digests":{"0":{"type":"pbkdf2","keyslots":["0"],"segments":["0"],"digest":"x"},"1":{"type":"pbkdf2","keyslots":["1"],"segments":["0"],"digest":"y"}},` +
	`"config":{"json_size":"12288"}}`

// metaHash returns hashKeyslotMetadata's hash of text for slot, or its error.
func metaHash(text string, slot int) ([]byte, error) {
	h := sha256.New()
	if err := hashKeyslotMetadata(h, []byte(text), slot); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// TestHashKeyslotMetadata: the hash covers the keyslot's object, its digest's and the data
// segment's, and nothing else: a change to any of them changes it, a change to a token, the
// config or another keyslot does not; metadata lacking one of them has no hash.
func TestHashKeyslotMetadata(t *testing.T) {
	base, err := metaHash(fingerprintMeta, 0)
	require.NoError(t, err)
	other, err := metaHash(fingerprintMeta, 1)
	require.NoError(t, err)
	assert.NotEqual(t, base, other)
	cases := []struct {
		name, from, to string
		same           bool
	}{
		{"keyslot", `"offset":"32768"`, `"offset":"32769"`, false},
		{"digest", `"digest":"x"`, `"digest":"z"`, false},
		{"segment", `"offset":"16777216"`, `"offset":"16777217"`, false},
		{"digest unbound", `"keyslots":["0"],"segments":["0"],"digest":"x"`, `"keyslots":[],"segments":["0"],"digest":"x"`, false},
		{"token", `"ciphertext":"AAAA"`, `"ciphertext":"BBBB"`, true},
		{"config", `"json_size":"12288"`, `"json_size":"16384"`, true},
		{"other keyslot", `"offset":"290816"`, `"offset":"290817"`, true},
		{"other digest", `"digest":"y"`, `"digest":"w"`, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			text := bytes.Replace([]byte(fingerprintMeta), []byte(c.from), []byte(c.to), 1)
			require.NotEqual(t, fingerprintMeta, string(text))
			got, err := metaHash(string(text), 0)
			if c.name == "digest unbound" {
				assert.ErrorIs(t, err, errStateChanged, "no digest bound to the keyslot")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, c.same, bytes.Equal(base, got))
		})
	}
	for _, bad := range []string{"", "{", `{"keyslots":{}}`, `{"keyslots":{"0":{}},"segments":{}}`, `[1]`, `{"keyslots":{"0":{}},"segments":{"0":{}},"digests":{"0":{"keyslots":"0"}}}`} {
		_, err := metaHash(bad, 0)
		assert.True(t, errors.Is(err, errStateChanged), "%q: %v", bad, err)
	}
}

// FuzzHashKeyslotMetadata: any text either hashes, the same way every time, or fails with
// errStateChanged; nothing panics.
func FuzzHashKeyslotMetadata(f *testing.F) {
	f.Add([]byte(fingerprintMeta), 0)
	f.Add([]byte(fingerprintMeta), 1)
	f.Add([]byte(`{"keyslots":{"0":1},"segments":{"0":2},"digests":{"a":{"keyslots":["0"]}}}`), 0)
	f.Fuzz(func(t *testing.T, text []byte, slot int) {
		a, err := metaHash(string(text), slot)
		if err != nil {
			if !errors.Is(err, errStateChanged) {
				t.Fatalf("error %v does not match errStateChanged", err)
			}
			return
		}
		b, err := metaHash(string(text), slot)
		if err != nil || !bytes.Equal(a, b) {
			t.Fatalf("not deterministic: %x %x %v", a, b, err)
		}
	})
}
