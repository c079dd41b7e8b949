package volume

import (
	"os"
	"syscall"
	"time"
)

// ctimeOf returns the inode change time of a stat result (st_ctim): every write, truncation,
// chmod and utimes moves it, and no unprivileged call can set it back. ok is false where the
// platform does not report it.
func ctimeOf(fi os.FileInfo) (t time.Time, ok bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return time.Time{}, false
	}
	return time.Unix(st.Ctim.Sec, st.Ctim.Nsec).UTC(), true
}
