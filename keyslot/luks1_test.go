package keyslot

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const luks1Dir = "../testdata/luks1"

// luks1Vector is one entry of testdata/luks1/vectors.json (made by make-vectors.sh with
// cryptsetup luksFormat --type luks1).
type luks1Vector struct {
	File          string `json:"file"`
	Hash          string `json:"hash"`
	KeyBytes      int    `json:"key_bytes"`
	PayloadOffset uint64 `json:"payload_offset"`
	UUID          string `json:"uuid"`
	Passphrase    string `json:"passphrase"`
	MasterKey     string `json:"master_key"`
}

func loadLUKS1Vectors(t testing.TB) []luks1Vector {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(luks1Dir, "vectors.json"))
	require.NoError(t, err)
	var vs []luks1Vector
	require.NoError(t, json.Unmarshal(raw, &vs))
	require.Len(t, vs, 2)
	return vs
}

// readGzip returns the decompressed contents of a file of testdata/luks1.
func readGzip(t testing.TB, name string) []byte {
	t.Helper()
	f, err := os.Open(filepath.Join(luks1Dir, name))
	require.NoError(t, err)
	defer f.Close()
	zr, err := gzip.NewReader(f)
	require.NoError(t, err)
	b, err := io.ReadAll(zr)
	require.NoError(t, err)
	return b
}

// TestLUKS1Vectors parses and unlocks the cryptsetup-made header areas of testdata/luks1 and
// checks the master key luksDump --dump-volume-key gave.
func TestLUKS1Vectors(t *testing.T) {
	t.Parallel()
	for _, v := range loadLUKS1Vectors(t) {
		t.Run(v.File, func(t *testing.T) {
			t.Parallel()
			area := readGzip(t, v.File)
			r := bytes.NewReader(area)
			h, err := ParseLUKS1(r, int64(len(area)))
			require.NoError(t, err)
			assert.Equal(t, "aes", h.CipherName)
			assert.Equal(t, "xts-plain64", h.CipherMode)
			assert.Equal(t, "aes-xts-plain64", h.CipherSpec())
			assert.Equal(t, v.Hash, h.HashSpec)
			assert.Equal(t, v.KeyBytes, h.KeyBytes)
			assert.Equal(t, v.PayloadOffset, h.PayloadOffset)
			assert.Equal(t, v.UUID, h.UUID)
			assert.Equal(t, []int{0}, h.ActiveSlots())
			assert.Equal(t, uint64(8), h.Slots[0].KeyMaterialOffset)
			assert.Equal(t, uint32(1000), h.Slots[0].Iterations)

			key, slot, err := h.Unlock(context.Background(), r, []byte(v.Passphrase))
			require.NoError(t, err)
			assert.Equal(t, 0, slot)
			assert.Equal(t, v.MasterKey, hex.EncodeToString(key))

			_, _, err = h.Unlock(context.Background(), r, []byte(v.Passphrase+"x"))
			assert.ErrorIs(t, err, ErrLUKS1Passphrase)
			assert.ErrorIs(t, err, ErrWrongPassphrase)
		})
	}
}

// TestFormatLUKS1RoundTrip formats header areas and opens them again, checking QEMU's layout.
func TestFormatLUKS1RoundTrip(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		keyBytes    int
		hash        string
		payload     uint64
		slotStrides uint64
	}{
		{"aes256-sha256-default", 64, "", 4040, 504},
		{"aes128-sha1", 32, "sha1", 2056, 256},
		{"aes256-sha512", 64, "sha512", 4040, 504},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			mk := bytes.Repeat([]byte{1, 2, 3, 4, 5, 6, 7, 8}, tt.keyBytes/8)
			mk[0] = 0xee
			pass := []byte("0123456789abcdef0123456789abcdef")
			area, err := FormatLUKS1(context.Background(), mk, pass, LUKS1Options{Hash: tt.hash, UUID: "0A1B2C3D-0000-4000-8000-00000000000F"})
			require.NoError(t, err)
			assert.Equal(t, int(tt.payload*512), len(area))
			assert.Zero(t, len(area)%4096)

			r := bytes.NewReader(area)
			h, err := ParseLUKS1(r, int64(len(area)))
			require.NoError(t, err)
			assert.Equal(t, tt.payload, h.PayloadOffset)
			assert.Equal(t, tt.keyBytes, h.KeyBytes)
			assert.Equal(t, "0a1b2c3d-0000-4000-8000-00000000000f", h.UUID)
			assert.Equal(t, uint32(1000), h.MKDigestIterations)
			want := tt.hash
			if want == "" {
				want = "sha256"
			}
			assert.Equal(t, want, h.HashSpec)
			for i, s := range h.Slots {
				assert.Equal(t, i == 0, s.Active, "slot %d", i)
				assert.Equal(t, uint64(8)+uint64(i)*tt.slotStrides, s.KeyMaterialOffset, "slot %d", i)
				assert.Equal(t, uint32(4000), s.Stripes)
			}
			assert.Equal(t, uint32(1000), h.Slots[0].Iterations)

			key, slot, err := h.Unlock(context.Background(), r, pass)
			require.NoError(t, err)
			assert.Equal(t, 0, slot)
			assert.Equal(t, mk, key)
			_, _, err = h.Unlock(context.Background(), r, []byte("wrong"))
			assert.ErrorIs(t, err, ErrLUKS1Passphrase)
		})
	}
}

func TestFormatLUKS1Options(t *testing.T) {
	t.Parallel()
	mk := bytes.Repeat([]byte{7}, 63)
	mk = append(mk, 8)
	ctx := context.Background()
	pass := []byte("p")
	tests := []struct {
		name   string
		mk     []byte
		pass   []byte
		opts   LUKS1Options
		target error
	}{
		{"short key", mk[:16], pass, LUKS1Options{}, nil},
		{"key size mismatch", mk, pass, LUKS1Options{KeyBytes: 32}, nil},
		{"empty passphrase", mk, nil, LUKS1Options{}, nil},
		{"unknown hash", mk, pass, LUKS1Options{Hash: "md5"}, ErrUnsupported},
		{"too few iterations", mk, pass, LUKS1Options{Iterations: 999}, ErrKDFLimits},
		{"bad uuid", mk, pass, LUKS1Options{UUID: "not-a-uuid"}, nil},
		{"short random source", mk, pass, LUKS1Options{Rand: bytes.NewReader(make([]byte, 40))}, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := FormatLUKS1(ctx, tt.mk, tt.pass, tt.opts)
			require.Error(t, err)
			if tt.target != nil {
				assert.ErrorIs(t, err, tt.target)
			}
		})
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	_, err := FormatLUKS1(cancelled, mk, pass, LUKS1Options{})
	assert.ErrorIs(t, err, context.Canceled)
}

// TestLUKS1UnlockCancel checks that a cancelled context stops Unlock with its error rather
// than a wrong passphrase.
func TestLUKS1UnlockCancel(t *testing.T) {
	t.Parallel()
	v := loadLUKS1Vectors(t)[0]
	area := readGzip(t, v.File)
	h, err := ParseLUKS1(bytes.NewReader(area), int64(len(area)))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, _, err = h.Unlock(ctx, bytes.NewReader(area), []byte(v.Passphrase))
	assert.ErrorIs(t, err, context.Canceled)
	assert.NotErrorIs(t, err, ErrWrongPassphrase)
}

// TestLUKS1UnlockUnsupportedCipher checks that headers with ciphers other than
// aes-xts-plain64 parse, and that Unlock refuses them naming the cipher.
func TestLUKS1UnlockUnsupportedCipher(t *testing.T) {
	t.Parallel()
	v := loadLUKS1Vectors(t)[1]
	base := readGzip(t, v.File)
	tests := []struct {
		name, cipher, mode string
		keyBytes           uint32
		want               string
	}{
		{"cbc-essiv", "aes", "cbc-essiv:sha256", 64, "aes-cbc-essiv:sha256 with a 512-bit key"},
		{"twofish", "twofish", "xts-plain64", 64, "twofish-xts-plain64"},
		{"aes-192", "aes", "xts-plain64", 48, "aes-xts-plain64 with a 384-bit key"},
		{"aes-128-xts-16", "aes", "xts-plain64", 16, "with a 128-bit key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			area := bytes.Clone(base)
			putString(area[l1OffCipherName:l1OffCipherName+32], tt.cipher)
			putString(area[l1OffCipherMode:l1OffCipherMode+32], tt.mode)
			binary.BigEndian.PutUint32(area[l1OffKeyBytes:], tt.keyBytes)
			h, err := ParseLUKS1(bytes.NewReader(area), int64(len(area)))
			require.NoError(t, err)
			_, _, err = h.Unlock(context.Background(), bytes.NewReader(area), []byte(v.Passphrase))
			require.ErrorIs(t, err, ErrUnsupported)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func putString(field []byte, s string) {
	clear(field)
	copy(field, s)
}

// TestParseLUKS1Bad refuses broken and hostile headers, each with an error naming the fault.
func TestParseLUKS1Bad(t *testing.T) {
	t.Parallel()
	v := loadLUKS1Vectors(t)[0] // 32-byte key: keyslot i at 8+i*256 sectors, payload 4096
	base := readGzip(t, v.File)
	slot := func(i int) []byte { return base[l1OffSlots+i*l1SlotSize:] }
	_ = slot
	u32 := func(off int, n uint32) func(b []byte) {
		return func(b []byte) { binary.BigEndian.PutUint32(b[off:], n) }
	}
	slotField := func(i, field int) int { return l1OffSlots + i*l1SlotSize + field }
	tests := []struct {
		name   string
		mutate func(b []byte)
		size   int64 // 0: len(area)
		target error
		want   string
	}{
		{"truncated", nil, 100, ErrLUKS1Header, "shorter than the 592-byte header"},
		{"wrong magic", func(b []byte) { b[0] = 'X' }, 0, ErrLUKS1Header, "bad magic"},
		{"luks2 version", func(b []byte) { b[7] = 2 }, 0, ErrLUKS1Header, "version 2, want 1"},
		{"cipher not terminated", func(b []byte) { copy(b[l1OffCipherName:l1OffCipherName+32], bytes.Repeat([]byte("a"), 32)) }, 0, ErrLUKS1Header, "cipher-name is not NUL-terminated"},
		{"empty cipher", func(b []byte) { clear(b[l1OffCipherName : l1OffCipherName+32]) }, 0, ErrLUKS1Header, "cipher-name is empty"},
		{"unprintable mode", func(b []byte) { b[l1OffCipherMode+1] = 0x01 }, 0, ErrLUKS1Header, "cipher-mode"},
		{"space in hash", func(b []byte) { putString(b[l1OffHashSpec:l1OffHashSpec+32], "sha 1") }, 0, ErrLUKS1Header, "hash-spec"},
		{"unknown hash", func(b []byte) { putString(b[l1OffHashSpec:l1OffHashSpec+32], "ripemd160") }, 0, ErrUnsupported, `hash "ripemd160"`},
		{"key bytes 0", u32(l1OffKeyBytes, 0), 0, ErrLUKS1Header, "key-bytes 0"},
		{"key bytes huge", u32(l1OffKeyBytes, 1<<31), 0, ErrLUKS1Header, "key-bytes 2147483648"},
		{"payload in header", u32(l1OffPayload, 1), 0, ErrLUKS1Header, "payload-offset 1 sectors overlaps the header"},
		{"digest iterations zero", u32(l1OffMKIter, 0), 0, ErrKDFLimits, "mk-digest-iter 0"},
		{"digest iterations huge", u32(l1OffMKIter, 0xffffffff), 0, ErrKDFLimits, "mk-digest-iter 4294967295"},
		{"uuid not terminated", func(b []byte) { copy(b[l1OffUUID:l1OffUUID+40], bytes.Repeat([]byte("1"), 40)) }, 0, ErrLUKS1Header, "uuid is not NUL-terminated"},
		{"uuid malformed", func(b []byte) { putString(b[l1OffUUID:l1OffUUID+40], "5e1f7c2a1b3d4c5e8f90a1b2c3d4e5f1") }, 0, ErrLUKS1Header, "uuid"},
		{"bad slot state", u32(slotField(3, 0), 1), 0, ErrLUKS1Header, "keyslot 3: state 0x00000001"},
		{"stripes", u32(slotField(5, 44), 3999), 0, ErrLUKS1Header, "keyslot 5: 3999 stripes, want 4000"},
		{"stripes zero", u32(slotField(0, 44), 0), 0, ErrLUKS1Header, "keyslot 0: 0 stripes"},
		{"slot iterations zero", u32(slotField(0, 4), 0), 0, ErrKDFLimits, "keyslot 0 iterations 0"},
		{"slot iterations huge", u32(slotField(0, 4), 1<<31), 0, ErrKDFLimits, "keyslot 0 iterations 2147483648"},
		{"material in header", u32(slotField(2, 40), 1), 0, ErrLUKS1Header, "keyslot 2: key-material-offset 1 sectors overlaps the header"},
		{"material in payload", u32(slotField(7, 40), 4000), 0, ErrLUKS1Header, "keyslot 7: key material at sectors [4000, 4250) overlaps the payload at sector 4096"},
		{"material beyond offset range", u32(slotField(0, 40), 0xffffffff), 0, ErrLUKS1Header, "keyslot 0"},
		{"overlapping slots", u32(slotField(5, 40), 8+4*256+100), 0, ErrLUKS1Header, "keyslots 4 and 5: key material overlaps"},
		{"same offset", u32(slotField(1, 40), 8), 0, ErrLUKS1Header, "keyslots 0 and 1: key material overlaps"},
		{"active material outside area", nil, 4096 + 128000 - 1, ErrLUKS1Header, "keyslot 0: key material at bytes [4096, 132096) lies outside the 132095-byte LUKS area"},
		{"detached active outside area", func(b []byte) {
			binary.BigEndian.PutUint32(b[l1OffPayload:], 0)
			binary.BigEndian.PutUint32(b[slotField(0, 40):], 1<<20)
		}, 0, ErrLUKS1Header, "lies outside"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			area := bytes.Clone(base)
			if tt.mutate != nil {
				tt.mutate(area)
			}
			size := tt.size
			if size == 0 {
				size = int64(len(area))
			}
			_, err := ParseLUKS1(bytes.NewReader(area[:min(int64(len(area)), size)]), size)
			require.Error(t, err)
			assert.ErrorIs(t, err, tt.target)
			assert.Contains(t, err.Error(), tt.want)
		})
	}

	t.Run("short reader", func(t *testing.T) {
		_, err := ParseLUKS1(bytes.NewReader(base[:300]), int64(len(base)))
		assert.ErrorIs(t, err, ErrLUKS1Header)
		assert.Contains(t, err.Error(), "truncated: 300 of 592 header bytes")
	})
	t.Run("read error", func(t *testing.T) {
		boom := errors.New("boom")
		_, err := ParseLUKS1(errReader{boom}, int64(len(base)))
		assert.ErrorIs(t, err, boom)
	})
	t.Run("detached header", func(t *testing.T) {
		area := bytes.Clone(base)
		binary.BigEndian.PutUint32(area[l1OffPayload:], 0)
		h, err := ParseLUKS1(bytes.NewReader(area), int64(len(area)))
		require.NoError(t, err)
		assert.Zero(t, h.PayloadOffset)
	})
	t.Run("unlock short material", func(t *testing.T) {
		h, err := ParseLUKS1(bytes.NewReader(base), int64(len(base)))
		require.NoError(t, err)
		_, _, err = h.Unlock(context.Background(), bytes.NewReader(base[:5000]), []byte(v.Passphrase))
		assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
	})
}

type errReader struct{ err error }

func (e errReader) ReadAt([]byte, int64) (int, error) { return 0, e.err }

// FuzzParseLUKS1 feeds mutated LUKS1 headers to ParseLUKS1 and, for each that parses, tries
// Unlock with a fixed passphrase. Seeds are the cryptsetup vectors and a FormatLUKS1 header.
// The iteration counts of parsed headers are capped so that each input stays fast; the
// reader the harness gives Unlock is the seed's key material behind the fuzzed header.
func FuzzParseLUKS1(f *testing.F) {
	var areas [][]byte
	for _, v := range loadLUKS1Vectors(f) {
		areas = append(areas, readGzip(f, v.File))
	}
	formatted, err := FormatLUKS1(context.Background(), bytes.Repeat([]byte{9, 8}, 16), []byte("fuzz"), LUKS1Options{})
	if err != nil {
		f.Fatal(err)
	}
	areas = append(areas, formatted)
	for i, a := range areas {
		f.Add(bytes.Clone(a[:LUKS1HeaderSize]), uint8(i), uint32(len(a)))
	}
	f.Add([]byte("LUKS\xba\xbe\x00\x01"), uint8(0), uint32(4096))
	f.Fuzz(func(t *testing.T, hdr []byte, which uint8, size uint32) {
		area := bytes.Clone(areas[int(which)%len(areas)])
		copy(area, hdr)
		if int(size) > len(area) {
			size = uint32(len(area))
		}
		r := bytes.NewReader(area[:size])
		h, err := ParseLUKS1(r, int64(size))
		if err != nil {
			if h != nil {
				t.Fatal("non-nil header with an error")
			}
			return
		}
		h.MKDigestIterations = min(h.MKDigestIterations, 10)
		for i := range h.Slots {
			h.Slots[i].Iterations = min(h.Slots[i].Iterations, 10)
		}
		key, slot, err := h.Unlock(context.Background(), r, []byte("luks1 sha1 vector"))
		if err == nil && (len(key) != h.KeyBytes || !h.Slots[slot].Active) {
			t.Fatalf("unlock gave a %d-byte key from slot %d", len(key), slot)
		}
	})
}
