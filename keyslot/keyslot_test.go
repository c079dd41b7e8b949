package keyslot

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestKeyslotLifecycle(t *testing.T) {
	t.Parallel()
	dev, img, vk := newMemImage(t, "zero")

	// Wrong volume key, taken id, bad KDF.
	_, err := img.AddKeyslot(bytes.Repeat([]byte{1}, 64), []byte("x"), SlotOptions{ID: AnyKeyslot, KDF: testKDF})
	assert.ErrorIs(t, err, ErrWrongVolumeKey)
	_, err = img.AddKeyslot(vk, []byte("x"), SlotOptions{ID: 0, KDF: testKDF})
	assert.ErrorIs(t, err, ErrKeyslotInUse)
	_, err = img.AddKeyslot(vk, []byte("x"), SlotOptions{ID: 40, KDF: testKDF})
	assert.ErrorIs(t, err, ErrKeyslotNotFound)
	_, err = img.AddKeyslot(vk, []byte("x"), SlotOptions{ID: AnyKeyslot})
	assert.ErrorIs(t, err, ErrUnsupported)
	_, err = img.AddKeyslot(vk, []byte("x"), SlotOptions{ID: AnyKeyslot, KDF: testKDF, Priority: "urgent"})
	assert.ErrorContains(t, err, "priority")

	// Slot 1 ignored unless named; slot 2 preferred.
	one, err := img.AddKeyslot(vk, []byte("one"), SlotOptions{ID: AnyKeyslot, KDF: testKDF, Priority: PriorityIgnore})
	require.NoError(t, err)
	require.Equal(t, 1, one)
	two, err := img.AddKeyslot(vk, []byte("two"), SlotOptions{ID: AnyKeyslot, KDF: Argon2id(4, 32, 1), Priority: PriorityPrefer})
	require.NoError(t, err)
	require.Equal(t, 2, two)
	_, err = img.AddKeyslot(vk, []byte("three"), SlotOptions{ID: AnyKeyslot, KDF: testKDF})
	assert.ErrorIs(t, err, ErrNoSpace, "three 512-bit keyslots fill 768 KiB")

	_, _, err = img.Unlock([]byte("one"), AnyKeyslot)
	assert.ErrorIs(t, err, ErrWrongPassphrase, "an ignored keyslot is not tried")
	key, slot, err := img.Unlock([]byte("one"), 1)
	require.NoError(t, err)
	assert.Equal(t, vk, key)
	assert.Equal(t, 1, slot)
	key, slot, err = img.Unlock([]byte("two"), AnyKeyslot)
	require.NoError(t, err)
	assert.Equal(t, vk, key)
	assert.Equal(t, 2, slot)
	_, _, err = img.Unlock([]byte("two"), 0)
	assert.ErrorIs(t, err, ErrWrongPassphrase)
	_, _, err = img.Unlock([]byte("two"), 9)
	assert.ErrorIs(t, err, ErrKeyslotNotFound)

	infos := img.Keyslots()
	require.Len(t, infos, 3)
	assert.Equal(t, PriorityIgnore, infos[1].Priority)
	assert.Equal(t, PriorityPrefer, infos[2].Priority)
	assert.Nil(t, infos[2].KDF.Salt, "no salt in listings")
	assert.Equal(t, Argon2id(4, 32, 1), infos[2].KDF)

	// A token bound to slot 2 loses the reference when slot 2 goes; the area is wiped.
	tok, err := img.AddToken(AnyToken, []byte(`{"type":"bound","keyslots":["0","2"],"z":true}`))
	require.NoError(t, err)
	areaBefore := bytes.Clone(dev.buf[infos[2].AreaOffset : infos[2].AreaOffset+infos[2].AreaSize])
	require.NoError(t, img.RemoveKeyslot(2))
	assert.NotEqual(t, areaBefore, dev.buf[infos[2].AreaOffset:infos[2].AreaOffset+infos[2].AreaSize])
	raw, err := img.Token(tok)
	require.NoError(t, err)
	assert.Equal(t, `{"type":"bound","keyslots":["0"],"z":true}`, string(raw))
	_, _, err = img.Unlock([]byte("two"), AnyKeyslot)
	assert.ErrorIs(t, err, ErrWrongPassphrase)
	assert.ErrorIs(t, img.RemoveKeyslot(2), ErrKeyslotNotFound)

	// The freed area is reused.
	three, err := img.AddKeyslot(vk, []byte("three"), SlotOptions{ID: AnyKeyslot, KDF: testKDF})
	require.NoError(t, err)
	assert.Equal(t, 2, three)
	assert.Equal(t, infos[2].AreaOffset, img.Keyslots()[2].AreaOffset)

	// The last keyslot cannot be removed; Erase removes them all.
	require.NoError(t, img.RemoveKeyslot(1))
	require.NoError(t, img.RemoveKeyslot(2))
	assert.ErrorIs(t, img.RemoveKeyslot(0), ErrLastKeyslot)
	require.NoError(t, img.Erase())
	assert.Empty(t, img.Keyslots())
	_, _, err = img.Unlock([]byte("zero"), AnyKeyslot)
	assert.ErrorIs(t, err, ErrWrongPassphrase)
	raw, err = img.Token(tok)
	require.NoError(t, err)
	assert.Equal(t, `{"type":"bound","keyslots":[],"z":true}`, string(raw))
	reopened, err := Open(dev, nil)
	require.NoError(t, err)
	assert.Empty(t, reopened.Keyslots())
}

func TestTokens(t *testing.T) {
	t.Parallel()
	_, img, _ := newMemImage(t, "tok")
	tests := []struct {
		name, token, msg string
	}{
		{"not json", `nope`, "not a JSON object"},
		{"array", `[1]`, "not a JSON object"},
		{"no keyslots", `{"type":"a"}`, `missing member "keyslots"`},
		{"keyslots not strings", `{"type":"a","keyslots":[0]}`, "array of strings"},
		{"missing keyslot", `{"type":"a","keyslots":["3"]}`, "names keyslot 3"},
		{"reserved type", `{"type":"luks2-keyring","keyslots":[]}`, "reserved"},
		{"duplicate keyslot", `{"type":"a","keyslots":["0","0"]}`, "listed twice"},
		{"type not string", `{"type":7,"keyslots":[]}`, "want a string"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := img.AddToken(AnyToken, []byte(tt.token))
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrInvalidMetadata)
			assert.Contains(t, err.Error(), tt.msg)
		})
	}
	assert.Empty(t, img.Tokens())

	id, err := img.AddToken(7, []byte(" {\n \"type\": \"a\",\n \"keyslots\": [\"0\"] } "))
	require.NoError(t, err)
	assert.Equal(t, 7, id)
	raw, err := img.Token(7)
	require.NoError(t, err)
	assert.Equal(t, `{"type":"a","keyslots":["0"]}`, string(raw), "stored compact")
	_, err = img.AddToken(7, []byte(`{"type":"b","keyslots":[]}`))
	assert.ErrorContains(t, err, "already exists")
	_, err = img.AddToken(32, []byte(`{"type":"b","keyslots":[]}`))
	assert.ErrorIs(t, err, ErrTokenNotFound)
	assert.Equal(t, []TokenInfo{{ID: 7, Type: "a", Keyslots: []int{0}}}, img.Tokens())

	// UpdateToken: a failing fn writes nothing.
	seq := img.SeqID()
	err = img.UpdateToken(7, func(json.RawMessage) ([]byte, error) { return nil, fmt.Errorf("kms down") })
	assert.ErrorContains(t, err, "kms down")
	assert.Equal(t, seq, img.SeqID())
	assert.ErrorIs(t, img.ReplaceToken(3, []byte(`{"type":"b","keyslots":[]}`)), ErrTokenNotFound)
	assert.ErrorIs(t, img.RemoveToken(3), ErrTokenNotFound)
	_, err = img.Token(3)
	assert.ErrorIs(t, err, ErrTokenNotFound)

	// Fill every id, then run out.
	for i := 0; i < MaxTokens-1; i++ {
		_, err := img.AddToken(AnyToken, []byte(`{"type":"f","keyslots":[]}`))
		require.NoError(t, err, "token %d", i)
	}
	_, err = img.AddToken(AnyToken, []byte(`{"type":"f","keyslots":[]}`))
	assert.ErrorIs(t, err, ErrNoSpace)

	// The JSON area has a size limit too.
	big := `{"type":"big","keyslots":[],"blob":"` + strings.Repeat("A", 16<<10) + `"}`
	assert.ErrorIs(t, img.ReplaceToken(7, []byte(big)), ErrNoSpace)
}

func TestFormatErrors(t *testing.T) {
	t.Parallel()
	good := smallFormat
	tests := []struct {
		name string
		size uint64
		mod  func(*FormatOptions)
		want string
	}{
		{"no kdf", smallSize, func(o *FormatOptions) { o.KDF = KDF{} }, `KDF type ""`},
		{"few iterations", smallSize, func(o *FormatOptions) { o.KDF = PBKDF2("sha256", 999) }, "pbkdf2 iterations 999"},
		{"argon2 time", smallSize, func(o *FormatOptions) { o.KDF = Argon2id(3, 32, 1) }, "time 3"},
		{"argon2 memory", smallSize, func(o *FormatOptions) { o.KDF = Argon2id(4, 16, 1) }, "memory 16"},
		{"argon2 threads", smallSize, func(o *FormatOptions) { o.KDF = Argon2id(4, 64, 5) }, "threads 5"},
		{"pbkdf2 hash", smallSize, func(o *FormatOptions) { o.KDF = PBKDF2("md5", 1000) }, `hash "md5"`},
		{"key size", smallSize, func(o *FormatOptions) { o.KeySize = 48 }, "volume key size 48"},
		{"volume key length", smallSize, func(o *FormatOptions) { o.VolumeKey = make([]byte, 10) }, "volume key is 10 bytes"},
		{"weak volume key", smallSize, func(o *FormatOptions) { o.VolumeKey = make([]byte, 64) }, "halves"},
		{"sector size", smallSize, func(o *FormatOptions) { o.SectorSize = 8192 }, "sector size 8192"},
		{"metadata size", smallSize, func(o *FormatOptions) { o.MetadataSize = 20000 }, "metadata size 20000"},
		{"keyslots size", smallSize, func(o *FormatOptions) { o.KeyslotsSize = 1000 }, "keyslots area size 1000"},
		{"keyslots too small", smallSize, func(o *FormatOptions) { o.KeyslotsSize = 4096 }, "cannot hold"},
		{"data offset", smallSize, func(o *FormatOptions) { o.DataOffset = 4096 }, "data offset 4096"},
		{"device too small", 1 << 20, func(*FormatOptions) {}, "device size"},
		{"device unaligned", smallSize + 512, func(*FormatOptions) {}, "device size"},
		{"label", smallSize, func(o *FormatOptions) { o.Label = strings.Repeat("l", 48) }, "label"},
		{"uuid", smallSize, func(o *FormatOptions) { o.UUID = "NOT-A-UUID" }, "UUID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := good()
			tt.mod(&opts)
			dev := newMemDevice(int(smallSize + 4096))
			img, key, err := Format(dev, tt.size, []byte("p"), opts)
			require.Error(t, err)
			assert.Nil(t, img)
			assert.Nil(t, key)
			assert.Contains(t, err.Error(), tt.want)
			assert.Equal(t, make([]byte, len(dev.buf)), dev.buf, "nothing written")
		})
	}
}

func TestFormatOptions(t *testing.T) {
	t.Parallel()
	vk := make([]byte, 32)
	_, err := rand.Read(vk)
	require.NoError(t, err)
	dev := newMemDevice(4 << 20)
	opts := FormatOptions{
		KDF: testKDF, KeySize: 32, VolumeKey: vk, SectorSize: 2048, MetadataSize: 32 << 10,
		KeyslotsSize: 1 << 20, DataOffset: 2 << 20, Label: "lbl", Subsystem: "sub",
		UUID: "01234567-89ab-4def-8123-456789abcdef",
	}
	img, key, err := Format(dev, 4<<20, []byte("p"), opts)
	require.NoError(t, err)
	assert.Equal(t, vk, key)
	assert.Equal(t, opts.UUID, img.UUID(), "the image Format returns is the one it wrote")
	img, err = Open(dev, nil)
	require.NoError(t, err)
	assert.Equal(t, "lbl", img.Label())
	assert.Equal(t, "sub", img.Subsystem())
	assert.Equal(t, opts.UUID, img.UUID())
	assert.Equal(t, uint64(32<<10), img.MetadataSize())
	assert.Equal(t, uint64(1<<20), img.KeyslotsSize())
	assert.Equal(t, SegmentInfo{Offset: 2 << 20, Dynamic: true, Encryption: "aes-xts-plain64", SectorSize: 2048}, img.Segment())
	assert.Equal(t, 32, img.VolumeKeySize())
	assert.Equal(t, uint64(1), img.SeqID())
	got, _, err := img.Unlock([]byte("p"), AnyKeyslot)
	require.NoError(t, err)
	assert.Equal(t, vk, got)

	// A 4 MiB header gets cryptsetup's default 8 MiB keyslots area.
	huge := newMemDevice(17 << 20)
	img, _, err = Format(huge, 17<<20, []byte("p"), FormatOptions{KDF: testKDF, MetadataSize: 4 << 20})
	require.NoError(t, err)
	assert.Equal(t, uint64(8<<20), img.KeyslotsSize())

	// Defaults: cryptsetup's 16 KiB metadata, 16 MiB - 32 KiB keyslots, data at 16 MiB.
	big := newMemDevice(17 << 20)
	img, _, err = Format(big, 17<<20, []byte("p"), FormatOptions{KDF: testKDF})
	require.NoError(t, err)
	assert.Equal(t, uint64(16<<10), img.MetadataSize())
	assert.Equal(t, uint64(16<<20-32<<10), img.KeyslotsSize())
	assert.Equal(t, uint64(16<<20), img.Segment().Offset)
	assert.Equal(t, 4096, img.Segment().SectorSize)
	assert.Equal(t, 64, img.VolumeKeySize())
	assert.Len(t, img.UUID(), 36)
}

func TestAFRoundTrip(t *testing.T) {
	t.Parallel()
	for _, h := range []string{"sha1", "sha256", "sha512"} {
		for _, n := range []int{16, 32, 64, 65} {
			t.Run(fmt.Sprintf("%s/%d", h, n), func(t *testing.T) {
				key := make([]byte, n)
				_, _ = rand.Read(key)
				split, err := afSplit(key, h, rand.Reader)
				require.NoError(t, err)
				require.Len(t, split, n*afStripes)
				got, err := afMerge(split, n, h)
				require.NoError(t, err)
				assert.Equal(t, key, got)
				split[n*1234] ^= 1 // any damaged stripe loses the key
				got, err = afMerge(split, n, h)
				require.NoError(t, err)
				assert.NotEqual(t, key, got)
			})
		}
	}
	_, err := afMerge(make([]byte, 100), 64, "sha256")
	assert.ErrorIs(t, err, ErrInvalidMetadata)
	assert.Equal(t, uint64(256000), afSize(64))
	assert.Equal(t, uint64(258048), afAreaSize(64))
	assert.Equal(t, uint64(128000), afSize(32))
}
