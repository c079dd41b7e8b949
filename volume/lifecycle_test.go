package volume_test

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"crkvol/volume"
)

func TestCursorAfter(t *testing.T) {
	for _, tc := range []struct {
		next, cursor string
		want         bool
	}{
		{"8", "7", true},
		{"10", "9", true}, // numbers, not strings: "10" < "9" as text
		{"7", "7", false},
		{"3", "7", false},
		{"", "7", false},
		{"1", "", true},
		{"", "", false},
		{"b", "a", true}, // not decimal: after whenever it differs
		{"a", "a", false},
		{"x", "7", true},
	} {
		assert.Equal(t, tc.want, volume.CursorAfter(tc.next, tc.cursor), "%q after %q", tc.next, tc.cursor)
	}
}
