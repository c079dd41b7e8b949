//go:build unix

package fsutil

import (
	"io/fs"
	"syscall"
)

// hasOwners is true where files have Unix owners and permission bits.
const hasOwners = true

// ownerOf returns the user id owning the file st describes.
func ownerOf(st fs.FileInfo) (int, bool) {
	s, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return int(s.Uid), true
}
