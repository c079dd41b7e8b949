package keyslot

import (
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
)

// metadataText returns the metadata an image on dev opens with.
func metadataText(t *testing.T, dev Device) string {
	t.Helper()
	img, err := Open(dev, nil)
	require.NoError(t, err)
	return fmt.Sprintf("seqid %d %s", img.SeqID(), img.snapshot().meta.marshal())
}

// seeded returns Options whose random source is deterministic, so that a clean run and a
// crashed run of the same update would write identical bytes.
func seeded() *Options {
	return &Options{Rand: mrand.NewChaCha8([32]byte{1, 2, 3})}
}

// TestCrashAtEveryWrite runs metadata updates on a device that dies after N writes, for every
// N, with the last write either lost or torn, and checks the image then opens with either the
// old or the new metadata and unlocks. With CRKVOL_LONG_TESTS=1 every crash point is tried
// with every tear (nothing, 1, 100 or 4000 bytes written); otherwise with one of them, in turn
// (nothing written, 1, 100, 4000, nothing written, ...), and the clean run after the last write.
func TestCrashAtEveryWrite(t *testing.T) {
	t.Parallel()
	tears := []int{1, 100, 4000}
	base, img, vk := newMemImage(t, "first")
	_, err := img.AddToken(AnyToken, []byte(`{"type":"crkvol-crk","keyslots":["0"],"ciphertext":"djE="}`))
	require.NoError(t, err)
	_, err = img.AddKeyslot(vk, []byte("second"), SlotOptions{ID: 1, KDF: testKDF})
	require.NoError(t, err)

	ops := []struct {
		name string
		pass string // opens both the old and the new state
		fn   func(img *Image) error
	}{
		{"add token", "first", func(img *Image) error {
			_, err := img.AddToken(AnyToken, []byte(`{"type":"other","keyslots":[]}`))
			return err
		}},
		{"replace token", "first", func(img *Image) error {
			return img.ReplaceToken(0, []byte(`{"type":"crkvol-crk","keyslots":["0"],"ciphertext":"djI="}`))
		}},
		{"remove token", "first", func(img *Image) error { return img.RemoveToken(0) }},
		{"add keyslot", "first", func(img *Image) error {
			_, err := img.AddKeyslot(vk, []byte("third"), SlotOptions{ID: AnyKeyslot, KDF: testKDF})
			return err
		}},
		{"remove keyslot", "first", func(img *Image) error { return img.RemoveKeyslot(1) }},
		{"repair", "first", func(img *Image) error { return img.commitAfterLoad() }},
	}
	// The image an update starts from: healthy, or with one copy damaged or stale (as a
	// crash or bit rot leaves it). Each opens with metadata oldText.
	starts := map[string]*memDevice{"healthy": base}
	for _, which := range []string{"primary", "secondary"} {
		d := base.clone()
		off := 0
		if which == "secondary" {
			off = DefaultMetadataSize
		}
		d.buf[off+offCsum] ^= 1
		starts[which+" corrupt"] = d
	}
	stale := base.clone()
	simg, err := Open(&crashDevice{dev: stale, allow: 3}, nil) // the primary's three writes land
	require.NoError(t, err)
	_, err = simg.AddToken(AnyToken, []byte(`{"type":"stale-maker","keyslots":[]}`))
	require.ErrorIs(t, err, errCrash)
	starts["secondary stale"] = stale

	for startName, start := range starts {
		for _, op := range ops {
			t.Run(startName+"/"+op.name, func(t *testing.T) {
				t.Parallel()
				base := start
				oldText := metadataText(t, base)

				// Count the writes of a clean run, and record the new metadata.
				clean := &countingDevice{memDevice: base.clone()}
				cimg, err := Open(clean, seeded())
				require.NoError(t, err)
				require.NoError(t, op.fn(cimg))
				newText := metadataText(t, clean.memDevice)
				require.NotEqual(t, oldText, newText)
				n := clean.writes
				require.GreaterOrEqual(t, n, 6, "two header copies take three writes each")

				outcomes := map[string]int{}
				for allow := 0; allow <= n; allow++ {
					torns := append([]int{0}, tears...)
					if !tooltest.Long() {
						i := allow % len(torns)
						torns = torns[i : i+1]
						if allow == n {
							torns = []int{0}
						}
					}
					for _, torn := range torns {
						if allow == n && torn > 0 {
							continue
						}
						name := fmt.Sprintf("crash after %d of %d writes, torn %d", allow, n, torn)
						dev := base.clone()
						crash := &crashDevice{dev: dev, allow: allow, torn: torn}
						cimg, err := Open(crash, seeded())
						require.NoError(t, err, name)
						err = op.fn(cimg)
						if allow < n {
							require.ErrorIs(t, err, errCrash, name)
						} else {
							require.NoError(t, err, name)
						}

						got := metadataText(t, dev)
						switch got {
						case oldText:
							outcomes["old"]++
						case newText:
							outcomes["new"]++
						default:
							t.Fatalf("%s: image opens with neither the old nor the new metadata:\n%s", name, got)
						}
						after, err := Open(dev, nil)
						require.NoError(t, err, name)
						key, _, err := after.Unlock([]byte(op.pass), AnyKeyslot)
						require.NoError(t, err, name)
						require.Equal(t, vk, key, name)

						// The next update repairs whatever copy the crash left behind.
						_, err = after.AddToken(AnyToken, []byte(`{"type":"after-crash","keyslots":[]}`))
						require.NoError(t, err, name)
						again, err := Open(dev, nil)
						require.NoError(t, err, name)
						require.True(t, again.Health().OK(), "%s: %+v", name, again.Health())
					}
				}
				// Crashes before the primary is complete keep the old state; after, the new.
				assert.Positive(t, outcomes["old"])
				assert.Positive(t, outcomes["new"])
				t.Logf("%d writes; outcomes %v", n, outcomes)
			})
		}
	}
}

// commitAfterLoad rewrites the current metadata with the next seqid (what Repair does for a
// damaged image), unconditionally.
func (img *Image) commitAfterLoad() error {
	return img.update(func(*state, *metadata) error { return nil })
}

// corruption damages one header copy of a 16 KiB-metadata image in place.
type corruption struct {
	name string
	fn   func(buf []byte, off int)
}

var corruptions = []corruption{
	{"magic", func(b []byte, off int) { b[off] ^= 0xff }},
	{"version", func(b []byte, off int) { b[off+offVersion+1] = 3 }},
	{"seqid", func(b []byte, off int) { b[off+offSeqID+7] ^= 1 }},
	{"header size", func(b []byte, off int) { b[off+offHdrSize+5] ^= 0x10 }},
	{"checksum", func(b []byte, off int) { b[off+offCsum] ^= 1 }},
	{"json area", func(b []byte, off int) { b[off+binHeaderSize+10] ^= 0x20 }},
	{"json padding", func(b []byte, off int) { b[off+DefaultMetadataSize-1] = 'x' }},
	{"zeroed", func(b []byte, off int) { clear(b[off : off+DefaultMetadataSize]) }},
}

// TestCorruptEachCopy damages each copy in turn: the image opens from the other copy, reports
// the damage, unlocks, and the next update (or Repair) restores both copies.
func TestCorruptEachCopy(t *testing.T) {
	t.Parallel()
	base, _, vk := newMemImage(t, "pass")
	for _, which := range []string{"primary", "secondary"} {
		off := 0
		if which == "secondary" {
			off = DefaultMetadataSize
		}
		for _, c := range corruptions {
			for _, fix := range []string{"update", "repair"} {
				t.Run(which+"/"+c.name+"/"+fix, func(t *testing.T) {
					dev := base.clone()
					c.fn(dev.buf, off)
					img, err := Open(dev, nil)
					require.NoError(t, err)
					h := img.Health()
					require.False(t, h.OK())
					bad, good := h.Primary, h.Secondary
					if which == "secondary" {
						bad, good = good, bad
					}
					assert.ErrorIs(t, bad.Err, ErrHeaderCorrupt)
					assert.NoError(t, good.Err)
					key, _, err := img.Unlock([]byte("pass"), AnyKeyslot)
					require.NoError(t, err)
					require.Equal(t, vk, key)

					if fix == "update" {
						_, err = img.AddToken(AnyToken, []byte(`{"type":"t","keyslots":[]}`))
					} else {
						err = img.Repair()
					}
					require.NoError(t, err)
					again, err := Open(dev, nil)
					require.NoError(t, err)
					require.True(t, again.Health().OK(), "%+v", again.Health())
				})
			}
		}
	}

	t.Run("both", func(t *testing.T) {
		dev := base.clone()
		corruptions[0].fn(dev.buf, 0)
		corruptions[4].fn(dev.buf, DefaultMetadataSize)
		_, err := Open(dev, nil)
		require.ErrorIs(t, err, ErrNotLUKS2)
		assert.ErrorIs(t, err, ErrHeaderCorrupt)
		assert.Contains(t, err.Error(), "primary")
		assert.Contains(t, err.Error(), "secondary")
	})
	t.Run("not luks", func(t *testing.T) {
		_, err := Open(newMemDevice(smallSize), nil)
		require.ErrorIs(t, err, ErrNotLUKS2)
		_, err = Open(newMemDevice(100), nil)
		require.ErrorIs(t, err, ErrNotLUKS2)
	})
	t.Run("repair is a no-op on a healthy image", func(t *testing.T) {
		dev := base.clone()
		img, err := Open(dev, nil)
		require.NoError(t, err)
		seq := img.SeqID()
		require.NoError(t, img.Repair())
		assert.Equal(t, seq, img.SeqID())
	})
}

// TestSecondaryFoundByProbe: with the primary destroyed, a secondary of a larger metadata
// size is found by probing.
func TestSecondaryFoundByProbe(t *testing.T) {
	t.Parallel()
	dev := newMemDevice(4 << 20)
	opts := smallFormat()
	opts.MetadataSize = 256 << 10
	img, vk, err := Format(dev, 4<<20, []byte("probe"), opts)
	require.NoError(t, err)
	uuid := img.UUID()
	clear(dev.buf[:binHeaderSize])
	img2, err := Open(dev, nil)
	require.NoError(t, err)
	assert.Equal(t, uuid, img2.UUID())
	assert.Equal(t, uint64(256<<10), img2.Health().Secondary.Offset)
	key, _, err := img2.Unlock([]byte("probe"), AnyKeyslot)
	require.NoError(t, err)
	assert.Equal(t, vk, key)
}

// TestConcurrentProcesses: two independent opens of one image file (as two processes would
// have) add tokens concurrently; flock serialises them and no update is lost.
func TestConcurrentProcesses(t *testing.T) {
	t.Parallel()
	path, _, _ := newFileImage(t, "locks", smallFormat())
	const perWriter = 8
	var wg sync.WaitGroup
	errs := make(chan error, 2*perWriter)
	for w := range 2 {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		require.NoError(t, err)
		defer f.Close()
		img, err := Open(f, nil)
		require.NoError(t, err)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				tok := fmt.Sprintf(`{"type":"writer-%d","keyslots":[],"i":%d}`, w, i)
				if _, err := img.AddToken(AnyToken, []byte(tok)); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	img, err := Open(f, nil)
	require.NoError(t, err)
	assert.Len(t, img.Tokens(), 2*perWriter)
	assert.True(t, img.Health().OK())
	assert.Equal(t, uint64(1+2*perWriter), img.SeqID())
}

// TestConcurrentUseOfOneImage shares an Image between goroutines that unlock, read and update.
func TestConcurrentUseOfOneImage(t *testing.T) {
	t.Parallel()
	_, img, vk := newMemImage(t, "shared")
	id, err := img.AddToken(AnyToken, []byte(`{"type":"counter","keyslots":["0"],"n":0}`))
	require.NoError(t, err)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 5 {
				if w%2 == 0 {
					key, _, err := img.Unlock([]byte("shared"), AnyKeyslot)
					if err == nil && string(key) != string(vk) {
						err = errors.New("wrong key")
					}
					if err != nil {
						errs <- err
						return
					}
					_ = img.Tokens()
				} else if err := img.UpdateToken(id, func(cur json.RawMessage) ([]byte, error) { return cur, nil }); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	assert.Equal(t, uint64(2+10), img.SeqID())
}
