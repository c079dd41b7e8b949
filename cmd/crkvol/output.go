package main

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"crkvol/internal/fsutil"
	"crkvol/volume"
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

// errNotPrivate refuses to write plaintext or a secret to a device or FIFO that another
// user owns or may open.
var errNotPrivate = errors.New("plaintext and secrets go only to a device or FIFO of your own that no other user may open")

// errProtected refuses an output that is the volume image or lies in the state directory.
var errProtected = errors.New("refusing to write there")

// errNoReader is a FIFO that no process has open for reading.
var errNoReader = errors.New("no process is reading the FIFO")

// outputOptions says how createOutput may write an output file.
type outputOptions struct {
	// force replaces an existing file.
	force bool
	// perm is the mode of a new file; without group and other bits (0600) the output is
	// sensitive (plaintext, a secret).
	perm os.FileMode
	// images are volume images and stateDir the state directory: never written, even
	// with force.
	images   []string
	stateDir string
}

// sensitive tells plaintext and secrets (outputs no other user may read).
func (o outputOptions) sensitive() bool { return o.perm&0o077 == 0 }

// outputOptions returns the options of an output file of mode perm for a command working on
// the volume images imgs: those images, every image the state directory's registry knows and
// the state directory itself are protected.
func (a *app) outputOptions(force bool, perm os.FileMode, imgs ...string) outputOptions {
	o := outputOptions{force: force, perm: perm, images: imgs}
	if dir, err := a.stateDirectoryPath(); err == nil {
		// Protected whether or not it is private; its registry is read only when it is.
		o.stateDir = dir
		if _, err := a.stateDirectory(); err == nil {
			o.images = append(slices.Clip(o.images), a.registeredImages(dir)...)
		}
	}
	return o
}

// registeredImages returns the paths of the volume images in the registry of state directory
// dir: the command's open registry, else the file read once (nothing if it cannot be read,
// such as while another command writes it for more than the registry's lock timeout).
func (a *app) registeredImages(dir string) []string {
	reg := a.reg
	if reg == nil {
		if a.registered != nil {
			return *a.registered
		}
		r, err := volume.OpenRegistryReadOnly(filepath.Join(dir, "volumes.db"))
		if err != nil {
			return nil
		}
		defer r.Close()
		reg = r
	}
	entries, err := reg.List()
	if err != nil {
		return nil
	}
	paths := make([]string, 0, len(entries))
	for _, e := range entries {
		paths = append(paths, e.Path)
	}
	if a.reg == nil {
		a.registered = &paths
	}
	return paths
}

// streamName tells a name under /dev or /proc, lexically or through symbolic links: such a
// name is a stream, never created, renamed or replaced.
func streamName(path string) bool {
	under := func(p string) bool {
		p = filepath.Clean(p)
		for _, d := range []string{"/dev", "/proc"} {
			if p == d || strings.HasPrefix(p, d+"/") {
				return true
			}
		}
		return false
	}
	p := absPath(path)
	if under(p) {
		return true
	}
	if r, err := filepath.EvalSymlinks(p); err == nil && under(r) {
		return true
	}
	// Follow the chain of links by hand: a magic link such as /proc/self/fd/1 resolves to
	// nothing EvalSymlinks can name.
	for range 40 {
		dir := p
		if r, err := filepath.EvalSymlinks(filepath.Dir(p)); err == nil {
			dir = filepath.Join(r, filepath.Base(p))
		}
		if under(dir) {
			return true
		}
		t, err := os.Readlink(dir)
		if err != nil {
			return false
		}
		if !filepath.IsAbs(t) {
			t = filepath.Join(filepath.Dir(dir), t)
		}
		if p = filepath.Clean(t); under(p) {
			return true
		}
	}
	return false
}

// checkPrivate refuses, for a sensitive output, a device or FIFO that is not the caller's
// own or that its group or others may open.
func checkPrivate(flag, path string, st fs.FileInfo, o outputOptions) error {
	if !o.sensitive() {
		return nil
	}
	uid := -1
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		uid = int(sys.Uid)
	}
	if uid == os.Getuid() && st.Mode().Perm()&0o077 == 0 {
		return nil
	}
	return withHint(fmt.Errorf("--%s %s: %s of uid %d with mode %04o: %w", flag, path, fsutil.Kind(st.Mode()), uid, st.Mode().Perm(), errNotPrivate),
		"give --"+flag+" a new file, or leave it out (or give -) to write to stdout")
}

// flagPath names an output in an error: "--flag PATH", or PATH alone for a positional
// argument (flag "").
func flagPath(flag, path string) string {
	if flag == "" {
		return path
	}
	return "--" + flag + " " + path
}

// checkProtected refuses an output that is one of the volume images, or a file of the state
// directory (by name, through links, or the same file).
func checkProtected(flag, path string, o outputOptions) error {
	abs := absPath(path)
	resolved := abs
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		resolved = r
	} else if r, err := filepath.EvalSymlinks(filepath.Dir(abs)); err == nil {
		resolved = filepath.Join(r, filepath.Base(abs))
	}
	st, statErr := os.Stat(abs)
	same := func(p string) bool {
		if statErr != nil {
			return false
		}
		pst, err := os.Stat(p)
		return err == nil && os.SameFile(st, pst)
	}
	for _, img := range o.images {
		if img == "" {
			continue
		}
		if same(img) || resolved == absPath(img) {
			return fmt.Errorf("%s: is the volume image %s; %w to overwrite it", flagPath(flag, abs), absPath(img), errProtectedImage)
		}
	}
	if o.stateDir == "" {
		return nil
	}
	dir := absPath(o.stateDir)
	inside := func(p, d string) bool { return p == d || strings.HasPrefix(p, d+"/") }
	rdir := dir
	if r, err := filepath.EvalSymlinks(dir); err == nil {
		rdir = r
	}
	refuse := inside(abs, dir) || inside(resolved, rdir) || inside(resolved, dir)
	for _, f := range []string{"crk.db", "volumes.db", "crk.db.masterkey"} {
		refuse = refuse || same(filepath.Join(dir, f))
	}
	if refuse {
		return fmt.Errorf("%s: lies in the state directory %s; %w", flagPath(flag, abs), dir, errProtected)
	}
	return nil
}

// errProtectedImage refuses an output that is a volume image; it matches errProtected.
var errProtectedImage = protectedImage{}

type protectedImage struct{}

func (protectedImage) Error() string        { return "refusing" }
func (protectedImage) Is(target error) bool { return target == errProtected }

// openStream opens a device or pipe for writing, without creating or truncating anything and
// without blocking on a FIFO that has no reader; a sensitive output must be private.
func openStream(flag, path string, o outputOptions) (*os.File, error) {
	// Checked before opening too: opening a device may act on it, and a FIFO without a
	// reader is refused as not private first.
	if st, err := os.Stat(path); err == nil {
		if err := checkPrivate(flag, path, st, o); err != nil {
			return nil, err
		}
	}
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENXIO):
		if st, serr := os.Stat(path); serr == nil && st.Mode()&fs.ModeNamedPipe != 0 {
			return nil, fmt.Errorf("--%s %s: %w", flag, path, errNoReader)
		}
		return nil, fmt.Errorf("--%s %s: %w", flag, path, &fs.PathError{Op: "open", Path: path, Err: err})
	case errors.Is(err, unix.ENOENT) && streamName(path):
		return nil, fmt.Errorf("--%s %s: does not exist (names under /dev and /proc are never created): %w", flag, path, fs.ErrNotExist)
	case err != nil:
		return nil, fmt.Errorf("--%s %s: %w", flag, path, &fs.PathError{Op: "open", Path: path, Err: err})
	}
	f := os.NewFile(uintptr(fd), path)
	st, err := f.Stat()
	if err == nil {
		err = checkPrivate(flag, path, st, o)
	}
	if err == nil {
		if serr := unix.SetNonblock(fd, false); serr != nil {
			err = fmt.Errorf("--%s %s: %w", flag, path, serr)
		}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
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
	// stream is a device or a pipe; kind names it.
	stream bool
	kind   string
	done   bool
}

// describe is what the CLI says after the path it wrote: " (mode 0600)" for a file, " (a
// FIFO)" for a stream.
func (o *outputFile) describe(perm os.FileMode) string {
	if o.stream {
		return " (" + o.kind + ")"
	}
	return fmt.Sprintf(" (mode %04o)", perm)
}

// createOutput opens for writing the file that the output flag flag names, by one rule for
// every file the CLI writes for the user:
//   - path is the volume image or lies in the state directory: refused (errProtected),
//     even with force;
//   - path is under /dev or /proc (lexically or through links) or is, after following
//     links, a character or block device or a pipe (/dev/null, /dev/stdout, a FIFO): it
//     is opened for writing as it is, without force; nothing is created, truncated or
//     renamed there; a FIFO with no reader fails at once (errNoReader); a sensitive
//     output (mode 0600) goes only to a device or FIFO of the caller's own that no other
//     user may open (errNotPrivate);
//   - path does not exist: a new file is created there (O_EXCL, mode perm);
//   - anything else that exists (a regular file, a symbolic link to one, a dangling link)
//     is refused, naming the flag and the absolute path (matching fs.ErrExist), unless
//     force: then a new file of mode perm (less the umask) is written beside it and Close
//     renames it over the name, replacing a link itself, never writing through it, never
//     keeping the old file's mode. Directories and other things are refused
//     (errNotRegular).
func createOutput(flag, path string, opts outputOptions) (*outputFile, error) {
	path = absPath(path)
	o := &outputFile{flag: flag, path: path}
	if err := checkProtected(flag, path, opts); err != nil {
		return nil, err
	}
	if streamName(path) {
		return o.openStream(opts)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, opts.perm)
	if err == nil {
		o.File, o.created = f, true
		return o, nil
	}
	if !errors.Is(err, fs.ErrExist) {
		return nil, o.fail(err)
	}
	if st, err := os.Stat(path); err == nil && isStream(st.Mode()) {
		return o.openStream(opts)
	}
	if err := replaceable(flag, path); err != nil {
		return nil, err
	}
	if !opts.force {
		return nil, existsError(flag, path)
	}
	for range 100 {
		tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".crkvol-"+rand.Text()[:12])
		f, err = os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, opts.perm)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, o.fail(err)
		}
		o.File, o.tmp = f, tmp
		return o, nil
	}
	return nil, o.fail(err)
}

// openStream opens o's path as a device or pipe.
func (o *outputFile) openStream(opts outputOptions) (*outputFile, error) {
	f, err := openStream(o.flag, o.path, opts)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, o.fail(err)
	}
	if !isStream(st.Mode()) && !streamName(o.path) {
		// A regular file swapped in since the name was examined.
		f.Close()
		return nil, existsError(o.flag, o.path)
	}
	o.File, o.stream, o.kind = f, true, fsutil.Kind(st.Mode())
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
// rule.
func writeOutput(flag, path string, data []byte, opts outputOptions) error {
	o, err := createOutput(flag, path, opts)
	if err != nil {
		return err
	}
	if _, err := o.Write(data); err != nil {
		o.Abort()
		return o.fail(err)
	}
	return o.Close()
}

// checkOutputFree refuses, before a command starts its work (a long run, unwrapping a
// passphrase), an output file that createOutput would refuse at its end.
func checkOutputFree(flag, path string, opts outputOptions) error {
	if path == "" || path == "-" {
		return nil
	}
	if err := checkProtected(flag, path, opts); err != nil {
		return err
	}
	st, statErr := os.Stat(path)
	if statErr == nil && (isStream(st.Mode()) || streamName(path)) {
		return checkPrivate(flag, absPath(path), st, opts)
	}
	if streamName(path) {
		return nil // opening it says what is wrong
	}
	if _, err := os.Lstat(path); err != nil {
		// A new name: its directory must be there, or the command would fail only when it
		// writes, after its work.
		dir := filepath.Dir(absPath(path))
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			return fmt.Errorf("%s: the directory %s does not exist", flagPath(flag, absPath(path)), dir)
		}
		return nil
	}
	if err := replaceable(flag, path); err != nil {
		return err
	}
	if !opts.force {
		return existsError(flag, path)
	}
	return nil
}

// checkOutputsDiffer refuses two output flags naming the same file.
func checkOutputsDiffer(flag1, path1, flag2, path2 string) error {
	if path1 == "" || path2 == "" {
		return nil
	}
	same := absPath(path1) == absPath(path2)
	if st1, err := os.Stat(path1); err == nil {
		if st2, err := os.Stat(path2); err == nil && os.SameFile(st1, st2) && !isStream(st1.Mode()) {
			same = true
		}
	}
	if same {
		return fmt.Errorf("--%s %s: is also the --%s file", flag2, absPath(path2), flag1)
	}
	return nil
}

// writeAddrFile writes data to a temporary file beside path and moves it to path: linked to
// the name if it is free (an existing name is refused, matching fs.ErrExist, unless force),
// or renamed over it with force; never written through a link. The returned function
// removes path if it is still the file written.
func writeAddrFile(path string, data []byte, force bool) (func(), error) {
	path = absPath(path)
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".crkvol-"+rand.Text()[:12])
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("--addr-file %s: %w", path, err)
	}
	defer os.Remove(tmp)
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("--addr-file %s: %w", path, err)
	}
	st, err := os.Stat(tmp)
	if err != nil {
		return nil, fmt.Errorf("--addr-file %s: %w", path, err)
	}
	if force {
		if err := replaceable("addr-file", path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		err = os.Rename(tmp, path)
	} else if err = os.Link(tmp, path); errors.Is(err, fs.ErrExist) {
		return nil, existsError("addr-file", path)
	}
	if err != nil {
		return nil, fmt.Errorf("--addr-file %s: %w", path, err)
	}
	return func() {
		if cur, err := os.Lstat(path); err == nil && os.SameFile(st, cur) {
			os.Remove(path)
		}
	}, nil
}
