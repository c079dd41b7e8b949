package volume

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseSize(t *testing.T) {
	t.Parallel()
	good := map[string]int64{
		"4096": 4096, "1KiB": 1024, "1k": 1024, "10MiB": 10 << 20, "10m": 10 << 20, "2GiB": 2 << 30,
		"2G": 2 << 30, "1TiB": 1 << 40, " 3 MiB ": 3 << 20, "512B": 512,
	}
	for in, want := range good {
		got, err := ParseSize(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	for _, bad := range []string{"", "0", "-1", "1.5GiB", "GiB", "1PiB", "1 2", "99999999999TiB"} {
		_, err := ParseSize(bad)
		assert.Error(t, err, bad)
	}
	assert.Equal(t, "1GiB", FormatSize(1<<30))
	assert.Equal(t, "1536KiB", FormatSize(1536<<10))
	assert.Equal(t, "1000B", FormatSize(1000))
}
