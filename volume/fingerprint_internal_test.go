package volume

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"crkvol/keyslot"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fingerprintMeta is LUKS2 metadata with keyslots 0 and 1, one digest each, and segment 0.
const fingerprintMeta = `{"keyslots":{"0":{"type":"luks2","area":{"offset":"32768"}},"1":{"type":"luks2","area":{"offset":"290816"}}},` +
	`"tokens":{"0":{"type":"crkvol-crk","ciphertext":"AAAA"}},` +
	`"segments":{"0":{"type":"crypt","offset":"16777216"}},` +
	`"digests":{"0":{"type":"pbkdf2","keyslots":["0"],"segments":["0"],"digest":"x"},"1":{"type":"pbkdf2","keyslots":["1"],"segments":["0"],"digest":"y"}},` +
	`"config":{"json_size":"12288"}}`

// The reference rule: how fingerprints were made before keyslot.Image.KeyslotText, by reading
// the header copy again and decoding its JSON with encoding/json. Fingerprints users' registries
// hold were made so; TestKeyslotStateMatchesReference shows readKeyslotState gives the same.

// luks2Metadata is what a fingerprint takes of a LUKS2 header's JSON: the objects as they are
// stored, undecoded.
type luks2Metadata struct {
	Keyslots map[string]json.RawMessage `json:"keyslots"`
	Digests  map[string]json.RawMessage `json:"digests"`
	Segments map[string]json.RawMessage `json:"segments"`
}

// luks2Binding is what a digest object says it covers.
type luks2Binding struct {
	Keyslots []string `json:"keyslots"`
	Segments []string `json:"segments"`
}

// refKeyslotState is the former readKeyslotState: the metadata from the header copy img was
// read from, read again (refused when its sequence number changed), the keyslot area in 64
// KiB chunks.
func refKeyslotState(dev io.ReaderAt, img *keyslot.Image, slot int) (keyslotState, error) {
	var st keyslotState
	area, err := luks2Keyslot(img, slot)
	if err != nil {
		return st, err
	}
	health := img.Health()
	var off uint64
	var magic []byte
	switch {
	case health.Primary.Err == nil:
		off, magic = health.Primary.Offset, []byte("LUKS\xba\xbe")
	case health.Secondary.Err == nil:
		off, magic = health.Secondary.Offset, []byte("SKUL\xba\xbe")
	default:
		return st, errStateChanged
	}
	size := img.MetadataSize()
	hdr := make([]byte, size)
	if _, err := dev.ReadAt(hdr, int64(off)); err != nil {
		return st, err
	}
	if !bytes.Equal(hdr[:len(magic)], magic) || binary.BigEndian.Uint64(hdr[8:]) != size || binary.BigEndian.Uint64(hdr[16:]) != img.SeqID() {
		return st, errStateChanged
	}
	text := hdr[4096:]
	if i := bytes.IndexByte(text, 0); i >= 0 {
		text = text[:i]
	}
	h := sha256.New()
	h.Write([]byte(fingerprintVersion))
	if err := hashKeyslotMetadata(h, text, slot); err != nil {
		return st, err
	}
	var crc uint32
	buf := make([]byte, 64<<10)
	for done := uint64(0); done < area.AreaSize; {
		n := min(uint64(len(buf)), area.AreaSize-done)
		if _, err := dev.ReadAt(buf[:n], int64(area.AreaOffset+done)); err != nil {
			return st, err
		}
		crc = crc32.Update(crc, castagnoli, buf[:n])
		done += n
	}
	var tail [24]byte
	binary.BigEndian.PutUint64(tail[0:], area.AreaOffset)
	binary.BigEndian.PutUint64(tail[8:], area.AreaSize)
	binary.BigEndian.PutUint32(tail[16:], crc)
	h.Write(tail[:])
	h.Sum(st[:0])
	return st, nil
}

// writeLenPrefixed writes p to w after its length, as lenPrefixed appends it.
func writeLenPrefixed(w io.Writer, p []byte) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(p)))
	w.Write(n[:])
	w.Write(p)
}

// hashKeyslotMetadata is the reference of hashKeyslotText, on the whole JSON text.
func hashKeyslotMetadata(h io.Writer, text []byte, slot int) error {
	var meta luks2Metadata
	if err := json.Unmarshal(text, &meta); err != nil {
		return fmt.Errorf("%w: %w", errStateChanged, err)
	}
	id := strconv.Itoa(slot)
	ksObj, ok1 := meta.Keyslots[id]
	segObj, ok2 := meta.Segments["0"]
	if !ok1 || !ok2 {
		return errStateChanged
	}
	writeLenPrefixed(h, ksObj)
	writeLenPrefixed(h, segObj)
	digests := make([]string, 0, len(meta.Digests))
	for d := range meta.Digests {
		digests = append(digests, d)
	}
	slices.Sort(digests)
	bound := 0
	for _, d := range digests {
		var b luks2Binding
		if err := json.Unmarshal(meta.Digests[d], &b); err != nil {
			return fmt.Errorf("%w: %w", errStateChanged, err)
		}
		if slices.Contains(b.Keyslots, id) {
			writeLenPrefixed(h, []byte(d))
			writeLenPrefixed(h, meta.Digests[d])
			bound++
		}
	}
	if bound == 0 {
		return errStateChanged
	}
	return nil
}

// TestKeyslotStateMatchesReference: on real images (keys of 64 and 32 bytes, so one read and
// a partial buffer; a second keyslot; a digest shared; after token updates, which rewrite the
// JSON; a damaged keyslot area) readKeyslotState gives the reference's state, so fingerprints
// recorded before still match; and a changed keyslot area changes it.
func TestKeyslotStateMatchesReference(t *testing.T) {
	m := &Manager{fpBufs: fingerprintBufs{free: make(chan *[]byte, 1)}}
	kdf := keyslot.KDF{Type: keyslot.KDFPBKDF2, Hash: "sha256", Iterations: 1000}
	for _, keySize := range []int{64, 32} {
		t.Run(strconv.Itoa(keySize), func(t *testing.T) {
			f, err := os.Create(filepath.Join(t.TempDir(), "img"))
			require.NoError(t, err)
			defer f.Close()
			const size = 4 << 20
			require.NoError(t, f.Truncate(size))
			img, vk, err := keyslot.Format(f, size, []byte("one"), keyslot.FormatOptions{KeySize: keySize, KDF: kdf, KeyslotsSize: 2 << 20})
			require.NoError(t, err)
			same := func(what string, slot int) keyslotState {
				t.Helper()
				want, err := refKeyslotState(f, img, slot)
				require.NoError(t, err, what)
				got, err := m.readKeyslotState(f, img, slot)
				require.NoError(t, err, what)
				require.Equal(t, want, got, what)
				return got
			}
			s0 := same("formatted", 0)
			slot, err := img.AddKeyslot(vk, []byte("two"), keyslot.SlotOptions{ID: keyslot.AnyKeyslot, KDF: kdf})
			require.NoError(t, err)
			s1 := same("second keyslot", slot)
			assert.NotEqual(t, s0, s1)
			// The digest is shared: its "keyslots" now lists both, so keyslot 0's state changed.
			shared := same("first keyslot, beside the second", 0)
			assert.NotEqual(t, s0, shared)
			s0 = shared
			_, err = img.AddToken(keyslot.AnyToken, []byte(`{"type":"x-test","keyslots":["0"],"note":"a \u00e9 \"quoted\" one"}`))
			require.NoError(t, err)
			assert.Equal(t, s0, same("after a token commit", 0))
			for i := range 3 {
				require.NoError(t, img.UpdateToken(0, func(json.RawMessage) ([]byte, error) {
					return []byte(fmt.Sprintf(`{"type":"x-test","keyslots":["0"],"n":%d}`, i)), nil
				}))
				assert.Equal(t, s0, same("after token updates", 0))
			}
			var area keyslot.SlotInfo
			for _, ks := range img.Keyslots() {
				if ks.ID == 0 {
					area = ks
				}
			}
			_, err = f.WriteAt([]byte{0xff, 0x00, 0xff}, int64(area.AreaOffset+area.AreaSize-3))
			require.NoError(t, err)
			assert.NotEqual(t, s0, same("damaged keyslot area", 0))
			_, err = m.readKeyslotState(f, img, 5)
			assert.ErrorIs(t, err, ErrBadToken, "no keyslot 5")
		})
	}
}

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

// TestFingerprintGolden pins fingerprint's value for one state and token: registries hold
// fingerprints, so how they are computed must never change without fingerprintVersion.
func TestFingerprintGolden(t *testing.T) {
	var st keyslotState
	for i := range st {
		st[i] = byte(i * 3)
	}
	ct := "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3ODkrLw=="
	got := st.fingerprint("8a1f0c2e-3b4d-4e5f-9a6b-7c8d9e0f1a2b", "0b9e3c7a-52f1-4d0e-9a55-6f1f2f8a1c3e", ct)
	assert.Equal(t, "824b6e1a3974c4d0f577361ab2b16d22e5b7656533f952a7c1bd047a0362eced", got)
	assert.NotEqual(t, got, st.fingerprint("8a1f0c2e-3b4d-4e5f-9a6b-7c8d9e0f1a2", "b0b9e3c7a-52f1-4d0e-9a55-6f1f2f8a1c3e", ct), "the parts are length-prefixed")
}

// TestFingerprintAllocs: a fingerprint allocates its hex string only.
func TestFingerprintAllocs(t *testing.T) {
	if raceDetector {
		t.Skip("allocation counts mean nothing under the race detector")
	}
	var st keyslotState
	ct := strings.Repeat("QUJD", 40)
	if n := testing.AllocsPerRun(20, func() {
		st.fingerprint("8a1f0c2e-3b4d-4e5f-9a6b-7c8d9e0f1a2b", "0b9e3c7a-52f1-4d0e-9a55-6f1f2f8a1c3e", ct)
	}); n > 1 {
		t.Errorf("%v allocations, want 1", n)
	}
}
