package volume

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseSize parses a size in bytes, optionally with a binary suffix: K/KiB, M/MiB, G/GiB,
// T/TiB (case-insensitive; 1 KiB = 1024 bytes).
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	lower := strings.ToLower(t)
	for _, u := range []struct {
		suffixes []string
		mult     int64
	}{
		{[]string{"tib", "t"}, 1 << 40},
		{[]string{"gib", "g"}, 1 << 30},
		{[]string{"mib", "m"}, 1 << 20},
		{[]string{"kib", "k"}, 1 << 10},
		{[]string{"b"}, 1},
	} {
		found := false
		for _, suf := range u.suffixes {
			if strings.HasSuffix(lower, suf) {
				t, mult, found = strings.TrimSpace(t[:len(t)-len(suf)]), u.mult, true
				break
			}
		}
		if found {
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("volume: size %q: want a positive number of bytes, optionally with KiB, MiB, GiB or TiB", s)
	}
	if n > (1<<62)/mult {
		return 0, fmt.Errorf("volume: size %q is too large", s)
	}
	return n * mult, nil
}

// FormatSize renders a byte count with the largest exact binary unit.
func FormatSize(n int64) string {
	for _, u := range []struct {
		name string
		mult int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.mult && n%u.mult == 0 {
			return fmt.Sprintf("%d%s", n/u.mult, u.name)
		}
	}
	return fmt.Sprintf("%dB", n)
}
