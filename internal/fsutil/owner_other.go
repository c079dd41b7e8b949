//go:build !unix

package fsutil

import "io/fs"

// hasOwners is false: the permission bits are not Unix ones.
const hasOwners = false

// ownerOf reports no owner: the system has no user ids to compare.
func ownerOf(fs.FileInfo) (int, bool) { return 0, false }
