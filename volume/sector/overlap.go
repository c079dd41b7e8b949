package sector

import "unsafe"

// inexactOverlap reports whether x and y share memory without starting at the same address,
// the one aliasing that in-place encryption cannot support.
func inexactOverlap(x, y []byte) bool {
	if len(x) == 0 || len(y) == 0 || &x[0] == &y[0] {
		return false
	}
	xs, xe := uintptr(unsafe.Pointer(&x[0])), uintptr(unsafe.Pointer(&x[len(x)-1]))
	ys, ye := uintptr(unsafe.Pointer(&y[0])), uintptr(unsafe.Pointer(&y[len(y)-1]))
	return xs <= ye && ys <= xe
}
