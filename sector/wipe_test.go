package sector

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestWipeConcurrent wipes a Cipher while another goroutine encrypts or decrypts a large
// buffer with it, on every path (run it with -race): each call must either return the right
// output or panic with one of Wipe's two messages, never return output made with half-wiped
// keys, and a call that Wipe overlapped must leave its output cleared. Wipe is called a few
// microseconds after the call starts, so on a machine with two free cores most trials
// overlap.
func TestWipeConcurrent(t *testing.T) {
	const (
		size   = 4096
		length = 256 * size // 1 MiB: a call lasts tens of microseconds or more
		trials = 20
	)
	key := make([]byte, 64)
	fillRand(rand.New(rand.NewPCG(1, 2)), key)
	src := make([]byte, length)
	fillRand(rand.New(rand.NewPCG(3, 4)), src)
	for _, path := range Paths() {
		t.Run(string(path), func(t *testing.T) {
			ref, err := NewPath(key, size, path)
			require.NoError(t, err)
			want := make([]byte, len(src))
			ref.EncryptSectors(want, src, 0)
			overlapped := 0
			buf := make([]byte, len(src))
			for trial := range trials {
				c, err := NewPath(key, size, path)
				require.NoError(t, err)
				starting := make(chan struct{})
				result := make(chan [2]string)
				go func() {
					msg, err := wipeCall(c, buf, src, want, trial%2 == 1, func() { close(starting) })
					e := ""
					if err != nil {
						e = err.Error()
					}
					result <- [2]string{msg, e}
				}()
				<-starting
				for t0 := time.Now(); time.Since(t0) < 5*time.Microsecond; {
				}
				c.Wipe()
				r := <-result
				require.Empty(t, r[1], "trial %d", trial)
				if r[0] != "" {
					assert.Contains(t, []string{"sector: Cipher used after Wipe", "sector: Cipher wiped during use"}, r[0])
				}
				if r[0] == "sector: Cipher wiped during use" {
					overlapped++
				}
			}
			t.Logf("%s: Wipe overlapped %d of %d calls", path, overlapped, trials)
		})
	}
}

// wipeCall runs one encryption of src (or decryption of want) into buf and checks it: it
// calls starting just before the call, and returns the panic message if the call panicked,
// and an error if the call returned wrong output, or panicked for an overlap without
// clearing its output, or after writing it.
func wipeCall(c *Cipher, buf, src, want []byte, decrypt bool, starting func()) (msg string, err error) {
	in, out := src, want
	if decrypt {
		in, out = want, src
	}
	const fill = 0xa5
	for i := range buf {
		buf[i] = fill
	}
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		msg = fmt.Sprint(r)
		switch msg {
		case "sector: Cipher wiped during use":
			if !bytes.Equal(buf, make([]byte, len(buf))) {
				err = fmt.Errorf("output not cleared after %q", msg)
			}
		case "sector: Cipher used after Wipe":
			if !bytes.Equal(buf, bytes.Repeat([]byte{fill}, len(buf))) {
				err = fmt.Errorf("output written before %q", msg)
			}
		}
	}()
	starting()
	if decrypt {
		c.DecryptSectors(buf, in, 0)
	} else {
		c.EncryptSectors(buf, in, 0)
	}
	if !bytes.Equal(buf, out) {
		return "", fmt.Errorf("decrypt=%v returned wrong output", decrypt)
	}
	return "", nil
}
