package volume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"crkvol/keyslot"
	"crkvol/sector"
)

// Errors of volume I/O.
var (
	// ErrClosed means the volume has been closed.
	ErrClosed = errors.New("volume is closed")
	// ErrOutOfRange means a write or a negative offset falls outside the volume.
	ErrOutOfRange = errors.New("offset out of range")
	// ErrUnsupportedImage means the image's data segment is not one this package serves.
	ErrUnsupportedImage = errors.New("unsupported volume image")
	// ErrInUse means another open of the image holds a conflicting lock on it: it
	// is attached, or open for writing, elsewhere.
	ErrInUse = errors.New("volume is in use (attached or open for writing elsewhere)")
	// ErrReadOnly means a write to a volume opened read-only.
	ErrReadOnly = errors.New("volume is open read-only")
	// ErrReadOnlyImage means an image file that can be read but not written (no write
	// permission, or a read-only file system): what only reads it (describing, checking,
	// a read-only open) works; what writes it fails with this error.
	ErrReadOnlyImage = errors.New("the image file cannot be written")
)

// OpenOptions tune how a volume is opened.
type OpenOptions struct {
	// ReadOnly refuses writes (ErrReadOnly) and locks the data area shared, so that several
	// readers can open the volume at once while no writer can.
	ReadOnly bool
	// Exclusive makes the open the only exclusive one of the image, as an attachment is: it
	// also takes the image's attachment lock, which one open at a time holds, so a second
	// exclusive open fails with ErrInUse. The data area stays locked as ReadOnly says:
	// shared for a read-only attachment (readers still read, writers are refused), exclusive
	// for a read-write open. It needs an image file it can write (the lock is a write lock).
	Exclusive bool
	// wiping is set by Manager.Wipe, the one writer allowed while a wipe is incomplete.
	wiping bool
	// resizing is set by Manager.Resize: the open also takes QEMU's resize permission, which
	// a QEMU serving the file (even read-only) does not share.
	resizing bool
	// fileReadOnly is set by OpenWith when the image file could only be opened read-only:
	// no lazy rewrap is attempted then.
	fileReadOnly bool
}

const (
	lockStripes = 1024    // per-sector locks, striped
	chunkSize   = 1 << 20 // bytes encrypted per buffer
	// stagedRead is the longest read (in whole sectors) made in one call through a staging
	// buffer when its ends are not on sector boundaries; a longer one reads its partial end
	// sectors apart, to spare copying the rest.
	stagedRead = 64 << 10
)

// Volume is an attached (unlocked) volume: its data reads and writes through aes-xts-plain64
// at any offset and length. It implements io.ReaderAt and io.WriterAt and is safe for use by
// many goroutines at once; writes that share a sector are serialised so a sector is never torn.
// The master key lives only in memory and is cleared by Close.
type Volume struct {
	f       *os.File
	img     *keyslot.Image
	c       *Parallel // the cipher, with large requests spread over the cores
	key     []byte
	uuid    string
	dataOff int64
	size    int64
	ss      int64
	ro      bool
	// copyOf is the registered path of the volume when this image is an unregistered copy
	// of it (see [Volume.CopyOf]); empty otherwise.
	copyOf string

	mu     sync.RWMutex // I/O holds it shared, Close exclusively
	closed bool
	locks  [lockStripes]sync.RWMutex
	// bufs recycles the staging buffers of partial-sector reads and of writes. A buffer goes
	// back cleared of any plaintext it held (ciphertext needs no clearing).
	bufs sync.Pool
}

// newVolume serves the data segment of an unlocked image, whose data area the caller has
// locked (lockImage). It takes ownership of f and key when it succeeds; when it fails, the
// caller still owns them (and clears key). The checks of the data segment are checkData's.
func newVolume(f *os.File, img *keyslot.Image, key []byte, opts OpenOptions) (_ *Volume, err error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size, err := checkData(img, st.Size())
	if err != nil {
		return nil, err
	}
	seg := img.Segment()
	ss := int64(seg.SectorSize)
	c, err := sector.New(key, seg.SectorSize)
	if err != nil {
		return nil, fmt.Errorf("volume: %w", err)
	}
	v := &Volume{f: f, img: img, c: NewParallel(c, 0, 0), key: key, uuid: img.UUID(), dataOff: int64(seg.Offset), size: size, ss: ss, ro: opts.ReadOnly}
	v.bufs.New = func() any { b := make([]byte, chunkSize+2*ss); return &b }
	return v, nil
}

// Size returns the data size in bytes.
func (v *Volume) Size() int64 { return v.size }

// SectorSize returns the encryption sector size in bytes.
func (v *Volume) SectorSize() int { return int(v.ss) }

// UUID returns the LUKS2 header UUID.
func (v *Volume) UUID() string { return v.uuid }

// CRN returns the volume's CRN.
func (v *Volume) CRN() string { return CRN(v.uuid) }

// Path returns the image file's path.
func (v *Volume) Path() string { return v.f.Name() }

// ReadAt reads len(p) bytes of data from offset off. Past the end it returns io.EOF, as
// io.ReaderAt requires.
func (v *Volume) ReadAt(p []byte, off int64) (int, error) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if v.closed {
		return 0, ErrClosed
	}
	if off < 0 {
		return 0, fmt.Errorf("volume: read at %d: %w", off, ErrOutOfRange)
	}
	if off >= v.size {
		return 0, io.EOF
	}
	want := len(p)
	if int64(want) > v.size-off {
		p = p[:v.size-off]
	}
	if len(p) == 0 {
		return 0, nil
	}
	lk := v.lockSectors(off/v.ss, (off+int64(len(p))-1)/v.ss, false)
	defer lk.unlock()
	// A short request is read in one call; a long one whose ends are not on sector
	// boundaries has its partial first and last sectors read apart, so that its whole
	// sectors go straight to p without passing through a staging buffer.
	short := roundUp(off+int64(len(p)), v.ss)-(off-off%v.ss) <= stagedRead
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		start := pos - pos%v.ss
		rest := int64(len(p) - done)
		if whole := rest / v.ss * v.ss; pos == start && whole > 0 && (whole == rest || !short) {
			// Whole sectors: read and decrypt in the caller's buffer.
			n, err := v.c.ReadDecrypt(v.f, p[done:done+int(whole)], v.dataOff+start, uint64(start)/sector.IVUnit)
			done += n
			if err != nil {
				return done, fmt.Errorf("volume: reading %d bytes at %d: %w", whole-int64(n), pos+int64(n), err)
			}
			continue
		}
		n := len(p) - done
		if !short {
			n = min(n, int(v.ss-(pos-start))) // the partial sector at either end
		}
		end := roundUp(pos+int64(n), v.ss)
		bp := v.bufs.Get().(*[]byte)
		buf := (*bp)[:end-start]
		err := v.readSectors(buf, start)
		if err == nil {
			copy(p[done:done+n], buf[pos-start:])
		}
		clear(buf) // decrypted sectors
		v.bufs.Put(bp)
		if err != nil {
			return done, err
		}
		done += n
	}
	if done < want {
		return done, io.EOF
	}
	return done, nil
}

// readSectors reads and decrypts whole sectors starting at data offset start.
func (v *Volume) readSectors(buf []byte, start int64) error {
	if _, err := v.c.ReadDecrypt(v.f, buf, v.dataOff+start, uint64(start)/sector.IVUnit); err != nil {
		return fmt.Errorf("volume: reading %d bytes at %d: %w", len(buf), start, err)
	}
	return nil
}

// WriteAt writes len(p) bytes at offset off. Writes must lie within the volume; partial
// sectors are read, merged and rewritten under the sector's lock.
func (v *Volume) WriteAt(p []byte, off int64) (int, error) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if v.closed {
		return 0, ErrClosed
	}
	if v.ro {
		return 0, fmt.Errorf("volume: write at %d: %w", off, ErrReadOnly)
	}
	if off < 0 || off > v.size || int64(len(p)) > v.size-off {
		return 0, fmt.Errorf("volume: write of %d bytes at %d past the %d-byte volume: %w", len(p), off, v.size, ErrOutOfRange)
	}
	if len(p) == 0 {
		return 0, nil
	}
	lk := v.lockSectors(off/v.ss, (off+int64(len(p))-1)/v.ss, true)
	defer lk.unlock()

	bp := v.bufs.Get().(*[]byte)
	plain := 0 // leading bytes of *bp that may hold plaintext
	defer func() {
		clear((*bp)[:plain])
		v.bufs.Put(bp)
	}()
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		start := pos - pos%v.ss
		n := min(len(p)-done, chunkSize-int(pos-start))
		end := roundUp(pos+int64(n), v.ss)
		buf := (*bp)[:end-start]
		src := p[done : done+n]
		if pos != start || pos+int64(n) != end {
			// Partial first or last sector: start from the current contents, merge p in
			// and encrypt in place.
			plain = len(buf)
			if pos != start {
				if err := v.readSectors(buf[:v.ss], start); err != nil {
					return done, err
				}
			}
			if last := end - v.ss; pos+int64(n) != end && (last != start || pos == start) {
				if err := v.readSectors(buf[last-start:], last); err != nil {
					return done, err
				}
			}
			copy(buf[pos-start:], src)
			src = buf
		} // else whole sectors: encrypted from p straight into buf, which never holds plaintext
		// Encrypted on the calling core, not split over the cores: the chunks encrypted
		// elsewhere reach the write's copy into the page cache through another core's
		// cache, and on the 2-core development machine that cost more than the split saved
		// (best of 100 interleaved rounds of 1 MiB writes, the split 5-10% slower; split
		// writes of each chunk by its own core no faster, they wait for each other in the
		// file system). A helper is better left to a concurrent request.
		v.c.Cipher().EncryptSectors(buf, src, uint64(start)/sector.IVUnit)
		plain = 0 // encrypted
		if _, err := v.f.WriteAt(buf, v.dataOff+start); err != nil {
			return done, fmt.Errorf("volume: writing %d bytes at %d: %w", len(buf), start, err)
		}
		done += n
	}
	return done, nil
}

// lockSectors locks the stripes of sectors first..last in ascending stripe order: exclusively
// for a write, shared for a read (so a read never sees a sector half rewritten). The caller
// releases them with the result's unlock.
func (v *Volume) lockSectors(first, last int64, write bool) sectorLocks {
	l := sectorLocks{v: v, runs: 1, write: write}
	if last-first+1 >= lockStripes {
		l.lo[0] = [2]int64{0, lockStripes - 1}
	} else {
		a, b := first%lockStripes, last%lockStripes
		if a <= b {
			l.lo[0] = [2]int64{a, b}
		} else {
			l.lo[0], l.lo[1] = [2]int64{0, b}, [2]int64{a, lockStripes - 1}
			l.runs = 2
		}
	}
	for r := 0; r < l.runs; r++ {
		for i := l.lo[r][0]; i <= l.lo[r][1]; i++ {
			if write {
				v.locks[i].Lock()
			} else {
				v.locks[i].RLock()
			}
		}
	}
	return l
}

// sectorLocks is what lockSectors locked: up to two ascending runs of stripe indices. A value,
// not a closure, so that locking allocates nothing.
type sectorLocks struct {
	v     *Volume
	lo    [2][2]int64
	runs  int
	write bool
}

// unlock releases the stripes.
func (l sectorLocks) unlock() {
	for r := 0; r < l.runs; r++ {
		for i := l.lo[r][0]; i <= l.lo[r][1]; i++ {
			if l.write {
				l.v.locks[i].Unlock()
			} else {
				l.v.locks[i].RUnlock()
			}
		}
	}
}

// Sync flushes written data to stable storage.
func (v *Volume) Sync() error {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if v.closed {
		return ErrClosed
	}
	return v.f.Sync()
}

// Close clears the master key and closes the image. Later calls return ErrClosed.
func (v *Volume) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return ErrClosed
	}
	v.closed = true
	clear(v.key)
	v.c.Close()
	v.c.Cipher().Wipe()
	v.c = nil // drop the crypto/aes key schedules too (they cannot be wiped)
	return closeImage(v.f)
}

// ReadOnly reports whether the volume was opened read-only.
func (v *Volume) ReadOnly() bool { return v.ro }

// InUse reports whether an image is held by another open that excludes writers and other
// attachments: the volume is attached (read-write or read-only), or open for writing.
// Shared (read-only) opens such as volume read do not count.
func InUse(path string) (bool, error) {
	return InUseContext(context.Background(), path)
}

// InUseContext is InUse with ctx bounding the wait for the header lock.
func InUseContext(ctx context.Context, path string) (bool, error) {
	f, img, err := readImage(ctx, path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	// Ask (F_OFD_GETLK) rather than take a lock: a probe must never make a concurrent
	// attach or writer fail. A writer holds the data area exclusively; an attachment holds
	// the attachment byte exclusively.
	for _, r := range []func(*keyslot.Image) (int64, int64){attachLock, dataLock} {
		start, n := r(img)
		lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart, Start: start, Len: n}
		if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
			return false, fmt.Errorf("volume: probing the lock of %s: %w", path, err)
		}
		if lk.Type == unix.F_WRLCK {
			return true, nil
		}
	}
	return false, nil
}

// dataLock is the range lockImage locks for the data area: from the data offset to the end
// of the file (length 0), whatever the file's size becomes.
func dataLock(img *keyslot.Image) (start, n int64) { return int64(img.Segment().Offset), 0 }

// attachLock is the byte an exclusive open (an attachment) write-locks besides the data
// area: the last byte before the data, in the keyslots area's padding, so that it overlaps
// neither the data-area lock nor QEMU's lock bytes (100-104, 200-204).
func attachLock(img *keyslot.Image) (start, n int64) { return int64(img.Segment().Offset) - 1, 1 }

// lockImage takes open-file-description locks on the image: on its data area, from the data
// offset to the end of the file, exclusive (a write lock) for a read-write open and shared
// for a read-only one; and for an exclusive open (opts.Exclusive, an attachment) a write
// lock on the attachment byte (attachLock) as well. So a read-only attachment lets volume
// read read while it refuses writers and other attachments, and a read-write one refuses
// all. It also takes QEMU's lock bytes, a resizer's, a writer's or a reader's
// (qemuResizerLocks, qemuWriterLocks, qemuReaderLocks), so that QEMU and crkvol refuse each
// other's conflicting opens. It fails
// at once with ErrInUse on a conflict (also matching ErrImageInUse for QEMU's), holding
// nothing. The locks last until
// closeImage releases them (or the process dies). The header commits of keyslot lock the
// whole file with flock, which never conflicts with them: rotation still rewraps an
// attached volume, read-write or read-only.
func lockImage(f *os.File, img *keyslot.Image, opts OpenOptions) error {
	type lock struct {
		typ      int16
		start, n int64
	}
	var locks []lock
	if opts.Exclusive {
		start, n := attachLock(img)
		locks = append(locks, lock{unix.F_WRLCK, start, n})
	}
	start, n := dataLock(img)
	data := lock{unix.F_RDLCK, start, n}
	if !opts.ReadOnly {
		data.typ = unix.F_WRLCK
	}
	locks = append(locks, data)
	for _, l := range locks {
		lk := unix.Flock_t{Type: l.typ, Whence: io.SeekStart, Start: l.start, Len: l.n}
		err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk)
		if err == nil {
			continue
		}
		unlockImage(f)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			return fmt.Errorf("volume: %s: %w", f.Name(), ErrInUse)
		}
		return fmt.Errorf("volume: locking the data area of %s: %w", f.Name(), err)
	}
	// QEMU's own lock bytes too, so that QEMU and crkvol see each other: qemu-img, qemu-io
	// or a VM opening the image for writing while crkvol reads it, or at all while crkvol may
	// write it, is refused, and crkvol refuses an image QEMU holds likewise.
	qlocks, qconflicts := qemuReaderLocks, qemuConflicts
	switch {
	case opts.resizing:
		qlocks, qconflicts = qemuResizerLocks, qemuResizerConflicts
	case !opts.ReadOnly:
		qlocks, qconflicts = qemuWriterLocks, qemuWriterConflicts
	}
	if _, err := qemuLock(f, f.Name(), qlocks, qconflicts); err != nil {
		unlockImage(f) // QEMU's bytes as well: one unlock of the whole file
		if errors.Is(err, ErrImageInUse) {
			return qemuHolds{err}
		}
		return fmt.Errorf("volume: %w", err)
	}
	return nil
}

// qemuHolds is lockImage's error when another process holds QEMU's lock bytes in a way that
// conflicts with the open: it says so (not that the volume is attached), and matches both
// ErrInUse, as every conflicting open does, and ErrImageInUse.
type qemuHolds struct{ err error }

func (e qemuHolds) Error() string {
	return "volume: " + e.err.Error() + ": a QEMU program (qemu-nbd, qemu-io, a VM) has the file open"
}

// Is makes the error match ErrInUse.
func (e qemuHolds) Is(target error) bool { return target == ErrInUse }

// Unwrap returns the QEMU lock error, which matches ErrImageInUse.
func (e qemuHolds) Unwrap() error { return e.err }

// unlockImage releases every lockImage lock of f.
func unlockImage(f *os.File) {
	lk := unix.Flock_t{Type: unix.F_UNLCK, Whence: io.SeekStart}
	_ = unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk) // no lock to release is no error
}

// closeImage releases the lockImage locks of f, then closes f. Closing alone is not enough:
// the lock belongs to the open file description, and a child process that another goroutine
// of this process forked holds a copy of every description until it execs (close-on-exec
// closes them only then), so for that moment the image would stay locked after Close and a
// following open would fail with ErrInUse. Unlocking through f releases the description's
// lock whoever else holds a copy.
func closeImage(f *os.File) error {
	unlockImage(f) // close anyway
	return f.Close()
}

func roundUp(n, m int64) int64 { return (n + m - 1) / m * m }
