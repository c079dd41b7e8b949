package keyslot

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// writeRawMetadata writes text as the JSON metadata of both header copies of dev, with valid
// checksums and the next seqid, bypassing every validation of this package: the way to build
// hostile headers.
func writeRawMetadata(t *testing.T, dev *memDevice, text string) {
	t.Helper()
	img, err := Open(dev, nil)
	require.NoError(t, err)
	st := img.snapshot()
	area := make([]byte, st.bin.hdrSize-binHeaderSize)
	require.Less(t, len(text), len(area))
	copy(area, text)
	h := st.bin
	h.seqID++
	for _, secondary := range []bool{false, true} {
		c := h
		c.secondary = secondary
		c.hdrOffset = 0
		if secondary {
			c.hdrOffset = st.bin.hdrSize
		}
		_, err := writeCopy(dev, &c, area)
		require.NoError(t, err)
	}
}

// baseText is the metadata of a fresh small image with one token.
func baseImage(t *testing.T, kdf KDF) (*memDevice, string) {
	t.Helper()
	dev := newMemDevice(smallSize)
	opts := smallFormat()
	opts.KDF = kdf
	img, _, err := Format(dev, smallSize, []byte("pass"), opts)
	require.NoError(t, err)
	_, err = img.AddToken(AnyToken, []byte(`{"type":"crkvol-crk","keyslots":["0"],"x":1}`))
	require.NoError(t, err)
	return dev, string(img.snapshot().meta.marshal())
}

func TestStrictParsing(t *testing.T) {
	t.Parallel()
	_, pbkdf2Text := baseImage(t, testKDF)
	_, argonText := baseImage(t, Argon2id(4, 32, 1))
	require.Contains(t, pbkdf2Text, `"offset":"32768"`)
	tests := []struct {
		name     string
		argon    bool
		old, new string
		wantErr  error
		wantMsg  string
	}{
		{"offset as number", false, `"offset":"32768"`, `"offset":32768`, ErrInvalidMetadata, "keyslots.0.area.offset: want a string"},
		{"key_size as string", false, `"key_size":64,"af"`, `"key_size":"64","af"`, ErrInvalidMetadata, "keyslots.0.key_size: want a JSON integer"},
		{"key_size float", false, `"key_size":64,"af"`, `"key_size":64.0,"af"`, ErrInvalidMetadata, "keyslots.0.key_size"},
		{"key_size huge", false, `"key_size":64,"af"`, `"key_size":100000,"af"`, ErrInvalidMetadata, "out of range"},
		{"offset with sign", false, `"offset":"32768"`, `"offset":"+32768"`, ErrInvalidMetadata, "decimal number string"},
		{"offset overflow", false, `"offset":"32768"`, `"offset":"99999999999999999999"`, ErrInvalidMetadata, "64 bits"},
		{"unknown kdf", false, `"kdf":{"type":"pbkdf2"`, `"kdf":{"type":"scrypt"`, ErrUnsupported, `KDF type "scrypt"`},
		{"unknown keyslot type", false, `"0":{"type":"luks2"`, `"0":{"type":"luks3"`, ErrUnsupported, `keyslot type "luks3"`},
		{"unknown digest type", false, `"digests":{"0":{"type":"pbkdf2"`, `"digests":{"0":{"type":"hmac"`, ErrUnsupported, `digest type "hmac"`},
		{"unknown segment type", false, `"type":"crypt"`, `"type":"linear"`, ErrUnsupported, `segment type "linear"`},
		{"unknown af hash", false, `"stripes":4000,"hash":"sha256"`, `"stripes":4000,"hash":"md4"`, ErrUnsupported, `hash "md4"`},
		{"unknown af type", false, `"af":{"type":"luks1"`, `"af":{"type":"luks9"`, ErrUnsupported, `AF type "luks9"`},
		{"stripes", false, `"stripes":4000`, `"stripes":2`, ErrInvalidMetadata, "stripes"},
		{"pbkdf2 iterations over cap", false, `"iterations":1000,"salt"`, `"iterations":4294967296,"salt"`, ErrKDFLimits, "iterations"},
		{"pbkdf2 iterations over int32", false, `"iterations":1000,"salt"`, `"iterations":2147483648,"salt"`, ErrKDFLimits, "iterations"},
		{"digest iterations over int32", false, `"segments":["0"],"hash":"sha256","iterations":1000`, `"segments":["0"],"hash":"sha256","iterations":2147483648`, ErrKDFLimits, "digests.0.iterations"},
		{"digest iterations over cap", false, `"segments":["0"],"hash":"sha256","iterations":1000`, `"segments":["0"],"hash":"sha256","iterations":4294967296`, ErrKDFLimits, "digests.0.iterations"},
		{"pbkdf2 iterations zero", false, `"iterations":1000,"salt"`, `"iterations":0,"salt"`, ErrKDFLimits, "iterations"},
		{"argon2 memory over cap", true, `"memory":32`, `"memory":4194305`, ErrKDFLimits, "memory"},
		{"argon2 cpus over cap", true, `"cpus":1`, `"cpus":5`, ErrKDFLimits, "cpus"},
		{"argon2 memory below threads", true, `"memory":32,"cpus":1`, `"memory":8,"cpus":4`, ErrKDFLimits, "8 KiB per thread"},
		{"argon2 time over cap", true, `"time":4`, `"time":4294967296`, ErrKDFLimits, "time"},
		{"bad base64 salt", false, `"salt":"`, `"salt":"!!`, ErrInvalidMetadata, "invalid base64"},
		{"unaligned area", false, `"offset":"32768"`, `"offset":"32769"`, ErrInvalidMetadata, "not sector-aligned"},
		{"area outside keyslots area", false, `"offset":"32768"`, `"offset":"0"`, ErrInvalidMetadata, "outside the keyslots area"},
		{"area past data", false, `"offset":"32768"`, `"offset":"1044480"`, ErrInvalidMetadata, "outside the keyslots area"},
		{"area too small", false, `"size":"258048"`, `"size":"4096"`, ErrInvalidMetadata, "smaller than"},
		{"token names missing keyslot", false, `"keyslots":["0"],"x":1`, `"keyslots":["7"],"x":1`, ErrInvalidMetadata, "token 0 names keyslot 7"},
		{"token without type", false, `{"type":"crkvol-crk",`, `{`, ErrInvalidMetadata, `missing member "type"`},
		{"token empty type", false, `"type":"crkvol-crk"`, `"type":""`, ErrInvalidMetadata, "empty token type"},
		{"json_size", false, `"json_size":"12288"`, `"json_size":"28672"`, ErrInvalidMetadata, "json_size"},
		{"keyslots_size", false, `"keyslots_size":"786432"`, `"keyslots_size":"786433"`, ErrInvalidMetadata, "keyslots_size"},
		{"duplicate member", false, `{"keyslots":`, `{"tokens":{},"keyslots":`, ErrInvalidMetadata, `duplicate member "tokens"`},
		{"segment offset", false, `"offset":"1048576"`, `"offset":"1048577"`, ErrInvalidMetadata, "not a multiple of 512"},
		{"segment sector size", false, `"sector_size":4096`, `"sector_size":3000`, ErrInvalidMetadata, "power of two"},
		{"segment sector size big", false, `"sector_size":4096`, `"sector_size":8192`, ErrInvalidMetadata, "sector_size"},
		{"keyslot id out of range", false, `"keyslots":{"0":`, `"keyslots":{"32":`, ErrInvalidMetadata, "out of range"},
		{"keyslot id leading zero", false, `"keyslots":{"0":`, `"keyslots":{"00":`, ErrInvalidMetadata, "invalid id"},
		{"keyslot not in digest", false, `"keyslots":["0"],"segments"`, `"keyslots":[],"segments"`, ErrInvalidMetadata, "keyslot 0 is not in any digest"},
		{"short digest", false, `"digest":"`, `"digest":"AAAA","x":"`, ErrInvalidMetadata, "digest"},
		{"short digest salt", false, `"segments":["0"],"hash":"sha256","iterations":1000,"salt":"`, `"segments":["0"],"hash":"sha256","iterations":1000,"salt":"AAAA","y":"`, ErrInvalidMetadata, "salt"},
		{"digest names missing segment", false, `"segments":["0"]`, `"segments":["3"]`, ErrInvalidMetadata, "segment 3"},
		{"priority", false, `"kdf":{`, `"priority":3,"kdf":{`, ErrInvalidMetadata, "priority"},
		{"missing config", false, `,"config":{"json_size":"12288","keyslots_size":"786432"}`, ``, ErrInvalidMetadata, `missing member "config"`},
		{"trailing data", false, `"keyslots_size":"786432"}}`, `"keyslots_size":"786432"}}x`, ErrInvalidMetadata, "after the object"},
		{"truncated", false, `"keyslots_size":"786432"}}`, `"keyslots_size":"786432"`, ErrInvalidMetadata, ""},
		{"data segment at offset 0", false, `"offset":"1048576"`, `"offset":"0"`, ErrInvalidMetadata, "segment 0 at offset 0"},
		{"data segment inside keyslots area", false, `"offset":"1048576"`, `"offset":"524288"`, ErrInvalidMetadata, "starts before the end of the keyslots area"},
		{"data segment inside header", false, `"offset":"1048576"`, `"offset":"4096"`, ErrInvalidMetadata, "starts before the end of the keyslots area"},
		{"keyslots_size past data", false, `"keyslots_size":"786432"`, `"keyslots_size":"1044480"`, ErrInvalidMetadata, "config.keyslots_size 1044480 runs past the data segment"},
		{"segment encryption empty", false, `"encryption":"aes-xts-plain64","sector_size"`, `"encryption":"","sector_size"`, ErrInvalidMetadata, "segments.0.encryption: empty"},
		{"keyslot area encryption empty", false, `"encryption":"aes-xts-plain64","key_size":64}`, `"encryption":"","key_size":64}`, ErrInvalidMetadata, "keyslots.0.area.encryption: empty"},
		{"segment flags not an array", false, `"sector_size":4096}`, `"sector_size":4096,"flags":"allow-discards"}`, ErrInvalidMetadata, "segments.0.flags: want an array of strings"},
		{"segment flags null", false, `"sector_size":4096}`, `"sector_size":4096,"flags":null}`, ErrInvalidMetadata, "segments.0.flags: want an array of strings"},
		{"segment flags number", false, `"sector_size":4096}`, `"sector_size":4096,"flags":[1]}`, ErrInvalidMetadata, "segments.0.flags: want an array of strings"},
		{"segment flags null member", false, `"sector_size":4096}`, `"sector_size":4096,"flags":["x",null]}`, ErrInvalidMetadata, "segments.0.flags: want an array of strings"},
		{"config flags null member", false, `"keyslots_size":"786432"}`, `"keyslots_size":"786432","flags":[null]}`, ErrInvalidMetadata, "config.flags: want an array of strings"},
		{"not an object", false, `{"keyslots"`, `["keyslots"`, ErrHeaderCorrupt, "does not start with '{'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := pbkdf2Text
			if tt.argon {
				base = argonText
			}
			require.Contains(t, base, tt.old, "mutation does not apply")
			dev := newMemDevice(smallSize)
			_, _, err := Format(dev, smallSize, []byte("pass"), smallFormat())
			require.NoError(t, err)
			writeRawMetadata(t, dev, strings.Replace(base, tt.old, tt.new, 1))
			_, err = Open(dev, nil)
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrNotLUKS2)
			assert.ErrorIs(t, err, tt.wantErr)
			assert.Contains(t, err.Error(), tt.wantMsg)
		})
	}

	t.Run("unchanged base opens", func(t *testing.T) {
		dev, text := baseImage(t, testKDF)
		writeRawMetadata(t, dev, text)
		_, err := Open(dev, nil)
		require.NoError(t, err)
	})
}

// TestUnsupportedAreaCipher: a keyslot whose area cipher is not implemented opens, lists,
// and refuses to unlock with an error naming the cipher.
func TestUnsupportedAreaCipher(t *testing.T) {
	t.Parallel()
	dev, text := baseImage(t, testKDF)
	writeRawMetadata(t, dev, strings.Replace(text, `"encryption":"aes-xts-plain64","key_size":64}`, `"encryption":"serpent-xts-plain64","key_size":64}`, 1))
	img, err := Open(dev, nil)
	require.NoError(t, err)
	_, _, err = img.Unlock([]byte("pass"), AnyKeyslot)
	require.ErrorIs(t, err, ErrUnsupported)
	assert.Contains(t, err.Error(), "serpent-xts-plain64")
	assert.NotErrorIs(t, err, ErrWrongPassphrase)
}

// TestUnknownRequirements: an unknown mandatory requirement still unlocks, but every
// metadata change is refused, as cryptsetup does.
func TestUnknownRequirements(t *testing.T) {
	t.Parallel()
	dev, text := baseImage(t, testKDF)
	writeRawMetadata(t, dev, strings.Replace(text, `"keyslots_size":"786432"}`, `"keyslots_size":"786432","requirements":{"mandatory":["future-feature"]}}`, 1))
	img, err := Open(dev, nil)
	require.NoError(t, err)
	assert.Equal(t, []string{"future-feature"}, img.Requirements())
	vk, _, err := img.Unlock([]byte("pass"), AnyKeyslot)
	require.NoError(t, err)

	seq := img.SeqID()
	_, err = img.AddToken(AnyToken, []byte(`{"type":"t","keyslots":[]}`))
	assert.ErrorIs(t, err, ErrUnmetRequirement)
	assert.Contains(t, err.Error(), "future-feature")
	assert.ErrorIs(t, img.ReplaceToken(0, []byte(`{"type":"t","keyslots":[]}`)), ErrUnmetRequirement)
	assert.ErrorIs(t, img.RemoveToken(0), ErrUnmetRequirement)
	_, err = img.AddKeyslot(vk, []byte("new"), SlotOptions{ID: AnyKeyslot, KDF: testKDF})
	assert.ErrorIs(t, err, ErrUnmetRequirement)
	assert.ErrorIs(t, img.Erase(), ErrUnmetRequirement)
	require.NoError(t, img.Reload())
	assert.Equal(t, seq, img.SeqID(), "nothing was written")
}

// TestUnknownMembersSurvive: members this package does not interpret are written back.
func TestUnknownMembersSurvive(t *testing.T) {
	t.Parallel()
	dev, text := baseImage(t, testKDF)
	text = strings.Replace(text, `{"keyslots":{"0":{"type":"luks2",`, `{"keyslots":{"0":{"type":"luks2","x-slot":{"a":[1]},`, 1)
	text = strings.Replace(text, `"sector_size":4096}`, `"sector_size":4096,"flags":["x-seg"]}`, 1)
	text = strings.Replace(text, `"keyslots_size":"786432"}`, `"keyslots_size":"786432","flags":["allow-discards"],"x-cfg":true}`, 1)
	text = strings.TrimSuffix(text, "}") + `,"x-top":"kept"}`
	writeRawMetadata(t, dev, text)
	img, err := Open(dev, nil)
	require.NoError(t, err)
	assert.Equal(t, []string{"allow-discards"}, img.Flags())
	assert.Equal(t, []string{"flags"}, img.Segment().Extra)
	_, err = img.AddToken(AnyToken, []byte(`{"type":"t","keyslots":[]}`))
	require.NoError(t, err)
	out := string(img.snapshot().meta.marshal())
	for _, s := range []string{`"x-slot":{"a":[1]}`, `"flags":["x-seg"]`, `"flags":["allow-discards"]`, `"x-cfg":true`, `"x-top":"kept"`} {
		assert.Contains(t, out, s)
	}
}
