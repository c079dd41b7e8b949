package main

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestCreateOutput: the one rule for every file the CLI writes for the user. A new name is
// created; a device or pipe is written without --force; anything else that exists is
// refused without --force and, with it, replaced by a new file of the right mode renamed
// over the name (a link itself, never its target); directories are refused.
func TestCreateOutput(t *testing.T) {
	t.Parallel()
	const old = "old content"
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, dir string) // plants things at dir/out (victim: dir/victim)
		force bool
		perm  os.FileMode
		abort bool
		// wantErr is the error; otherwise want is what dir/out holds, with mode wantMode.
		wantErr  error
		want     string
		wantMode os.FileMode
		// victim is what dir/victim holds afterwards ("" for absent).
		victim string
		// link: dir/out is still a symbolic link afterwards.
		link bool
	}{
		{name: "new", perm: 0o600, want: "new", wantMode: 0o600},
		{name: "new report", perm: 0o644, want: "new", wantMode: 0o644},
		{name: "new with force", force: true, perm: 0o600, want: "new", wantMode: 0o600},
		{name: "exists", setup: regular(0o644), perm: 0o644, wantErr: fs.ErrExist, want: old, wantMode: 0o644},
		{name: "exists with force", setup: regular(0o644), force: true, perm: 0o644, want: "new", wantMode: 0o644},
		{name: "0666 with force becomes 0600", setup: regular(0o666), force: true, perm: 0o600, want: "new", wantMode: 0o600},
		{name: "aborted replacement keeps the old file", setup: regular(0o644), force: true, perm: 0o600, abort: true, want: old, wantMode: 0o644},
		{name: "aborted new file is removed", perm: 0o600, abort: true, wantErr: fs.ErrNotExist},
		{name: "symlink", setup: link(true), perm: 0o600, wantErr: fs.ErrExist, victim: old, link: true},
		{name: "symlink with force", setup: link(true), force: true, perm: 0o600, want: "new", wantMode: 0o600, victim: old},
		{name: "dangling symlink", setup: link(false), perm: 0o600, wantErr: fs.ErrExist, link: true},
		{name: "dangling symlink with force", setup: link(false), force: true, perm: 0o600, want: "new", wantMode: 0o600},
		{name: "directory", setup: directory, force: true, perm: 0o600, wantErr: errNotRegular},
		{name: "link to a directory", setup: func(t *testing.T, dir string) {
			require.NoError(t, os.Mkdir(filepath.Join(dir, "victim"), 0o755))
			require.NoError(t, os.Symlink(filepath.Join(dir, "victim"), filepath.Join(dir, "out")))
		}, force: true, perm: 0o600, wantErr: errNotRegular, link: true},
		{name: "link to /dev/null", setup: func(t *testing.T, dir string) {
			require.NoError(t, os.Symlink("/dev/null", filepath.Join(dir, "out")))
		}, perm: 0o644, link: true},
		{name: "link to /dev/null with force", setup: func(t *testing.T, dir string) {
			require.NoError(t, os.Symlink("/dev/null", filepath.Join(dir, "out")))
		}, force: true, perm: 0o644, link: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, "out")
			if tc.setup != nil {
				tc.setup(t, dir)
			}
			f, err := createOutput("output", path, outputOptions{force: tc.force, perm: tc.perm, images: []string{filepath.Join(dir, "img")}, stateDir: filepath.Join(dir, "state")})
			if err == nil {
				_, err = f.WriteString("new")
				require.NoError(t, err)
				if tc.abort {
					f.Abort()
				} else {
					require.NoError(t, f.Close())
				}
			}
			switch {
			case tc.abort && tc.wantErr != nil:
				_, err := os.Lstat(path)
				require.ErrorIs(t, err, tc.wantErr)
			case tc.wantErr != nil:
				require.ErrorIs(t, err, tc.wantErr)
				assert.Contains(t, err.Error(), "--output "+path)
			default:
				require.NoError(t, err)
			}
			if tc.want != "" {
				got, err := os.ReadFile(path)
				require.NoError(t, err)
				assert.Equal(t, tc.want, string(got))
				st, err := os.Lstat(path)
				require.NoError(t, err)
				assert.Equal(t, tc.wantMode, st.Mode(), "mode of %s", path)
			}
			if st, err := os.Lstat(path); err == nil {
				assert.Equal(t, tc.link, st.Mode()&fs.ModeSymlink != 0, "is a link")
			}
			victim, err := os.ReadFile(filepath.Join(dir, "victim"))
			if tc.victim == "" {
				if err == nil || !isDirError(err) {
					assert.ErrorIs(t, err, fs.ErrNotExist, "victim: %q", victim)
				}
			} else {
				assert.Equal(t, tc.victim, string(victim))
			}
			// No temporary file is left behind.
			entries, err := os.ReadDir(dir)
			require.NoError(t, err)
			for _, e := range entries {
				assert.Contains(t, []string{"out", "victim"}, e.Name())
			}
		})
	}
}

// isDirError tells the error of reading a directory.
func isDirError(err error) bool {
	pe, ok := err.(*fs.PathError)
	return ok && pe.Err == syscall.EISDIR
}

func regular(perm os.FileMode) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		path := filepath.Join(dir, "out")
		require.NoError(t, os.WriteFile(path, []byte("old content"), perm))
		require.NoError(t, os.Chmod(path, perm))
	}
}

func link(victim bool) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		if victim {
			require.NoError(t, os.WriteFile(filepath.Join(dir, "victim"), []byte("old content"), 0o644))
		}
		require.NoError(t, os.Symlink(filepath.Join(dir, "victim"), filepath.Join(dir, "out")))
	}
}

func directory(t *testing.T, dir string) {
	require.NoError(t, os.Mkdir(filepath.Join(dir, "out"), 0o755))
}

// TestCreateOutputFIFO: a named pipe is written as it is, without --force, and stays a pipe.
func TestCreateOutputFIFO(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "fifo")
	require.NoError(t, syscall.Mkfifo(path, 0o600))
	got := make(chan string, 1)
	// The reader is there first: a FIFO without one is refused at once.
	r, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	require.NoError(t, err)
	f, err := createOutput("report", path, outputOptions{perm: 0o644})
	require.NoError(t, err)
	// Read only once the writer is there: before it, a read would see end of file and close
	// the only reader.
	go func() {
		defer r.Close()
		b, _ := io.ReadAll(r)
		got <- string(b)
	}()
	_, err = f.WriteString("through the pipe")
	require.NoError(t, err)
	require.NoError(t, f.Close())
	assert.Equal(t, "through the pipe", <-got)
	st, err := os.Lstat(path)
	require.NoError(t, err)
	assert.True(t, st.Mode()&fs.ModeNamedPipe != 0)
}

// openPTY opens a pseudo-terminal and returns its terminal side.
func openPTY(t *testing.T) *os.File {
	t.Helper()
	ptm, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { ptm.Close() })
	if err := unix.IoctlSetPointerInt(int(ptm.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Skipf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(int(ptm.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Skipf("ptsname: %v", err)
	}
	pts, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("opening the terminal side: %v", err)
	}
	t.Cleanup(func() { pts.Close() })
	return pts
}

// TestPassphraseNotToTerminal: volume passphrase writes to a device or to stdout (--output -)
// only when it is not a terminal, where the passphrase would be shown.
func TestPassphraseNotToTerminal(t *testing.T) {
	t.Parallel()
	pts := openPTY(t)
	dir := t.TempDir()
	env := func(name string) string {
		if name == "CRKVOL_STATE" {
			return filepath.Join(dir, "state")
		}
		return ""
	}
	img := filepath.Join(dir, "vol.img")
	var out, errs bytes.Buffer
	if code := run([]string{"key", "create", "kt"}, strings.NewReader(""), &out, &errs, env); code != 0 {
		t.Fatalf("key create: %d: %s", code, errs.String())
	}
	if code := run([]string{"volume", "create", img, "--size", "1MiB", "--key", "kt"}, strings.NewReader(""), &out, &errs, env); code != 0 {
		t.Fatalf("volume create: %d: %s", code, errs.String())
	}
	for _, tc := range []struct {
		name   string
		output string
		stdout io.Writer
	}{
		{"stdout", "-", pts},
		{"device", pts.Name(), &out},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var errs bytes.Buffer
			code := run([]string{"volume", "passphrase", img, "--output", tc.output}, strings.NewReader(""), tc.stdout, &errs, env)
			// A terminal that its group may write (0620) is refused as not private first.
			want := "crkvol: volume passphrase: --output " + tc.output + ": refusing to write the passphrase to a terminal\n"
			notPrivate := "crkvol: volume passphrase: --output " + tc.output + ": a character device of uid "
			if code != 1 || !strings.HasPrefix(errs.String(), want) && (tc.name != "device" || !strings.HasPrefix(errs.String(), notPrivate)) {
				t.Errorf("exit status %d, stderr %q; want 1 and %q", code, errs.String(), want)
			}
		})
	}
}

// TestCreateOutputRefused: outputs refused even with --force: the volume image and the state
// directory (by name, through a link, as a hard link), devices and FIFOs for sensitive
// outputs unless private, a FIFO with no reader (at once), names under /dev never created.
func TestCreateOutputRefused(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, dir string) string // returns the output path
		perm  os.FileMode
		// wantErr is the error; nil: the output opens.
		wantErr error
		// unchanged is a file that must keep its content "old content".
		unchanged string
	}{
		{name: "the image", setup: func(t *testing.T, dir string) string { return filepath.Join(dir, "img") }, perm: 0o600, wantErr: errProtected, unchanged: "img"},
		{name: "a link to the image", setup: func(t *testing.T, dir string) string {
			require.NoError(t, os.Symlink(filepath.Join(dir, "img"), filepath.Join(dir, "out")))
			return filepath.Join(dir, "out")
		}, perm: 0o600, wantErr: errProtected, unchanged: "img"},
		{name: "a hard link to crk.db", setup: func(t *testing.T, dir string) string {
			require.NoError(t, os.Link(filepath.Join(dir, "state", "crk.db"), filepath.Join(dir, "out")))
			return filepath.Join(dir, "out")
		}, perm: 0o644, wantErr: errProtected, unchanged: "state/crk.db"},
		{name: "a new file in the state directory", setup: func(t *testing.T, dir string) string {
			return filepath.Join(dir, "state", "new")
		}, perm: 0o644, wantErr: errProtected},
		{name: "volumes.db through a linked directory", setup: func(t *testing.T, dir string) string {
			require.NoError(t, os.Symlink(filepath.Join(dir, "state"), filepath.Join(dir, "st")))
			return filepath.Join(dir, "st", "volumes.db")
		}, perm: 0o644, wantErr: errProtected, unchanged: "state/volumes.db"},
		{name: "/dev/null for a secret", setup: func(*testing.T, string) string { return "/dev/null" }, perm: 0o600, wantErr: errNotPrivate},
		{name: "/dev/null for a report", setup: func(*testing.T, string) string { return "/dev/null" }, perm: 0o644},
		{name: "a 0644 FIFO for a secret", setup: fifo(0o644), perm: 0o600, wantErr: errNotPrivate},
		{name: "a FIFO with no reader", setup: fifo(0o600), perm: 0o600, wantErr: errNoReader},
		{name: "a name under /dev is never created", setup: func(*testing.T, string) string { return "/dev/crkvol-test-no-such" }, perm: 0o644, wantErr: fs.ErrNotExist},
		{name: "a link to a missing name under /dev", setup: func(t *testing.T, dir string) string {
			require.NoError(t, os.Symlink("/dev/crkvol-test-no-such", filepath.Join(dir, "out")))
			return filepath.Join(dir, "out")
		}, perm: 0o644, wantErr: fs.ErrNotExist},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			require.NoError(t, os.Mkdir(filepath.Join(dir, "state"), 0o700))
			for _, f := range []string{"img", "state/crk.db", "state/volumes.db"} {
				require.NoError(t, os.WriteFile(filepath.Join(dir, f), []byte("old content"), 0o600))
			}
			path := tc.setup(t, dir)
			opts := outputOptions{force: true, perm: tc.perm, images: []string{filepath.Join(dir, "img")}, stateDir: filepath.Join(dir, "state")}
			checkErr := checkOutputFree("output", path, opts)
			f, err := createOutput("output", path, opts)
			if tc.wantErr == nil {
				require.NoError(t, checkErr)
				require.NoError(t, err)
				require.NoError(t, f.Close())
				return
			}
			require.ErrorIs(t, err, tc.wantErr)
			assert.Contains(t, err.Error(), "--output /")
			if tc.wantErr != errNoReader && tc.wantErr != fs.ErrNotExist {
				assert.ErrorIs(t, checkErr, tc.wantErr, "checkOutputFree")
			}
			if tc.unchanged != "" {
				got, err := os.ReadFile(filepath.Join(dir, tc.unchanged))
				require.NoError(t, err)
				assert.Equal(t, "old content", string(got))
			}
			_, err = os.Lstat("/dev/crkvol-test-no-such")
			assert.ErrorIs(t, err, fs.ErrNotExist)
		})
	}
}

func fifo(perm uint32) func(t *testing.T, dir string) string {
	return func(t *testing.T, dir string) string {
		path := filepath.Join(dir, "fifo")
		require.NoError(t, syscall.Mkfifo(path, perm))
		require.NoError(t, os.Chmod(path, os.FileMode(perm)))
		return path
	}
}

// TestCreateOutputUmask: a replacement made by --force honours the umask like a new file.
func TestCreateOutputUmask(t *testing.T) {
	old := unix.Umask(0o077)
	defer unix.Umask(old)
	dir := t.TempDir()
	path := filepath.Join(dir, "out")
	require.NoError(t, os.WriteFile(path, []byte("old"), 0o600))
	f, err := createOutput("report", path, outputOptions{force: true, perm: 0o644})
	require.NoError(t, err)
	require.NoError(t, f.Close())
	st, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
}

// TestCreateOutputAbsoluteErrors: errors name the absolute path, also those of the system.
func TestCreateOutputAbsoluteErrors(t *testing.T) {
	t.Chdir(t.TempDir())
	_, err := createOutput("output", "nodir/x", outputOptions{perm: 0o600})
	require.ErrorIs(t, err, fs.ErrNotExist)
	wd, _ := os.Getwd()
	assert.NotContains(t, strings.ReplaceAll(err.Error(), filepath.Join(wd, "nodir/x"), ""), "nodir/x")
}
