package keyslot

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
)

// nested returns a JSON value of depth levels of arrays or objects.
func nested(depth int, objects bool) string {
	if objects {
		return strings.Repeat(`{"a":`, depth-1) + "{}" + strings.Repeat("}", depth-1)
	}
	return strings.Repeat("[", depth) + strings.Repeat("]", depth)
}

// TestJSONDepth: metadata nested deeper than MaxJSONDepth levels (json-c's default, which
// cryptsetup 2.6.1's json_tokener_new uses) is refused before it is decoded; metadata at the
// limit opens. With cryptsetup installed its verdict is checked to be the same.
func TestJSONDepth(t *testing.T) {
	t.Parallel()
	cs := tooltest.Available(t, "cryptsetup")["cryptsetup"]
	tests := []struct {
		name    string
		depth   int // of the whole document, the top-level object being 1
		objects bool
		ok      bool
	}{
		{"arrays at the limit", MaxJSONDepth, false, true},
		{"objects at the limit", MaxJSONDepth, true, true},
		{"arrays one past", MaxJSONDepth + 1, false, false},
		{"objects one past", MaxJSONDepth + 1, true, false},
		{"3000 levels", 3000, false, false},
		{"1500 object levels", 1500, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dev, text := baseImage(t, testKDF)
			// The member sits in the top-level object, so its value has depth-1 levels.
			writeRawMetadata(t, dev, strings.TrimSuffix(text, "}")+`,"x-deep":`+nested(tt.depth-1, tt.objects)+"}")
			_, err := Open(dev, nil)
			if tt.ok {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, ErrInvalidMetadata)
				assert.Contains(t, err.Error(), fmt.Sprintf("nested more than %d levels", MaxJSONDepth))
			}
			if cs != "" {
				path := filepath.Join(t.TempDir(), "deep.img")
				require.NoError(t, os.WriteFile(path, dev.buf, 0o600))
				csErr := tryRun(cs, "luksDump", path)
				assert.Equal(t, tt.ok, csErr == nil, "cryptsetup luksDump: %v", csErr)
			}
		})
	}
}

// TestTokenDepth: a token that would make the metadata deeper than MaxJSONDepth is refused
// when added, with the limit in the message.
func TestTokenDepth(t *testing.T) {
	t.Parallel()
	_, img, _ := newMemImage(t, "pass")
	// A token sits at level 3 (document, "tokens", the token), so its own depth may be
	// MaxJSONDepth-2.
	ok := `{"type":"t","keyslots":[],"v":` + nested(MaxJSONDepth-3, false) + `}`
	_, err := img.AddToken(AnyToken, []byte(ok))
	require.NoError(t, err)
	deep := `{"type":"t","keyslots":[],"v":` + nested(MaxJSONDepth-2, false) + `}`
	_, err = img.AddToken(AnyToken, []byte(deep))
	require.ErrorIs(t, err, ErrInvalidMetadata)
	assert.Contains(t, err.Error(), "nested more than")
	_, err = img.AddToken(AnyToken, []byte(`{"type":"t","keyslots":[],"v":`+nested(3000, true)+`}`))
	require.ErrorIs(t, err, ErrInvalidMetadata)
}
