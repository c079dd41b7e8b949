package volume_test

import (
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"crkvol/internal/tooltest"
	"crkvol/keyslot"
	"crkvol/volume"
)

// ofdLock read-locks byte off of path through a new open file description, as a QEMU
// process holding a permission does; the lock goes when the returned file is closed.
func ofdLock(t testing.TB, path string, off int64) *os.File {
	t.Helper()
	fh, err := os.Open(path)
	require.NoError(t, err)
	t.Cleanup(func() { fh.Close() })
	lk := unix.Flock_t{Type: unix.F_RDLCK, Whence: io.SeekStart, Start: off, Len: 1}
	require.NoError(t, unix.FcntlFlock(fh.Fd(), unix.F_OFD_SETLK, &lk))
	return fh
}

// ofdLocked reports whether another open file description holds a lock on byte off of
// path (QEMU's test: a write-lock probe with F_OFD_GETLK).
func ofdLocked(t testing.TB, path string, off int64) bool {
	t.Helper()
	fh, err := os.Open(path)
	require.NoError(t, err)
	defer fh.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart, Start: off, Len: 1}
	require.NoError(t, unix.FcntlFlock(fh.Fd(), unix.F_OFD_GETLK, &lk))
	return lk.Type != unix.F_UNLCK
}

// TestImageQemuLocks: import, verify and create-from-image refuse, without waiting, an image file
// on which another open holds QEMU's write or resize permission byte (101, 103), naming
// the lock; once it is gone they read it, and while they read it they hold QEMU's reader
// bytes (100, and 201 and 203: write and resize not shared), which make a QEMU writer
// refuse to open it.
func TestImageQemuLocks(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	pass := randomPass(t)
	img := filepath.Join(f.dir, "busy.qcow2")
	writeQcow2(t, img, guestContent(256<<10, 3), pass, 65536)

	writer := ofdLock(t, img, 101)
	_, err := f.mgr.ImportImage(f.ctx, img, volume.ImportOptions{Name: "busy", KeyID: f.key.ID, Passphrase: pass})
	require.ErrorIs(t, err, volume.ErrImageInUse)
	assert.Contains(t, err.Error(), img+" is in use by another process (QEMU's lock on write)")
	images, err := f.reg.Images()
	require.NoError(t, err)
	assert.Empty(t, images, "a refused import leaves no entry")
	require.NoError(t, writer.Close())

	_, err = f.mgr.ImportImage(f.ctx, img, volume.ImportOptions{Name: "busy", KeyID: f.key.ID, Passphrase: pass})
	require.NoError(t, err)
	for _, off := range []int64{100, 201, 203} {
		assert.False(t, ofdLocked(t, img, off), "byte %d is released after the import", off)
	}

	writer = ofdLock(t, img, 101)
	err = f.mgr.VerifyImage(f.ctx, "busy")
	require.ErrorIs(t, err, volume.ErrImageInUse)
	require.NoError(t, writer.Close())
	require.NoError(t, f.mgr.VerifyImage(f.ctx, "busy"))

	resizer := ofdLock(t, img, 103)
	vol := filepath.Join(f.dir, "v.img")
	_, err = f.mgr.CreateFromImage(f.ctx, vol, volume.FromImageOptions{Image: "busy", KeyID: f.key.ID})
	require.ErrorIs(t, err, volume.ErrImageInUse)
	assert.Contains(t, err.Error(), "(QEMU's lock on resize)")
	require.NoError(t, resizer.Close())

	// Another reader (QEMU's consistent read, byte 100) does not stop crkvol; while
	// crkvol copies, its bytes are held.
	ofdLock(t, img, 100)
	held := map[int64]bool{}
	_, err = f.mgr.CreateFromImage(f.ctx, vol, volume.FromImageOptions{Image: "busy", KeyID: f.key.ID, Progress: func(done, total int64) {
		if done == 0 {
			for _, off := range []int64{201, 203, 101} {
				held[off] = ofdLocked(t, img, off)
			}
		}
	}})
	require.NoError(t, err)
	assert.Equal(t, map[int64]bool{201: true, 203: true, 101: false}, held)
}

// TestCreateFromImageGeometry: the sector size and key size of a volume made from an image
// follow the options (defaults as before), bad ones are refused before anything is read,
// and a volume larger than the image reads as zeros beyond it; a zero-size image is refused
// at import.
func TestCreateFromImageGeometry(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	const size = 64 << 10
	pass := randomPass(t)
	img := filepath.Join(f.dir, "g.qcow2")
	content := guestContent(size, 8)
	writeQcow2(t, img, content, pass, 65536)
	_, err := f.mgr.ImportImage(f.ctx, img, volume.ImportOptions{Name: "g", KeyID: f.key.ID, Passphrase: pass})
	require.NoError(t, err)

	tests := []struct {
		name           string
		opts           volume.FromImageOptions
		err            string
		sector, keyLen int
		size           int64
	}{
		{name: "larger, 2048-byte sectors, 256-bit key: zeros beyond", opts: volume.FromImageOptions{Size: 3 * size, SectorSize: 2048, KeyBits: 256}, sector: 2048, keyLen: 32, size: 3 * size},
		{name: "bad sector size", opts: volume.FromImageOptions{SectorSize: 1000}, err: "sector size 1000"},
		{name: "bad key bits", opts: volume.FromImageOptions{KeyBits: 128}, err: "cipher key size 128 bits"},
		{name: "not whole sectors", opts: volume.FromImageOptions{Size: size + 512, SectorSize: 4096}, err: "not a whole number of 4096-byte sectors"},
		{name: "smaller", opts: volume.FromImageOptions{Size: size - 4096}, err: "smaller than the image's"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(f.dir, "v"+string(rune('a'+i))+".img")
			tt.opts.Image, tt.opts.KeyID = "g", f.key.ID
			info, err := f.mgr.CreateFromImage(f.ctx, path, tt.opts)
			if tt.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.err)
				assert.NoFileExists(t, path)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.sector, info.SectorSize)
			assert.Equal(t, tt.size, info.Size)
			fh, err := os.Open(path)
			require.NoError(t, err)
			defer fh.Close()
			kimg, err := keyslot.Open(fh, nil)
			require.NoError(t, err)
			assert.Equal(t, tt.keyLen, kimg.VolumeKeySize())
			got := f.volumeContent(t, path)
			assert.True(t, bytes.Equal(content, got[:size]), "the image's content")
			assert.True(t, bytes.Equal(make([]byte, tt.size-size), got[size:]), "zeros beyond the image")
		})
	}

	// A qcow2 image whose guest size is 0 (the header's size field) is refused at import.
	raw, err := os.ReadFile(img)
	require.NoError(t, err)
	binary.BigEndian.PutUint64(raw[24:], 0)
	empty := filepath.Join(f.dir, "empty.qcow2")
	require.NoError(t, os.WriteFile(empty, raw, 0o644))
	_, err = f.mgr.ImportImage(f.ctx, empty, volume.ImportOptions{Name: "empty", KeyID: f.key.ID, Passphrase: pass})
	require.ErrorIs(t, err, volume.ErrBadSize)
	assert.Contains(t, err.Error(), "guest size is 0")
}

// TestQemuIoHoldsImage: while qemu-io holds an encrypted image open for writing, import
// refuses it naming QEMU's write lock; while crkvol copies an image into a volume, qemu-io
// cannot open it for writing ("Failed to get "write" lock"). Long: it runs QEMU's tools.
func TestQemuIoHoldsImage(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("long test: runs qemu-img and qemu-io (CRKVOL_LONG_TESTS=1)")
	}
	tools := tooltest.Require(t, "qemu-io", "qemu-img")
	qemuIo, qimg := tools["qemu-io"], tools["qemu-img"]
	t.Parallel()
	f := newFixture(t)
	dir := f.dir
	raw := filepath.Join(dir, "src.raw")
	content := guestContent(1<<20, 11)
	require.NoError(t, os.WriteFile(raw, content, 0o644))
	passFile := filepath.Join(dir, "pass")
	require.NoError(t, os.WriteFile(passFile, []byte("qemu-lock-test"), 0o600))
	img := filepath.Join(dir, "busy.qcow2")
	qemuEncrypt(t, qimg, raw, img, passFile, "")
	secret := "secret,id=sec0,file=" + passFile

	// qemu-io holding the image read-write, waiting on its standard input.
	cmd := exec.Command(qemuIo, "--object", secret, "--image-opts", qcow2Opts(img))
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		stdin.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for !ofdLocked(t, img, 101) {
		select {
		case <-done:
			t.Fatalf("qemu-io exited: %s", out.String())
		default:
		}
		require.True(t, time.Now().Before(deadline), "qemu-io did not take its write lock: %s", out.String())
		time.Sleep(20 * time.Millisecond)
	}
	_, err = f.mgr.ImportImage(f.ctx, img, volume.ImportOptions{Name: "busy", KeyID: f.key.ID, Passphrase: []byte("qemu-lock-test")})
	require.ErrorIs(t, err, volume.ErrImageInUse)
	assert.Contains(t, err.Error(), "is in use by another process (QEMU's lock on write)")

	// qemu-io quits (end of input); the import then reads the image.
	stdin.Close()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("qemu-io did not quit")
	}
	_, err = f.mgr.ImportImage(f.ctx, img, volume.ImportOptions{Name: "busy", KeyID: f.key.ID, Passphrase: []byte("qemu-lock-test")})
	require.NoError(t, err)

	var qemuOut string
	var qemuErr error
	_, err = f.mgr.CreateFromImage(f.ctx, filepath.Join(dir, "v.img"), volume.FromImageOptions{Image: "busy", KeyID: f.key.ID, Progress: func(done, total int64) {
		if done == 0 {
			b, err := exec.Command(qemuIo, "--object", secret, "--image-opts", qcow2Opts(img), "-c", "write 0 512").CombinedOutput()
			qemuOut, qemuErr = string(b), err
		}
	}})
	require.NoError(t, err)
	require.Error(t, qemuErr, "qemu-io must not write the image crkvol reads: %s", qemuOut)
	assert.Contains(t, qemuOut, `Failed to get "write" lock`)
	assert.True(t, bytes.Equal(content, f.volumeContent(t, filepath.Join(dir, "v.img"))))
	// And once crkvol is done, qemu-io may write it.
	b, err := exec.Command(qemuIo, "--object", secret, "--image-opts", qcow2Opts(img), "-c", "write 0 512").CombinedOutput()
	require.NoError(t, err, "%s", b)
}
