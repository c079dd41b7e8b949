package keyslot

import (
	"encoding/binary"
	"sync"
)

// Buffers lends the scratch buffers header reads and writes go through (the read-ahead of
// both header copies, the JSON area and binary header a commit writes), so that Images
// opened one after another reuse them instead of allocating their own. What an Image keeps
// (the JSON text, the checked copies' binary headers) is copied out of them: a buffer holds
// no secret and nothing of it outlives the operation that borrowed it. The zero value is
// ready to use, and one Buffers may be shared by any number of Images and goroutines.
type Buffers struct {
	pool   sync.Pool // of *[]byte
	arenas sync.Pool // of *parseArena, cleared
}

// arena returns a cleared parseArena: one of b's, or a new one (always when b is nil).
func (b *Buffers) arena() *parseArena {
	if b != nil {
		if a, ok := b.arenas.Get().(*parseArena); ok {
			return a
		}
	}
	return &parseArena{}
}

// putArena clears a, from arena, and gives it back to b (when not nil). Nothing may use it,
// or any object made in it, afterwards.
func (b *Buffers) putArena(a *parseArena) {
	if b == nil {
		return
	}
	scratch := a.scratch[:0]
	*a = parseArena{scratch: scratch}
	b.arenas.Put(a)
}

// get returns a buffer of n bytes with unspecified contents, and the handle to give back to
// put.
func (b *Buffers) get(n int) ([]byte, *[]byte) {
	if p, ok := b.pool.Get().(*[]byte); ok {
		if cap(*p) >= n {
			return (*p)[:n], p
		}
		// Too small for this header size: let it go, and lend a new one.
	}
	buf := make([]byte, n)
	return buf, &buf
}

// put returns a buffer from get. Nothing may use it afterwards.
func (b *Buffers) put(p *[]byte) { b.pool.Put(p) }

// isZero reports whether every byte of b is zero, eight at a time.
func isZero(b []byte) bool {
	for len(b) >= 32 {
		if binary.LittleEndian.Uint64(b)|binary.LittleEndian.Uint64(b[8:])|
			binary.LittleEndian.Uint64(b[16:])|binary.LittleEndian.Uint64(b[24:]) != 0 {
			return false
		}
		b = b[32:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
