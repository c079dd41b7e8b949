package volume

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseSize(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"4096", 4096}, {"512B", 512}, {"512b", 512}, {" 3 MiB ", 3 << 20},
		{"1KiB", 1024}, {"1k", 1024}, {"1K", 1024}, {"1kib", 1024}, {"1KB", 1000}, {"1kb", 1000},
		{"10MiB", 10 << 20}, {"10m", 10 << 20}, {"10MB", 10_000_000},
		{"2GiB", 2 << 30}, {"2G", 2 << 30}, {"2GB", 2_000_000_000},
		{"1TiB", 1 << 40}, {"1T", 1 << 40}, {"1TB", 1_000_000_000_000},
		{"1PiB", 1 << 50}, {"1P", 1 << 50}, {"1PB", 1_000_000_000_000_000},
		{"1.5GiB", 3 << 29}, {"0.5KiB", 512}, {"1.0", 1}, {"2.000KB", 2000}, {"1.25k", 1280},
		{"+7", 7}, {"4096PiB", 1 << 62},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseSize(tc.in)
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
	for _, tc := range []struct {
		in   string
		want error
	}{
		{"", ErrSizeSyntax}, {"GiB", ErrSizeSyntax}, {"1 2", ErrSizeSyntax}, {"1EiB", ErrSizeSyntax},
		{"1.", ErrSizeSyntax}, {".5", ErrSizeSyntax}, {"1e6", ErrSizeSyntax}, {"0x10", ErrSizeSyntax},
		{"1,000", ErrSizeSyntax}, {"--1", ErrSizeSyntax}, {"1 KiB B", ErrSizeSyntax}, {"1iB", ErrSizeSyntax},
		{"0", ErrSizeRange}, {"-1", ErrSizeRange}, {"0.5", ErrSizeRange}, {"1.0000001GiB", ErrSizeRange},
		{"4097PiB", ErrSizeRange}, {"99999999999TiB", ErrSizeRange},
		{"1" + string(make([]byte, 100)), ErrSizeSyntax},
	} {
		t.Run("bad "+tc.in, func(t *testing.T) {
			_, err := ParseSize(tc.in)
			require.Error(t, err)
			assert.ErrorIs(t, err, tc.want)
		})
	}
	assert.Equal(t, "1GiB", FormatSize(1<<30))
	assert.Equal(t, "1536KiB", FormatSize(1536<<10))
	assert.Equal(t, "1000B", FormatSize(1000))
}

func TestParseSizeErrorNamesForms(t *testing.T) {
	t.Parallel()
	_, err := ParseSize("12 parsecs")
	require.ErrorIs(t, err, ErrSizeSyntax)
	for _, want := range []string{`"12 parsecs"`, "KiB", "MiB", "GiB", "TiB", "PiB", "KB", "PB", "1.5GiB", "case"} {
		assert.Contains(t, err.Error(), want)
	}
}

func TestQuantity(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in          string
		sign        int
		bytes       int64
		bytesErr    bool
		sectors4096 int64
		sectorsErr  bool
	}{
		{in: "0", sign: 0, bytes: 0, sectors4096: 0},
		{in: "-1", sign: -1, bytes: -1, sectorsErr: true},
		{in: "-2KiB", sign: -1, bytes: -2048, sectorsErr: true},
		{in: "1.5", sign: 1, bytesErr: true, sectorsErr: true},
		{in: "1.5GiB", sign: 1, bytes: 3 << 29, sectors4096: 3 << 29},
		{in: "1.0000001GiB", sign: 1, bytesErr: true, sectorsErr: true},
		{in: "4097", sign: 1, bytes: 4097, sectorsErr: true},
		{in: "8KiB", sign: 1, bytes: 8192, sectors4096: 8192},
		{in: "5000PB", sign: 1, bytes: 5e18, sectorsErr: true},
		{in: "10000PB", sign: 1, bytesErr: true, sectorsErr: true},
		{in: "-10000PB", sign: -1, bytesErr: true, sectorsErr: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			q, err := ParseQuantity(tc.in)
			require.NoError(t, err)
			assert.Equal(t, tc.in, q.String())
			assert.Equal(t, tc.sign, q.Sign())
			n, err := q.Bytes()
			if tc.bytesErr {
				assert.ErrorIs(t, err, ErrSizeRange)
			} else {
				require.NoError(t, err)
				assert.Equal(t, tc.bytes, n)
			}
			n, err = q.Sectors(4096)
			if tc.sectorsErr {
				require.ErrorIs(t, err, ErrSizeRange)
				if tc.sign > 0 && !errors.Is(err, errTooLarge) {
					assert.Contains(t, err.Error(), "4096-byte sector")
				}
			} else {
				require.NoError(t, err)
				assert.Equal(t, tc.sectors4096, n)
			}
		})
	}
	var zero Quantity
	assert.Equal(t, 0, zero.Sign())
	n, err := zero.Bytes()
	require.NoError(t, err)
	assert.Zero(t, n)
}
