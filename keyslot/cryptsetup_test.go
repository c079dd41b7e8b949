package keyslot

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	luks "github.com/anatol/luks.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
)

// testImage is one entry of testdata/luks2/images.json.
type testImage struct {
	Image       string            `json:"image"`
	VolumeKey   string            `json:"volume_key"`
	KeySize     int               `json:"key_size"`
	SectorSize  int               `json:"sector_size"`
	KDF         string            `json:"kdf"`
	Passphrases map[string]string `json:"passphrases"`
	Tokens      []json.RawMessage `json:"tokens"`
}

const imagesDir = "../testdata/luks2"

func loadTestImages(t *testing.T) []testImage {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(imagesDir, "images.json"))
	require.NoError(t, err)
	var imgs []testImage
	require.NoError(t, json.Unmarshal(raw, &imgs))
	require.Len(t, imgs, 4)
	return imgs
}

// TestCryptsetupImages unlocks every image cryptsetup made and checks the volume key, the
// layout and the tokens.
func TestCryptsetupImages(t *testing.T) {
	t.Parallel()
	kdfs := map[string]bool{}
	for _, ti := range loadTestImages(t) {
		t.Run(ti.Image, func(t *testing.T) {
			f, err := os.Open(filepath.Join(imagesDir, ti.Image))
			require.NoError(t, err)
			defer f.Close()
			img, err := Open(f, nil)
			require.NoError(t, err)
			assert.True(t, img.Health().OK(), "%+v", img.Health())

			want, err := hex.DecodeString(ti.VolumeKey)
			require.NoError(t, err)
			seg := img.Segment()
			assert.Equal(t, ti.SectorSize, seg.SectorSize)
			assert.Equal(t, "aes-xts-plain64", seg.Encryption)
			assert.Equal(t, uint64(1<<20), seg.Offset)
			assert.True(t, seg.Dynamic)
			assert.Equal(t, ti.KeySize, img.VolumeKeySize())
			kdfs[ti.KDF] = true

			for slotStr, pass := range ti.Passphrases {
				var slot int
				fmt.Sscan(slotStr, &slot)
				key, got, err := img.Unlock([]byte(pass), slot)
				require.NoError(t, err, "slot %d", slot)
				assert.Equal(t, slot, got)
				assert.Equal(t, want, key, "slot %d", slot)
				key, _, err = img.Unlock([]byte(pass), AnyKeyslot)
				require.NoError(t, err)
				assert.Equal(t, want, key)
				require.NoError(t, img.VerifyVolumeKey(key))
			}
			_, _, err = img.Unlock([]byte("not the passphrase"), AnyKeyslot)
			assert.ErrorIs(t, err, ErrWrongPassphrase)

			tokens := img.Tokens()
			require.Len(t, tokens, len(ti.Tokens))
			for i, wantTok := range ti.Tokens {
				got, err := img.Token(tokens[i].ID)
				require.NoError(t, err)
				assert.JSONEq(t, string(wantTok), string(got))
			}
		})
	}
	assert.Equal(t, map[string]bool{"pbkdf2": true, "argon2id": true, "argon2i": true}, kdfs)
}

// TestCryptsetupPriority: the two-slot image prefers keyslot 1.
func TestCryptsetupPriority(t *testing.T) {
	t.Parallel()
	f, err := os.Open(filepath.Join(imagesDir, "argon2i-aes128-two-slots.img"))
	require.NoError(t, err)
	defer f.Close()
	img, err := Open(f, nil)
	require.NoError(t, err)
	slots := img.Keyslots()
	require.Len(t, slots, 2)
	assert.Equal(t, PriorityNormal, slots[0].Priority)
	assert.Equal(t, PriorityPrefer, slots[1].Priority)
	assert.Equal(t, KDFArgon2i, slots[0].KDF.Type)
	assert.Equal(t, 64, slots[0].KDF.Memory)
	assert.Equal(t, 2, slots[0].KDF.Threads)
	assert.Equal(t, KDFPBKDF2, slots[1].KDF.Type)
	_, slot, err := img.Unlock([]byte("second slot"), AnyKeyslot)
	require.NoError(t, err)
	assert.Equal(t, 1, slot)
}

type formatCase struct {
	name string
	opts FormatOptions
}

func formatCases() []formatCase {
	return []formatCase{
		{"pbkdf2-sha256-4096", FormatOptions{KDF: PBKDF2("sha256", 1000), KeyslotsSize: 256 << 10}},
		{"pbkdf2-sha512-512", FormatOptions{KDF: PBKDF2("sha512", 2000), SectorSize: 512, KeyslotsSize: 256 << 10, Label: "crkvol", Subsystem: "test"}},
		{"argon2id-aes128", FormatOptions{KDF: Argon2id(4, 64, 1), KeySize: 32, KeyslotsSize: 256 << 10}},
		{"argon2i-1024", FormatOptions{KDF: KDF{Type: KDFArgon2i, Time: 4, Memory: 32, Threads: 2}, SectorSize: 1024, KeyslotsSize: 512 << 10}},
		{"metadata-64k", FormatOptions{KDF: PBKDF2("sha256", 1000), MetadataSize: 64 << 10, KeyslotsSize: 256 << 10}},
	}
}

// TestFormatOpensInCryptsetup formats images and has cryptsetup dump, test and reveal them.
func TestFormatOpensInCryptsetup(t *testing.T) {
	t.Parallel()
	cs := tooltest.Require(t, "cryptsetup")["cryptsetup"]
	for _, tc := range formatCases() {
		t.Run(tc.name, func(t *testing.T) {
			const pass = "format passphrase"
			path, img, vk := newFileImage(t, pass, tc.opts)
			passFile := filepath.Join(t.TempDir(), "pass")
			require.NoError(t, os.WriteFile(passFile, []byte(pass), 0o600))

			dump := string(run(t, cs, "luksDump", path))
			assert.Contains(t, dump, "Version:       \t2")
			assert.Contains(t, dump, img.UUID())
			assert.Contains(t, dump, "aes-xts-plain64")
			if tc.opts.Label != "" {
				assert.Contains(t, dump, "Label:         \t"+tc.opts.Label)
			}

			run(t, cs, "open", "--test-passphrase", "--key-file", passFile, path)

			out := string(run(t, cs, "luksDump", "--dump-volume-key", "--batch-mode", "--key-file", passFile, path))
			assert.Equal(t, hex.EncodeToString(vk), dumpedKey(t, out))

			// A wrong passphrase is refused by cryptsetup too.
			bad := filepath.Join(t.TempDir(), "bad")
			require.NoError(t, os.WriteFile(bad, []byte("wrong"), 0o600))
			assert.Error(t, tryRun(cs, "open", "--test-passphrase", "--key-file", bad, path))
		})
	}
}

// dumpedKey extracts the hex volume key from luksDump --dump-volume-key output.
func dumpedKey(t *testing.T, out string) string {
	t.Helper()
	i := strings.Index(out, "MK dump:")
	require.GreaterOrEqual(t, i, 0, "no MK dump in %q", out)
	hexRE := regexp.MustCompile(`\b[0-9a-f]{2}\b`)
	return strings.Join(hexRE.FindAllString(out[i+len("MK dump:"):], -1), "")
}

// TestAddedKeyslotOpensInCryptsetup adds an argon2id keyslot, removes slot 0, and checks
// cryptsetup agrees.
func TestAddedKeyslotOpensInCryptsetup(t *testing.T) {
	t.Parallel()
	cs := tooltest.Require(t, "cryptsetup")["cryptsetup"]
	path, img, vk := newFileImage(t, "first", smallFormat())
	slot, err := img.AddKeyslot(vk, []byte("second"), SlotOptions{ID: AnyKeyslot, KDF: Argon2id(4, 32, 1), Priority: PriorityPrefer})
	require.NoError(t, err)
	require.Equal(t, 1, slot)
	require.NoError(t, img.RemoveKeyslot(0))

	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "first"), []byte("first"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "second"), []byte("second"), 0o600))
	run(t, cs, "open", "--test-passphrase", "--key-slot", "1", "--key-file", filepath.Join(dir, "second"), path)
	assert.Error(t, tryRun(cs, "open", "--test-passphrase", "--key-file", filepath.Join(dir, "first"), path))
	dump := string(run(t, cs, "luksDump", path))
	assert.Contains(t, dump, "Priority:   preferred")
	assert.NotContains(t, dump, "  0: luks2")
}

// TestTokenRoundTripCryptsetup: a token written here comes back unchanged from cryptsetup
// token export, and one imported by cryptsetup is read back here.
func TestTokenRoundTripCryptsetup(t *testing.T) {
	t.Parallel()
	cs := tooltest.Require(t, "cryptsetup")["cryptsetup"]
	path, img, _ := newFileImage(t, "tokens", smallFormat())
	ours := `{"type":"crkvol-crk","keyslots":["0"],"key_id":"0f3c1e7a-2b4d-4e6f-8a9b-1c2d3e4f5a6b","crn":"crn:v1:bluemix:public:kms:us-south:a/acct:inst:key:0f3c1e7a","key_version":"v2","ciphertext":"q83vEjRWeJA=","wrapped_at":"2026-11-27T19:00:00Z","n":42,"nested":{"a":[1,2,{"b":null}],"s":"x/y é"}}`
	id, err := img.AddToken(AnyToken, []byte(ours))
	require.NoError(t, err)
	require.Equal(t, 0, id)

	exported := run(t, cs, "token", "export", "--token-id", "0", path)
	assert.JSONEq(t, ours, string(exported))
	assert.Equal(t, ours, strings.TrimSpace(string(exported)), "byte-identical export")

	theirs := `{"type":"cryptsetup-made","keyslots":[],"data":{"k":"v"},"list":["a","b"]}`
	jsonFile := filepath.Join(t.TempDir(), "tok.json")
	require.NoError(t, os.WriteFile(jsonFile, []byte(theirs), 0o600))
	run(t, cs, "token", "import", "--token-id", "5", "--json-file", jsonFile, path)

	require.NoError(t, img.Reload())
	got, err := img.Token(5)
	require.NoError(t, err)
	assert.JSONEq(t, theirs, string(got))
	got, err = img.Token(0)
	require.NoError(t, err)
	assert.Equal(t, ours, string(got), "our token survives cryptsetup's rewrite byte for byte")

	// Escapes, slashes and large integers are stored in the form json-c writes them, so the
	// export is byte-identical to what we store; numbers json-c would rewrite are refused.
	odd := `{"type":"escapes","keyslots":[],"e":"\u00e9\/\t\u0001","big":18446744073709551615,"neg":-9223372036854775808}`
	oddID, err := img.AddToken(AnyToken, []byte(odd))
	require.NoError(t, err)
	stored, err := img.Token(oddID)
	require.NoError(t, err)
	assert.JSONEq(t, odd, string(stored))
	exported = run(t, cs, "token", "export", "--token-id", fmt.Sprint(oddID), path)
	assert.Equal(t, string(stored), strings.TrimSpace(string(exported)))
	for _, bad := range []string{`{"type":"f","keyslots":[],"x":1.5}`, `{"type":"f","keyslots":[],"x":1e3}`, `{"type":"f","keyslots":[],"x":18446744073709551616}`} {
		_, err := img.AddToken(AnyToken, []byte(bad))
		assert.ErrorIs(t, err, ErrInvalidMetadata, bad)
	}

	// Replace ours; cryptsetup sees the new one.
	replaced := strings.Replace(ours, `"v2"`, `"v3"`, 1)
	require.NoError(t, img.ReplaceToken(0, []byte(replaced)))
	exported = run(t, cs, "token", "export", "--token-id", "0", path)
	assert.JSONEq(t, replaced, string(exported))
	require.NoError(t, img.RemoveToken(5))
	assert.Error(t, tryRun(cs, "token", "export", "--token-id", "5", path))
}

// TestLuksGoOracle: an independent pure-Go LUKS implementation unseals our images and lists
// our tokens.
func TestLuksGoOracle(t *testing.T) {
	t.Parallel()
	for _, tc := range formatCases() {
		t.Run(tc.name, func(t *testing.T) {
			path, img, _ := newFileImage(t, "oracle", tc.opts)
			payload := `{"type":"crkvol-crk","keyslots":["0"],"ciphertext":"AAECAw==","key_version":"1"}`
			_, err := img.AddToken(AnyToken, []byte(payload))
			require.NoError(t, err)

			dev, err := luks.Open(path)
			require.NoError(t, err)
			defer dev.Close()
			assert.Equal(t, img.UUID(), dev.UUID())
			vol, err := dev.UnsealVolume(0, []byte("oracle"))
			require.NoError(t, err)
			assert.Equal(t, uint64(img.Segment().SectorSize), vol.StorageSectorSize)
			_, err = dev.UnsealVolume(0, []byte("wrong"))
			assert.Error(t, err)

			toks, err := dev.Tokens()
			require.NoError(t, err)
			require.Len(t, toks, 1)
			assert.Equal(t, "crkvol-crk", toks[0].Type)
			assert.Equal(t, []int{0}, toks[0].Slots)
			assert.JSONEq(t, payload, string(toks[0].Payload))
		})
	}
}
