//go:build linux

package volume

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// qemuLock read-locks the QEMU lock bytes locks of f (named name in errors) and checks
// that nobody else holds the bytes of conflicts, with OFD locks (F_OFD_SETLK, F_OFD_GETLK),
// the kind QEMU uses on Linux (see lockImageForRead).
func qemuLock(f *os.File, name string, locks []int64, conflicts []qemuConflict) (func(), error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var lerr error
	var locked []int64
	unlockFd := func(fd uintptr) {
		for _, off := range locked {
			lk := unix.Flock_t{Type: unix.F_UNLCK, Whence: io.SeekStart, Start: off, Len: 1}
			_ = unix.FcntlFlock(fd, unix.F_OFD_SETLK, &lk)
		}
		locked = nil
	}
	cerr := rc.Control(func(fd uintptr) {
		for _, off := range locks {
			lk := unix.Flock_t{Type: unix.F_RDLCK, Whence: io.SeekStart, Start: off, Len: 1}
			switch err := unix.FcntlFlock(fd, unix.F_OFD_SETLK, &lk); {
			case err == nil:
				locked = append(locked, off)
			case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES):
				// A write lock on the byte: not QEMU's (its locks are all shared), but
				// somebody's exclusive claim on the file all the same.
				lerr = imageInUse(name, fmt.Sprintf("byte %d, held exclusively", off))
				unlockFd(fd)
				return
			case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.ENOLCK):
				// No OFD locks here (an old kernel, a filesystem without byte-range
				// locks): QEMU's locking=auto then locks nothing either.
				unlockFd(fd)
				return
			default:
				lerr = fmt.Errorf("locking %s against writers (QEMU's lock byte %d): %w", name, off, err)
				unlockFd(fd)
				return
			}
		}
		for _, c := range conflicts {
			lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart, Start: c.off, Len: 1}
			if err := unix.FcntlFlock(fd, unix.F_OFD_GETLK, &lk); err != nil {
				lerr = fmt.Errorf("testing %s for QEMU's lock byte %d: %w", name, c.off, err)
				unlockFd(fd)
				return
			}
			if lk.Type != unix.F_UNLCK {
				lerr = imageInUse(name, c.what)
				unlockFd(fd)
				return
			}
		}
	})
	if cerr != nil {
		return nil, cerr
	}
	if lerr != nil {
		return nil, lerr
	}
	return func() { _ = rc.Control(unlockFd) }, nil
}
