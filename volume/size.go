package volume

import (
	"errors"
	"fmt"
	"math/big"
	"strings"
)

// SizeForms describes the sizes [ParseQuantity] and [ParseSize] accept, for error messages
// and help texts.
const SizeForms = "a number of bytes, optionally with a fraction and a unit: " +
	"KiB, MiB, GiB, TiB, PiB or K, M, G, T, P (powers of 1024), KB, MB, GB, TB, PB (powers of 1000), B (bytes); " +
	"units in any case, such as 4096, 64MiB, 1.5GiB or 10GB"

// Errors of size parsing.
var (
	// ErrSizeSyntax means a text is not a size in any of the forms of [SizeForms].
	ErrSizeSyntax = errors.New("invalid size")
	// ErrSizeRange means a size parsed but is out of range for its use: not a whole number of
	// bytes or sectors, not positive where it must be, or beyond 2^62 bytes.
	ErrSizeRange = errors.New("size out of range")
	// errTooLarge is wrapped, with ErrSizeRange, by the error of a size beyond its limit.
	errTooLarge = errors.New("too large")
)

// maxSize is the largest size accepted (4 EiB), far below the int64 limit so that offsets
// and sizes can be added without overflow.
const maxSize = 1 << 62

// maxSizeText bounds the length of a size text, so that parsing does bounded work.
const maxSizeText = 64

// sizeUnits maps each unit suffix, in lower case, to its multiplier. The single letters are
// powers of 1024, as for qemu-img and cryptsetup; a trailing "b" after the letter makes them
// powers of 1000, as the SI prefixes are.
var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kib": 1 << 10, "kb": 1e3,
	"m": 1 << 20, "mib": 1 << 20, "mb": 1e6,
	"g": 1 << 30, "gib": 1 << 30, "gb": 1e9,
	"t": 1 << 40, "tib": 1 << 40, "tb": 1e12,
	"p": 1 << 50, "pib": 1 << 50, "pb": 1e15,
}

// Quantity is a parsed amount of bytes, kept exact: it may be negative or fractional until
// its user asks for a whole number of bytes ([Quantity.Bytes]) or of sectors
// ([Quantity.Sectors]). The zero Quantity is zero bytes.
type Quantity struct {
	text string
	v    *big.Rat // nil for zero
}

// ParseQuantity parses a size in any of the forms of [SizeForms]: an optional sign, decimal
// digits with an optional fraction ("1.5"), optional spaces and an optional unit, matched
// without regard to case. A text in no such form is an error wrapping [ErrSizeSyntax]; range
// checks are left to the methods of the result.
func ParseQuantity(s string) (Quantity, error) {
	bad := func() (Quantity, error) {
		if len(s) > maxSizeText {
			return Quantity{}, fmt.Errorf("volume: %w: %d characters (at most %d): want %s", ErrSizeSyntax, len(s), maxSizeText, SizeForms)
		}
		return Quantity{}, fmt.Errorf("volume: %w %q: want %s", ErrSizeSyntax, s, SizeForms)
	}
	if len(s) > maxSizeText {
		return bad()
	}
	t := strings.TrimSpace(s)
	neg := false
	if t != "" && (t[0] == '-' || t[0] == '+') {
		neg, t = t[0] == '-', t[1:]
	}
	intDigits := leadingDigits(t)
	if intDigits == 0 {
		return bad()
	}
	num := t[:intDigits]
	t = t[intDigits:]
	frac := ""
	if strings.HasPrefix(t, ".") {
		n := leadingDigits(t[1:])
		if n == 0 {
			return bad()
		}
		frac, t = t[1:1+n], t[1+n:]
	}
	mult, ok := sizeUnits[strings.ToLower(strings.TrimSpace(t))]
	if !ok {
		return bad()
	}
	v, ok := new(big.Int).SetString(num+frac, 10)
	if !ok {
		return bad()
	}
	v.Mul(v, big.NewInt(mult))
	if neg {
		v.Neg(v)
	}
	den := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(len(frac))), nil)
	r := new(big.Rat).SetFrac(v, den)
	if r.Sign() == 0 {
		r = nil
	}
	return Quantity{text: s, v: r}, nil
}

// leadingDigits returns how many ASCII digits s starts with.
func leadingDigits(s string) int {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return i
}

// String returns the text the quantity was parsed from.
func (q Quantity) String() string { return q.text }

// Sign returns -1, 0 or +1 as the quantity is negative, zero or positive.
func (q Quantity) Sign() int {
	if q.v == nil {
		return 0
	}
	return q.v.Sign()
}

// Bytes returns the quantity as a whole number of bytes. A fraction of a byte, or a
// magnitude beyond the int64 range, is an error wrapping [ErrSizeRange]; callers compare the
// result with their own limits.
func (q Quantity) Bytes() (int64, error) {
	n, err := q.bytes()
	if err != nil {
		return 0, fmt.Errorf("volume: %w", err)
	}
	return n, nil
}

// bytes is Bytes with errors that do not name the package.
func (q Quantity) bytes() (int64, error) {
	if q.v == nil {
		return 0, nil
	}
	if !q.v.IsInt() {
		return 0, q.fractionError()
	}
	if !q.v.Num().IsInt64() {
		return 0, q.tooLargeError("9223372036854775807 bytes, 2^63-1")
	}
	return q.v.Num().Int64(), nil
}

// Size returns the quantity as the size of a volume: a positive whole number of bytes, at
// most 4 EiB (2^62). Zero, a negative quantity, a fraction of a byte and more than 4 EiB are
// errors wrapping [ErrSizeRange].
func (q Quantity) Size() (int64, error) {
	n, err := q.size()
	if err != nil {
		return 0, fmt.Errorf("volume: %w", err)
	}
	return n, nil
}

// size is Size with errors that do not name the package.
func (q Quantity) size() (int64, error) {
	if q.Sign() <= 0 {
		return 0, fmt.Errorf("%w: want a positive size", ErrSizeRange)
	}
	if err := q.checkMagnitude(); err != nil {
		return 0, err
	}
	return q.bytes()
}

// Sectors returns the quantity in bytes if it is a whole number of sectorSize-byte sectors,
// else an error wrapping [ErrSizeRange]: one saying so, naming the sector size, or, for a
// fraction of a byte or a magnitude beyond 2^62, one saying that. The sign is not checked.
func (q Quantity) Sectors(sectorSize int) (int64, error) {
	if q.v == nil {
		return 0, nil
	}
	if sectorSize <= 0 {
		return 0, fmt.Errorf("volume: %w: sector size %d", ErrSizeRange, sectorSize)
	}
	if !q.v.IsInt() {
		return 0, fmt.Errorf("volume: %w", q.fractionError())
	}
	if err := q.checkMagnitude(); err != nil {
		return 0, fmt.Errorf("volume: %w", err)
	}
	if new(big.Int).Rem(q.v.Num(), big.NewInt(int64(sectorSize))).Sign() != 0 {
		return 0, fmt.Errorf("volume: %w: %s is not a whole number of %d-byte sectors", ErrSizeRange, q.bytesText(), sectorSize)
	}
	return q.v.Num().Int64(), nil
}

// checkMagnitude refuses a quantity whose magnitude is beyond maxSize.
func (q Quantity) checkMagnitude() error {
	if q.v == nil {
		return nil
	}
	if new(big.Rat).Abs(q.v).Cmp(new(big.Rat).SetInt64(maxSize)) > 0 {
		return q.tooLargeError("4EiB, 2^62 bytes")
	}
	return nil
}

// fractionError is the ErrSizeRange of a quantity that is not a whole number of bytes.
func (q Quantity) fractionError() error {
	return fmt.Errorf("%w: %s is not a whole number of bytes", ErrSizeRange, q.bytesText())
}

// tooLargeError is the ErrSizeRange of a quantity beyond limit, also wrapping errTooLarge.
func (q Quantity) tooLargeError(limit string) error {
	return fmt.Errorf("%w: %s is %w (at most %s)", ErrSizeRange, q.bytesText(), errTooLarge, limit)
}

// bytesText names the quantity in an error: its text as given, followed by "bytes" when it
// has no unit ("0.5 bytes", "1.5KiB").
func (q Quantity) bytesText() string {
	t := strings.TrimSpace(q.text)
	if t == "" {
		t = approx(q.rat())
	}
	if strings.IndexFunc(t, func(r rune) bool { return r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' }) < 0 {
		return t + " bytes"
	}
	return t
}

// rat returns the quantity as a big.Rat (zero for the zero Quantity).
func (q Quantity) rat() *big.Rat {
	if q.v == nil {
		return new(big.Rat)
	}
	return q.v
}

// approx renders r in decimal: exact for a whole number, else to three decimals, trailing
// zeros dropped.
func approx(r *big.Rat) string {
	if r.IsInt() {
		return r.Num().String()
	}
	s := strings.TrimRight(r.FloatString(3), "0")
	return strings.TrimSuffix(s, ".")
}

// ParseSize parses a positive size in any of the forms of [SizeForms] ("64MiB", "1.5GiB",
// "10GB", "4096") and returns it in bytes. A text in no such form is an error wrapping
// [ErrSizeSyntax]; zero, a negative size, a fraction of a byte and a size beyond 2^62 bytes
// are errors wrapping [ErrSizeRange].
func ParseSize(s string) (int64, error) {
	q, err := ParseQuantity(s)
	if err != nil {
		return 0, err
	}
	n, err := q.size()
	if err != nil {
		return 0, fmt.Errorf("volume: size %q: %w", s, err)
	}
	return n, nil
}

// FormatSize renders a byte count with the largest exact binary unit.
func FormatSize(n int64) string {
	for _, u := range []struct {
		name string
		mult int64
	}{{"PiB", 1 << 50}, {"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.mult && n%u.mult == 0 {
			return fmt.Sprintf("%d%s", n/u.mult, u.name)
		}
	}
	return fmt.Sprintf("%dB", n)
}
