package volume

import (
	"errors"
	"fmt"
	"os"
	"slices"
)

// ErrImageInUse means another process (QEMU, qemu-img, qemu-io, ...) holds an image file
// with QEMU's lock saying it may change the file (write or resize it) or that it does not let
// others read it consistently: crkvol does not read such a file, which could change under
// it. The error names the file and the lock found.
var ErrImageInUse = errors.New("in use by another process")

// QEMU's image locking (block/file-posix.c, "locking" option, on by default) uses open file
// description (OFD) locks on single bytes of the image file: for each block-layer
// permission bit i (include/block/block-common.h: consistent read 0x1, write 0x2, write
// unchanged 0x4, resize 0x8; 0x10 was graph-mod, no longer used), byte qemuLockPermBase+i is
// read-locked while the process holds the permission, and byte qemuLockSharedBase+i while
// it does NOT share it with others. Before and after taking its bytes, a process tests with
// a write-lock probe that nobody holds the bytes that conflict with it.
const (
	qemuLockPermBase   = 100
	qemuLockSharedBase = 200

	qemuPermConsistentRead = 0 // bit index of BLK_PERM_CONSISTENT_READ (0x1)
	qemuPermWrite          = 1 // BLK_PERM_WRITE (0x2)
	qemuPermResize         = 3 // BLK_PERM_RESIZE (0x8)
)

// qemuReaderLocks are the bytes crkvol read-locks while it reads an image file, as QEMU
// does for a user that needs a consistent read and shares neither write nor resize: a QEMU
// that then opens the file for writing (or resizing) finds them and refuses ("Failed to get
// "write" lock").
var qemuReaderLocks = []int64{
	qemuLockPermBase + qemuPermConsistentRead,
	qemuLockSharedBase + qemuPermWrite,
	qemuLockSharedBase + qemuPermResize,
}

// qemuConflict is a QEMU lock byte that must be unlocked by everyone else, and what a
// process holding it holds or keeps to itself.
type qemuConflict struct {
	off  int64
	what string
}

// qemuConflicts are the bytes that must be unlocked by everyone else for crkvol to read:
// somebody holding write or resize permission, or not sharing consistent reads.
var qemuConflicts = []qemuConflict{
	{qemuLockPermBase + qemuPermWrite, "write"},
	{qemuLockPermBase + qemuPermResize, "resize"},
	{qemuLockSharedBase + qemuPermConsistentRead, "consistent read, which it does not share"},
}

// qemuWriterLocks are the bytes crkvol read-locks while it may write a volume's image file
// (a read-write open or attachment), as QEMU does for a writable disk: it holds consistent
// read and write, and shares neither write nor resize. A QEMU that then opens the file for
// writing or resizing (qemu-io, qemu-nbd, a VM, qemu-img resize) refuses ("Failed to get
// "write" lock"); its read-only opens, which share write, still read it.
var qemuWriterLocks = []int64{
	qemuLockPermBase + qemuPermConsistentRead,
	qemuLockPermBase + qemuPermWrite,
	qemuLockSharedBase + qemuPermWrite,
	qemuLockSharedBase + qemuPermResize,
}

// qemuWriterConflicts are the bytes that must be unlocked by everyone else for crkvol to
// write: somebody holding write or resize, or not sharing consistent reads or writes.
var qemuWriterConflicts = []qemuConflict{
	{qemuLockPermBase + qemuPermWrite, "write"},
	{qemuLockPermBase + qemuPermResize, "resize"},
	{qemuLockSharedBase + qemuPermConsistentRead, "consistent read, which it does not share"},
	{qemuLockSharedBase + qemuPermWrite, "write, which it does not share"},
}

// qemuResizerLocks are qemuWriterLocks with the resize permission (a volume resize changes
// the file's size).
var qemuResizerLocks = append(slices.Clip(qemuWriterLocks), qemuLockPermBase+qemuPermResize)

// qemuResizerConflicts are qemuWriterConflicts and somebody not sharing resize, as a QEMU
// serving the file does even read-only.
var qemuResizerConflicts = append(slices.Clip(qemuWriterConflicts),
	qemuConflict{qemuLockSharedBase + qemuPermResize, "resize, which it does not share"})

// lockImageForRead takes QEMU's reader locks on f (an image file crkvol is about to read)
// and checks that no other open of the file holds a conflicting one; it never waits. On a
// conflict it returns an error wrapping ErrImageInUse that names the file and QEMU's lock.
// The locks belong to f's open file description and go away when f is closed (or with the
// returned unlock, which the caller may skip when it closes f). On a filesystem without
// byte-range locks it locks nothing and returns no error, as QEMU's locking=auto does.
func lockImageForRead(f *os.File) (unlock func(), err error) {
	return qemuLock(f, f.Name(), qemuReaderLocks, qemuConflicts)
}

// imageInUse is the error for a conflicting QEMU lock on name.
func imageInUse(name, what string) error {
	return fmt.Errorf("%s is %w (QEMU's lock on %s)", name, ErrImageInUse, what)
}
