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
				switch {
				case tc.sign > 0 && tc.bytesErr && !errors.Is(err, errTooLarge):
					assert.Contains(t, err.Error(), "not a whole number of bytes", "a fraction of a byte is not a sector problem")
				case tc.sign > 0 && !errors.Is(err, errTooLarge):
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

// TestSizeErrorMessages: each range error says what is wrong with the value as given: a
// fraction of a byte as such (not as a sector problem), a value beyond the limit as too large
// (not as unaligned), an unaligned whole number of bytes as unaligned.
func TestSizeErrorMessages(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in      string
		use     string // "size", "sectors", "bytes"
		want    string
		tooMuch bool
	}{
		{in: "1.0000000000000000000001MiB", use: "sectors", want: "1.0000000000000000000001MiB is not a whole number of bytes"},
		{in: "1.0000000000000000000001MiB", use: "size", want: "1.0000000000000000000001MiB is not a whole number of bytes"},
		{in: "0.5", use: "bytes", want: "0.5 bytes is not a whole number of bytes"},
		{in: "1.5", use: "sectors", want: "1.5 bytes is not a whole number of bytes"},
		{in: "12345678901234567890123", use: "sectors", want: "12345678901234567890123 bytes is too large (at most 4EiB, 2^62 bytes)", tooMuch: true},
		{in: "9223372036854775807", use: "sectors", want: "9223372036854775807 bytes is too large (at most 4EiB, 2^62 bytes)", tooMuch: true},
		{in: "9223372036854775807", use: "size", want: "9223372036854775807 bytes is too large (at most 4EiB, 2^62 bytes)", tooMuch: true},
		{in: "5000PiB", use: "sectors", want: "5000PiB is too large (at most 4EiB, 2^62 bytes)", tooMuch: true},
		{in: "-5000PiB", use: "sectors", want: "-5000PiB is too large (at most 4EiB, 2^62 bytes)", tooMuch: true},
		{in: "12345678901234567890123", use: "bytes", want: "12345678901234567890123 bytes is too large (at most 9223372036854775807 bytes, 2^63-1)", tooMuch: true},
		{in: "4097", use: "sectors", want: "4097 bytes is not a whole number of 4096-byte sectors"},
		{in: "1.5KiB", use: "sectors", want: "1.5KiB is not a whole number of 4096-byte sectors"},
		{in: "0", use: "size", want: "want a positive size"},
	} {
		t.Run(tc.use+" "+tc.in, func(t *testing.T) {
			q, err := ParseQuantity(tc.in)
			require.NoError(t, err)
			switch tc.use {
			case "size":
				_, err = q.Size()
			case "sectors":
				_, err = q.Sectors(4096)
			case "bytes":
				_, err = q.Bytes()
			}
			require.ErrorIs(t, err, ErrSizeRange)
			assert.Equal(t, "volume: size out of range: "+tc.want, err.Error())
			assert.Equal(t, tc.tooMuch, errors.Is(err, errTooLarge))
		})
	}
}
