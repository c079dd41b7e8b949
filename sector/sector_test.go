package sector

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/xts"
)

// kat is one IEEE 1619-2007 Annex B known-answer vector.
type kat struct {
	name   string
	key    []byte
	dus    uint64
	pt, ct []byte
}

// loadKATs reads ../testdata/xts-aes-ieee1619.txt.
func loadKATs(t *testing.T) []kat {
	t.Helper()
	f, err := os.Open("../testdata/xts-aes-ieee1619.txt")
	require.NoError(t, err)
	defer f.Close()
	var (
		out []kat
		cur *kat
	)
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		name, value, ok := strings.Cut(text, " ")
		require.True(t, ok, "line %d: want \"name value\"", line)
		if name == "vector" {
			out = append(out, kat{name: "vector" + value})
			cur = &out[len(out)-1]
			continue
		}
		require.NotNil(t, cur, "line %d: %s before the first vector", line, name)
		switch name {
		case "key":
			cur.key, err = hex.DecodeString(value)
		case "pt":
			cur.pt, err = hex.DecodeString(value)
		case "ct":
			cur.ct, err = hex.DecodeString(value)
		case "dus":
			cur.dus, err = strconv.ParseUint(value, 10, 64)
		default:
			t.Fatalf("line %d: unknown field %q", line, name)
		}
		require.NoError(t, err, "line %d", line)
	}
	require.NoError(t, sc.Err())
	return out
}

func TestKnownAnswers(t *testing.T) {
	vectors := loadKATs(t)
	// Annex B vectors 1-14: 9 for AES-128, 5 for AES-256.
	require.Len(t, vectors, 14)
	var n128, n256 int
	for _, v := range vectors {
		t.Run(v.name, func(t *testing.T) {
			require.Len(t, v.ct, len(v.pt))
			switch len(v.key) {
			case 32:
				n128++
			case 64:
				n256++
			}
			half := len(v.key) / 2
			data, err := aes.NewCipher(v.key[:half])
			require.NoError(t, err)
			tweak, err := aes.NewCipher(v.key[half:])
			require.NoError(t, err)

			// The engine itself, with the vector's own data unit size.
			got := make([]byte, len(v.pt))
			xtsGeneric(data, tweak, got, v.pt, len(v.pt), v.dus, 1, false)
			assert.Equal(t, hex.EncodeToString(v.ct), hex.EncodeToString(got), "encrypt")
			xtsGeneric(data, tweak, got, v.ct, len(v.ct), v.dus, 1, true)
			assert.Equal(t, hex.EncodeToString(v.pt), hex.EncodeToString(got), "decrypt")

			// The public API, where the vector is one 512-byte sector: the data unit
			// sequence number is then exactly the plain64 sector number.
			if len(v.pt) != 512 {
				return
			}
			for _, path := range Paths() {
				c, err := NewPath(v.key, 512, path)
				require.NoError(t, err)
				c.EncryptSectors(got, v.pt, v.dus)
				assert.Equal(t, v.ct, got, "%s: EncryptSectors", path)
				copy(got, v.ct)
				c.DecryptSectors(got, got, v.dus)
				assert.Equal(t, v.pt, got, "%s: DecryptSectors in place", path)
			}
		})
	}
	assert.Equal(t, 9, n128, "AES-128 vectors")
	assert.Equal(t, 5, n256, "AES-256 vectors")
}

// reference encrypts or decrypts like EncryptSectors with golang.org/x/crypto/xts, one
// sector at a time, using the 512-byte sector number as the x/crypto "sector number".
func reference(t testing.TB, key []byte, size int, dst, src []byte, first uint64, decrypt bool) {
	ref, err := xts.NewCipher(aes.NewCipher, key)
	require.NoError(t, err)
	for off := 0; off < len(src); off += size {
		num := first + uint64(off/IVUnit)
		if decrypt {
			ref.Decrypt(dst[off:off+size], src[off:off+size], num)
		} else {
			ref.Encrypt(dst[off:off+size], src[off:off+size], num)
		}
	}
}

func TestCrossCheckXCrypto(t *testing.T) {
	for _, path := range Paths() {
		t.Run(string(path), func(t *testing.T) { crossCheck(t, path) })
	}
}

func crossCheck(t *testing.T, path Path) {
	rng := rand.New(rand.NewPCG(1, 2))
	sizes := []int{512, 1024, 2048, 4096}
	for i := range 400 {
		keyLen := []int{32, 64}[i%2]
		size := sizes[(i/2)%len(sizes)]
		key := make([]byte, keyLen)
		fillRand(rng, key)
		c, err := NewPath(key, size, path)
		require.NoError(t, err)
		require.Equal(t, path, c.Path())
		step := uint64(size / IVUnit)
		first := rng.Uint64() / step * step
		if i%4 == 0 {
			first = rng.Uint64N(1<<20) * step // small numbers, as real volumes have
		}
		n := 1 + rng.IntN(6)
		switch {
		case i%50 == 0:
			n = 0
		case i%97 == 1:
			n = (1 << 20) / size // a 1 MiB request
		case i%7 == 3:
			n = 1 + rng.IntN(40)
		}
		// Unaligned buffer addresses.
		shift := rng.IntN(16)
		name := fmt.Sprintf("%d/key=%d/sector=%d/n=%d", i, keyLen, size, n)

		src := make([]byte, n*size+shift)[shift:]
		fillRand(rng, src)
		want := make([]byte, len(src))
		reference(t, key, size, want, src, first, false)

		// Out of place, with a longer dst whose tail must stay untouched.
		got := make([]byte, len(src)+size)
		fillRand(rng, got)
		tail := bytes.Clone(got[len(src):])
		c.EncryptSectors(got, src, first)
		require.Equal(t, want, got[:len(src)], "%s: encrypt out of place", name)
		require.Equal(t, tail, got[len(src):], "%s: encrypt wrote past len(src)", name)

		// In place, at another alignment.
		buf := append(make([]byte, 0, len(src)+15)[:(shift+5)%16], src...)[(shift+5)%16:]
		c.EncryptSectors(buf, buf, first)
		require.Equal(t, want, buf, "%s: encrypt in place", name)

		// Decrypt, both ways, against the reference too.
		ref := make([]byte, len(src))
		reference(t, key, size, ref, want, first, true)
		require.Equal(t, src, ref, "%s: reference round trip", name)
		plain := make([]byte, len(src))
		c.DecryptSectors(plain, want, first)
		require.Equal(t, src, plain, "%s: decrypt out of place", name)
		c.DecryptSectors(buf, buf, first)
		require.Equal(t, src, buf, "%s: decrypt in place", name)

		// Splitting a run of sectors into single-sector calls changes nothing.
		if n > 1 {
			one := make([]byte, len(src))
			for k := 0; k < n; k++ {
				c.EncryptSectors(one[k*size:], src[k*size:(k+1)*size], first+uint64(k)*step)
			}
			require.Equal(t, want, one, "%s: sector by sector", name)
		}
	}
}

// TestTweakIs512ByteSectorNumber pins the plain64 numbering for large sectors: the second
// 4096-byte sector of a segment uses tweak 8, which x/crypto/xts calls sector 8.
func TestTweakIs512ByteSectorNumber(t *testing.T) {
	key := make([]byte, 64)
	for i := range key {
		key[i] = byte(i)
	}
	c, err := New(key, 4096)
	require.NoError(t, err)
	src := make([]byte, 2*4096)
	got := make([]byte, len(src))
	c.EncryptSectors(got, src, 0)

	ref, err := xts.NewCipher(aes.NewCipher, key)
	require.NoError(t, err)
	want := make([]byte, 4096)
	ref.Encrypt(want, src[4096:], 8)
	assert.Equal(t, want, got[4096:], "second sector must use tweak 8")
	ref.Encrypt(want, src[4096:], 1)
	assert.NotEqual(t, want, got[4096:], "tweak 1 (iv_large_sectors) must not be used")

	assert.Equal(t, uint64(8), c.SectorOf(4096))
	assert.Equal(t, uint64(0), c.SectorOf(0))
	assert.Panics(t, func() { c.SectorOf(512) })
}

func TestNewErrors(t *testing.T) {
	good := make([]byte, 64)
	for i := range good {
		good[i] = byte(i)
	}
	equal := make([]byte, 64)
	copy(equal[32:], equal[:32])
	equal128 := bytes.Repeat([]byte{7}, 32)
	tests := []struct {
		name    string
		key     []byte
		size    int
		wantErr error
		wantMsg string
	}{
		{"nil key", nil, 512, ErrKeySize, "0 bytes"},
		{"16-byte key", good[:16], 512, ErrKeySize, "16 bytes"},
		{"48-byte key", good[:48], 512, ErrKeySize, "48 bytes"},
		{"65-byte key", append(bytes.Clone(good), 1), 512, ErrKeySize, "65 bytes"},
		{"equal halves 256", equal, 512, ErrWeakKey, "halves"},
		{"equal halves 128", equal128, 4096, ErrWeakKey, "halves"},
		{"sector 0", good, 0, ErrSectorSize, "0 bytes"},
		{"sector 256", good, 256, ErrSectorSize, "256 bytes"},
		{"sector 520", good, 520, ErrSectorSize, "520"},
		{"sector 8192", good, 8192, ErrSectorSize, "8192"},
		{"sector -512", good, -512, ErrSectorSize, "-512"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.key, tt.size)
			require.Error(t, err)
			assert.Nil(t, c, "no Cipher with an error")
			assert.True(t, errors.Is(err, tt.wantErr), "errors.Is(%v, %v)", err, tt.wantErr)
			assert.Contains(t, err.Error(), tt.wantMsg)
		})
	}
	for _, size := range []int{512, 1024, 2048, 4096} {
		for _, n := range []int{32, 64} {
			c, err := New(good[:n], size)
			require.NoError(t, err, "key %d, sector %d", n, size)
			assert.Equal(t, size, c.SectorSize())
		}
	}
}

func TestPreconditionsPanic(t *testing.T) {
	key := make([]byte, 64)
	for i := range key {
		key[i] = byte(i)
	}
	c512, err := New(key, 512)
	require.NoError(t, err)
	c4k, err := New(key, 4096)
	require.NoError(t, err)
	buf := make([]byte, 3*4096)
	tests := []struct {
		name string
		c    *Cipher
		dst  []byte
		src  []byte
		sec  uint64
		msg  string
	}{
		{"partial sector", c512, buf, buf[:500], 0, "not a whole number"},
		{"partial 4k sector", c4k, buf, buf[:4096+512], 0, "not a whole number"},
		{"short dst", c512, buf[:512], buf[4096 : 4096+1024], 0, "smaller than input"},
		{"misaligned first sector", c4k, buf, buf[:4096], 3, "not a multiple of 8"},
		{"inexact overlap", c512, buf[16 : 16+1024], buf[:1024], 0, "overlap"},
	}
	for _, tt := range tests {
		for _, dir := range []string{"encrypt", "decrypt"} {
			t.Run(tt.name+"/"+dir, func(t *testing.T) {
				defer func() {
					r := recover()
					require.NotNil(t, r, "want a panic")
					assert.Contains(t, fmt.Sprint(r), tt.msg)
					assert.True(t, strings.HasPrefix(fmt.Sprint(r), "sector: "))
				}()
				if dir == "encrypt" {
					tt.c.EncryptSectors(tt.dst, tt.src, tt.sec)
				} else {
					tt.c.DecryptSectors(tt.dst, tt.src, tt.sec)
				}
			})
		}
	}
	// Empty input is a whole number (zero) of sectors and does nothing.
	assert.NotPanics(t, func() { c512.EncryptSectors(nil, nil, 0) })
}

func TestNoAllocations(t *testing.T) {
	key := make([]byte, 64)
	for i := range key {
		key[i] = byte(i + 1)
	}
	for _, path := range Paths() {
		for _, size := range []int{512, 4096} {
			c, err := NewPath(key, size, path)
			require.NoError(t, err)
			buf := make([]byte, 4*size)
			out := make([]byte, 4*size)
			allocs := testing.AllocsPerRun(50, func() {
				c.EncryptSectors(buf, buf, 0)
				c.DecryptSectors(out, buf, 8)
			})
			assert.Zero(t, allocs, "%s sector=%d", path, size)
		}
	}
}

func fillRand(rng *rand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
}

// TestConcurrentUse shares one Cipher between goroutines (run it with -race).
func TestConcurrentUse(t *testing.T) {
	key := make([]byte, 64)
	for i := range key {
		key[i] = byte(3*i + 1)
	}
	c, err := New(key, 4096)
	require.NoError(t, err)
	src := make([]byte, 8*4096)
	fillRand(rand.New(rand.NewPCG(5, 6)), src)
	want := make([]byte, len(src))
	c.EncryptSectors(want, src, 64)

	const workers = 4
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			buf := make([]byte, len(src))
			for range 50 {
				c.EncryptSectors(buf, src, 64)
				if !bytes.Equal(buf, want) {
					errs <- fmt.Errorf("worker %d: encrypt differs", w)
					return
				}
				c.DecryptSectors(buf, buf, 64)
				if !bytes.Equal(buf, src) {
					errs <- fmt.Errorf("worker %d: decrypt differs", w)
					return
				}
			}
			errs <- nil
		}()
	}
	for range workers {
		require.NoError(t, <-errs)
	}
}

func TestNewPath(t *testing.T) {
	key := make([]byte, 64)
	for i := range key {
		key[i] = byte(i)
	}
	_, err := NewPath(key, 512, "quantum")
	assert.ErrorContains(t, err, "not available")
	c, err := New(key, 512)
	require.NoError(t, err)
	assert.Equal(t, Paths()[0], c.Path(), "New takes the fastest path")
	if c.Path() == PathVAES {
		w := c.wide[c.wideOff:]
		assert.Zero(t, uintptr(unsafe.Pointer(&w[0]))%64, "broadcast round keys start a cache line")
		assert.Equal(t, c.k1.enc[16:32], w[64+48:64+64], "round 1, lane 3")
		assert.Equal(t, c.k1.dec[32:48], w[wideKeys+128:wideKeys+144], "decryption round 2, lane 0")
		assert.Equal(t, c.k2.enc[:16], w[2*wideKeys+16:2*wideKeys+32], "tweak round 0, lane 1")
	}
	d := *c
	d.Wipe()
	assert.Equal(t, [len(c.wide)]byte{}, d.wide, "the copy's broadcast round keys are wiped")
	ref, err := New(key, 512)
	require.NoError(t, err)
	want, got := make([]byte, 4096), make([]byte, 4096)
	ref.EncryptSectors(want, make([]byte, 4096), 8)
	c.EncryptSectors(got, make([]byte, 4096), 8)
	assert.Equal(t, want, got, "wiping a copy leaves the original working")
	c.Wipe()
	for _, k := range [][]byte{c.k1.enc[:], c.k1.dec[:], c.k2.enc[:], c.k2.dec[:], c.wide[:]} {
		assert.Equal(t, make([]byte, len(k)), k, "round keys wiped")
	}
	assert.PanicsWithValue(t, "sector: Cipher used after Wipe", func() { c.EncryptSectors(make([]byte, 512), make([]byte, 512), 0) })
}
