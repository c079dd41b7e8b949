package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// errNotRegular means an output flag names something other than a regular file where only a
// regular file will do (a secret replaced with --force).
var errNotRegular = errors.New("not a regular file")

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

// createOutput opens the file that the output flag named flag (output, report, chart) names,
// for writing, creating it with perm. Without force an existing file is refused with an error
// naming the file and the flag (wrapping fs.ErrExist), and a symbolic link planted at path is
// not followed; with force an existing file is truncated. An existing device or pipe
// (/dev/null, a FIFO) is not a file to protect: it is written without force.
func createOutput(flag, path string, force bool, perm os.FileMode) (*os.File, error) {
	mode := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if force {
		mode = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(path, mode, perm)
	if err == nil {
		return f, nil
	}
	if !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("--%s: %w", flag, err)
	}
	if st, serr := os.Stat(path); serr == nil && (st.Mode()&(fs.ModeDevice|fs.ModeCharDevice|fs.ModeNamedPipe)) != 0 {
		if f, err := os.OpenFile(path, os.O_WRONLY, 0); err == nil {
			return f, nil
		}
	}
	return nil, existsError(flag, path)
}

// checkOutputFree refuses, before a long command starts, an output file that createOutput
// would refuse at its end.
func checkOutputFree(flag, path string, force bool) error {
	if path == "" || force {
		return nil
	}
	if _, err := os.Lstat(path); err == nil {
		if st, err := os.Stat(path); err == nil && (st.Mode()&(fs.ModeDevice|fs.ModeCharDevice|fs.ModeNamedPipe)) != 0 {
			return nil
		}
		return existsError(flag, path)
	}
	return nil
}

// writeSecretFile writes data (a secret) to a new file of mode 0600 at path, named by the
// output flag flag. Without force an existing name — a file, or a symbolic link planted
// there — is refused (O_EXCL), so the secret never lands in a file someone else prepared.
// With force the secret is written to a new temporary file beside path and renamed over it,
// replacing a file or a link (never writing through the link); anything else at path, a
// device or a directory, is refused.
func writeSecretFile(flag, path string, data []byte, force bool) error {
	if !force {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			return existsError(flag, path)
		}
		if err != nil {
			return fmt.Errorf("--%s: %w", flag, err)
		}
		_, err = f.Write(data)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
			return fmt.Errorf("--%s %s: %w", flag, absPath(path), err)
		}
		return nil
	}
	if st, err := os.Lstat(path); err == nil && !st.Mode().IsRegular() && st.Mode()&fs.ModeSymlink == 0 {
		return fmt.Errorf("--%s %s: %w", flag, absPath(path), errNotRegular)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".crkvol-secret-*")
	if err != nil {
		return fmt.Errorf("--%s: %w", flag, err)
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(0o600)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("--%s %s: %w", flag, absPath(path), err)
	}
	return nil
}
