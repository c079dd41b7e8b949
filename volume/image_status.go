package volume

import (
	"errors"
	"io/fs"
	"os"
)

// The file statuses of a catalog image, as [ImageEntry.FileStatus] tells them.
const (
	// ImageFileOK: the file at the recorded path is the imported one by its stat (identity,
	// size, modification time).
	ImageFileOK = "ok"
	// ImageFileMissing: nothing is at the recorded path (the file was moved or deleted).
	ImageFileMissing = "missing"
	// ImageFileChanged: the file at the recorded path differs from the imported one in
	// identity, size or modification time (replaced, written, or only touched: a use of
	// the image then compares its content with the recorded SHA-256).
	ImageFileChanged = "changed"
)

// FileStatus compares the image file at e.Path with what the catalog recorded at import, by
// a stat only (cheap, for listings; it never reads the file): [ImageFileOK],
// [ImageFileMissing] or [ImageFileChanged]. err is set, with status "", when the path
// cannot be examined for another reason (permission denied).
func (e ImageEntry) FileStatus() (status string, err error) {
	fi, err := os.Stat(e.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return ImageFileMissing, nil
	}
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() || fi.Size() != e.FileSize || (!e.ModTime.IsZero() && !fi.ModTime().Equal(e.ModTime)) {
		return ImageFileChanged, nil
	}
	if id, ok := idOf(fi); ok && e.Inode != 0 && (id.dev != e.Device || id.ino != e.Inode) {
		return ImageFileChanged, nil
	}
	return ImageFileOK, nil
}
