package sector

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestWipeConcurrent wipes a Cipher while goroutines encrypt and decrypt with it, on every
// path (run it with -race): every call must either return the right output or panic with
// one of Wipe's two messages, never return output made with half-wiped keys; a call that
// panics for an overlap leaves its output cleared.
func TestWipeConcurrent(t *testing.T) {
	const (
		size    = 4096
		calls   = 64 // sectors per call, so a call lasts long enough to overlap Wipe
		workers = 3
		trials  = 10
	)
	key := make([]byte, 64)
	fillRand(rand.New(rand.NewPCG(1, 2)), key)
	src := make([]byte, calls*size)
	fillRand(rand.New(rand.NewPCG(3, 4)), src)
	for _, path := range Paths() {
		t.Run(string(path), func(t *testing.T) {
			ref, err := NewPath(key, size, path)
			require.NoError(t, err)
			want := make([]byte, len(src))
			ref.EncryptSectors(want, src, 0)
			overlapped := 0
			for range trials {
				c, err := NewPath(key, size, path)
				require.NoError(t, err)
				var (
					wg      sync.WaitGroup
					started sync.WaitGroup
					mu      sync.Mutex
					errs    []error
					panics  = map[string]int{}
				)
				started.Add(workers)
				for w := range workers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						buf := make([]byte, len(src))
						for i := 0; ; i++ {
							decrypt := i%2 == 1
							msg, err := wipeCall(c, buf, src, want, decrypt)
							if i == 0 {
								started.Done()
							}
							if err != nil {
								mu.Lock()
								errs = append(errs, fmt.Errorf("worker %d call %d: %w", w, i, err))
								mu.Unlock()
							}
							if msg != "" {
								mu.Lock()
								panics[msg]++
								mu.Unlock()
								return
							}
						}
					}()
				}
				started.Wait()
				c.Wipe()
				wg.Wait()
				require.Empty(t, errs)
				for msg := range panics {
					assert.Contains(t, []string{"sector: Cipher used after Wipe", "sector: Cipher wiped during use"}, msg)
				}
				overlapped += panics["sector: Cipher wiped during use"]
			}
			t.Logf("%s: %d of %d calls cut short by Wipe overlapped it", path, overlapped, workers*trials)
		})
	}
}

// wipeCall runs one encryption of src (or decryption of want) into buf and checks it: it
// returns the panic message if the call panicked, and an error if the call returned wrong
// output or panicked for an overlap without clearing its output.
func wipeCall(c *Cipher, buf, src, want []byte, decrypt bool) (msg string, err error) {
	in, out := src, want
	if decrypt {
		in, out = want, src
	}
	fill := byte(0xa5)
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
