package volume_test

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"crkvol/volume"
)

const (
	ioHelperEnv   = "CRKVOL_IO_HELPER"
	lockHelperEnv = "CRKVOL_LOCK_HELPER"
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(ioHelperEnv); spec != "" {
		os.Exit(ioHelper(spec))
	}
	if path := os.Getenv(lockHelperEnv); path != "" {
		os.Exit(lockHelper(path))
	}
	os.Exit(m.Run())
}

// lockHelper runs in a child process: it takes the exclusive header lock (flock) of the image
// at path, as a crkvol or cryptsetup updating the header would, says "locked" and holds it
// until its stdin closes.
func lockHelper(path string) int {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		fmt.Println("open:", err)
		return 1
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		fmt.Println("flock:", err)
		return 1
	}
	fmt.Println("locked")
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// ioHelper runs in a child process: it attaches a volume with its passphrase and writes and
// verifies patterns until its stdin closes, then reports.
func ioHelper(spec string) int {
	var path, passHex string
	fmt.Sscan(spec, &path, &passHex)
	pass, err := hex.DecodeString(passHex)
	if err != nil {
		fmt.Println("bad spec")
		return 2
	}
	v, err := volume.OpenWithPassphrase(path, pass)
	if err != nil {
		fmt.Println("open:", err)
		return 1
	}
	defer v.Close()
	fmt.Println("ready")
	stop := make(chan struct{})
	go func() {
		buf := make([]byte, 1)
		os.Stdin.Read(buf)
		close(stop)
	}()
	for i := 0; ; i++ {
		select {
		case <-stop:
			fmt.Println("ok", i)
			return 0
		default:
		}
		off := int64(i%200) * 4096
		p := pattern(4096+i%700, uint64(i))
		if _, err := v.WriteAt(p, off+int64(i%13)); err != nil {
			fmt.Println("write:", err)
			return 1
		}
		got := make([]byte, len(p))
		if _, err := v.ReadAt(got, off+int64(i%13)); err != nil {
			fmt.Println("read:", err)
			return 1
		}
		if !bytes.Equal(got, p) {
			fmt.Println("mismatch at iteration", i)
			return 1
		}
	}
}

// TestRotationWhileAnotherProcessDoesIO: a separate process keeps writing and reading an
// attached volume while this one rotates the key five times; its I/O sees no error.
func TestRotationWhileAnotherProcessDoesIO(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	info := f.create(t, "shared.img", 2<<20)
	pass := unwrapPassphrase(t, f, info.Path)
	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), ioHelperEnv+"="+info.Path+" "+hex.EncodeToString(pass))
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill() }) // if the test stops early; harmless after Wait
	// Rotate only once the helper has the volume open and is doing I/O: on a loaded machine
	// its start can take longer than the five rotations.
	var out bytes.Buffer // written by the reader below until copied delivers
	copied := make(chan error, 1)
	first := make(chan string, 1)
	go func() {
		r := bufio.NewReader(stdout)
		line, err := r.ReadString('\n')
		first <- line
		out.WriteString(line)
		if err == nil {
			_, err = out.ReadFrom(r)
		}
		copied <- err
	}()
	require.Equal(t, "ready\n", <-first, "the helper could not open the volume")
	for range 5 {
		f.rotate(t)
		require.NoError(t, f.lastReport().Err())
		require.Equal(t, 1, f.lastReport().Rewrapped)
	}
	stdin.Close()
	require.NoError(t, <-copied)
	err = cmd.Wait()
	require.NoError(t, err, "helper: %s", out.String())
	require.Contains(t, out.String(), "ready")
	require.Contains(t, out.String(), "ok")
}
