package volume

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"crkvol/keyslot"
)

// TestPooledBuffersHoldNoPlaintext checks that the staging buffers a partial-sector read or
// a write returns to the pool hold no plaintext (a read's come back cleared, a write's hold
// only the ciphertext it wrote): it drains the pool after each operation
// and looks for the data in every buffer recovered (a buffer the pool dropped, as sync.Pool
// may, is retried with another operation).
func TestPooledBuffersHoldNoPlaintext(t *testing.T) {
	const ss, size = 4096, 1<<20 + 64<<10
	path := filepath.Join(t.TempDir(), "img")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	require.NoError(t, err)
	require.NoError(t, f.Truncate(size))
	img, key, err := keyslot.Format(f, size, []byte("pooled"), keyslot.FormatOptions{
		SectorSize: ss, KeyslotsSize: 512 << 10, DataOffset: 1 << 20, KDF: keyslot.PBKDF2("sha256", 1000),
	})
	require.NoError(t, err)
	v, err := newVolume(f, img, key, OpenOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { v.Close() })

	secret := bytes.Repeat([]byte("plaintext! "), 3*ss/11)
	for _, tc := range []struct {
		name string
		op   func() error
		zero bool // the buffer comes back all zero (a write's holds ciphertext)
	}{
		{"write", func() error { _, err := v.WriteAt(secret, 100); return err }, false},
		{"partial read", func() error { _, err := v.ReadAt(make([]byte, len(secret)), 100); return err }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			found := 0
			for attempt := 0; attempt < 50 && found == 0; attempt++ {
				require.NoError(t, tc.op())
				// Drain the pool without making new buffers.
				newBuf := v.bufs.New
				v.bufs.New = nil
				t.Cleanup(func() { v.bufs.New = newBuf })
				for {
					bp, ok := v.bufs.Get().(*[]byte)
					if !ok {
						break
					}
					found++
					require.False(t, bytes.Contains(*bp, []byte("plaintext! plaintext!")), "pooled buffer holds plaintext")
					if tc.zero {
						require.Equal(t, make([]byte, len(*bp)), *bp, "pooled buffer not cleared")
					}
				}
				v.bufs.New = newBuf
			}
			require.Positive(t, found, "no buffer came back from the pool")
		})
	}
}
