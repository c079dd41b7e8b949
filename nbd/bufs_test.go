package nbd

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestBufPoolsClearOnPut checks that a request buffer is cleared when it is handed back,
// whether it returns to a pool or is too large for one: it held a read's or a write's
// plaintext.
func TestBufPoolsClearOnPut(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int
		own  bool // a buffer not from get, whose capacity is no size class: put drops it
	}{
		{"small", 100, false},
		{"one class", 4096, false},
		{"between classes", 5000, false},
		{"1 MiB", 1 << 20, false},
		{"not a class", 5000, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var p bufPools
			b := p.get(tc.n)
			if tc.own {
				b = make([]byte, tc.n)
			}
			assert.Len(t, b, tc.n)
			for i := range b {
				b[i] = 0x5a
			}
			p.put(b)
			assert.True(t, bytes.Equal(b, make([]byte, tc.n)), "buffer of %d bytes cleared", tc.n)
		})
	}
}
