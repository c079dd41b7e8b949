package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// errNotRegular means an output flag names something that is neither a regular file (or a
// symbolic link to one, or a dangling link) that --force may replace, nor a device or pipe
// to write to: a directory, a socket.
var errNotRegular = errors.New("not a regular file, device or pipe")

// errTerminal refuses to write a secret to a terminal, where it would be shown.
var errTerminal = errors.New("refusing to write the passphrase to a terminal")

// absPath returns path made absolute, or path itself if the working directory is unknown.
// Paths the CLI prints, in text and JSON, go through it.
func absPath(path string) string {
	if abs, err := filepath.Abs(path); err == nil {
		return abs
	}
	return path
}

// fileExists is the error of an output file that exists; it matches fs.ErrExist.
type fileExists struct{}

func (fileExists) Error() string        { return "file exists" }
func (fileExists) Is(target error) bool { return target == fs.ErrExist }

// existsError is the refusal to overwrite the file an output flag names.
func existsError(flag, path string) error {
	return fmt.Errorf("--%s %s: %w; give --force to overwrite it", flag, absPath(path), fileExists{})
}

// isStream tells a device or a pipe: something written to, never a file to protect.
func isStream(m fs.FileMode) bool {
	return m&(fs.ModeDevice|fs.ModeCharDevice|fs.ModeNamedPipe) != 0
}

// outputFile is a file that an output flag (--output, --report, --chart) names, open for
// writing. Close finishes it: it syncs a file and, when --force replaces an existing name,
// renames the new file over that name. Abort gives it up, removing what it created.
type outputFile struct {
	*os.File
	flag, path string
	// tmp is the temporary file beside path that Close renames over path ("" when the
	// file is written in place: a new file at path, a device, a pipe).
	tmp string
	// created is a new file created at path, removed by Abort.
	created bool
	// stream is a device or a pipe.
	stream bool
	done   bool
}

// createOutput opens for writing the file that the output flag flag names, by one rule for
// every file the CLI writes for the user:
//   - path does not exist: a new file is created there (O_EXCL, mode perm);
//   - path is, after following links, a character or block device or a pipe (/dev/null,
//     /dev/stdout, a FIFO): it is written as it is, without force; nothing is created,
//     truncated or renamed there;
//   - anything else that exists (a regular file, a symbolic link to one, a dangling link)
//     is refused, naming the flag and the absolute path (matching fs.ErrExist), unless
//     force: then a new file of mode perm is written beside it and Close renames it over
//     the name, replacing a link itself, never writing through it, never keeping the old
//     file's mode. Directories and other things are refused (errNotRegular).
func createOutput(flag, path string, force bool, perm os.FileMode) (*outputFile, error) {
	o := &outputFile{flag: flag, path: path}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err == nil {
		o.File, o.created = f, true
		return o, nil
	}
	if !errors.Is(err, fs.ErrExist) {
		return nil, o.fail(err)
	}
	if st, err := os.Stat(path); err == nil && isStream(st.Mode()) {
		// No O_CREATE, no O_TRUNC: whatever path is when it is opened, nothing is created
		// or cut short, and a regular file swapped in meanwhile is refused below.
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			return nil, o.fail(err)
		}
		if st, err := f.Stat(); err != nil || !isStream(st.Mode()) {
			f.Close()
			return nil, existsError(flag, path)
		}
		o.File, o.stream = f, true
		return o, nil
	}
	if err := replaceable(flag, path); err != nil {
		return nil, err
	}
	if !force {
		return nil, existsError(flag, path)
	}
	f, err = os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".crkvol-*")
	if err != nil {
		return nil, o.fail(err)
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, o.fail(err)
	}
	o.File, o.tmp = f, f.Name()
	return o, nil
}

// replaceable refuses an existing name that --force may not replace: a directory (or a
// link to one) or anything else that is not a regular file or a link to one.
func replaceable(flag, path string) error {
	lst, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("--%s %s: %w", flag, absPath(path), err)
	}
	m := lst.Mode()
	if m&fs.ModeSymlink != 0 {
		st, err := os.Stat(path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil // dangling
		}
		if err != nil {
			return fmt.Errorf("--%s %s: %w", flag, absPath(path), err)
		}
		m = st.Mode()
	}
	if m.IsDir() {
		return fmt.Errorf("--%s %s: is a directory: %w", flag, absPath(path), errNotRegular)
	}
	if !m.IsRegular() {
		return fmt.Errorf("--%s %s: %w", flag, absPath(path), errNotRegular)
	}
	return nil
}

// fail wraps an error of the output file with its flag and absolute path.
func (o *outputFile) fail(err error) error {
	return fmt.Errorf("--%s %s: %w", o.flag, absPath(o.path), err)
}

// Close finishes the file: it syncs a file (not a device or pipe), closes it and renames a
// replacement over its name. After an error nothing of a replacement remains.
func (o *outputFile) Close() error {
	if o.done {
		return nil
	}
	o.done = true
	var err error
	if !o.stream {
		err = o.File.Sync()
	}
	if cerr := o.File.Close(); err == nil {
		err = cerr
	}
	if err == nil && o.tmp != "" {
		err = os.Rename(o.tmp, o.path)
	}
	if err != nil {
		if o.tmp != "" {
			os.Remove(o.tmp)
		}
		return o.fail(err)
	}
	return nil
}

// Abort gives the file up after an error: it closes it and removes a replacement not yet
// renamed, or a file it created; the existing name, device or pipe is left as it was.
func (o *outputFile) Abort() {
	if o.done {
		return
	}
	o.done = true
	o.File.Close()
	switch {
	case o.tmp != "":
		os.Remove(o.tmp)
	case o.created:
		os.Remove(o.path)
	}
}

// writeOutput writes data to the file that the output flag flag names, by createOutput's
// rule, with mode perm (0600 for secrets).
func writeOutput(flag, path string, data []byte, force bool, perm os.FileMode) error {
	o, err := createOutput(flag, path, force, perm)
	if err != nil {
		return err
	}
	if _, err := o.Write(data); err != nil {
		o.Abort()
		return o.fail(err)
	}
	return o.Close()
}

// checkOutputFree refuses, before a long command starts, an output file that createOutput
// would refuse at its end.
func checkOutputFree(flag, path string, force bool) error {
	if path == "" {
		return nil
	}
	if _, err := os.Lstat(path); err != nil {
		return nil
	}
	if st, err := os.Stat(path); err == nil && isStream(st.Mode()) {
		return nil
	}
	if err := replaceable(flag, path); err != nil {
		return err
	}
	if !force {
		return existsError(flag, path)
	}
	return nil
}
