package sector

import "unsafe"

// inexactOverlap reports whether the first len(src) bytes of dst (len(dst) >= len(src)) share
// memory with src without starting at the same address, the one aliasing that in-place
// encryption cannot support. It is written to be cheap enough for valid to be inlined.
func inexactOverlap(dst, src []byte) bool {
	n := uintptr(len(src))
	d := uintptr(unsafe.Pointer(unsafe.SliceData(dst))) - uintptr(unsafe.Pointer(unsafe.SliceData(src)))
	return d != 0 && (d < n || -d < n)
}
