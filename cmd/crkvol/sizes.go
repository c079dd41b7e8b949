package main

import (
	"fmt"
	"strconv"
	"strings"

	"crkvol/volume"
)

// sizeFlag is a flag holding a size, an offset or a length in any of the forms of
// volume.SizeForms ("4096", "64MiB", "1.5GiB", "10GB"). A value that does not parse fails in
// Set, so cobra reports it through the flag error path as a usage error (exit status 2); the
// range checks (sign, whole bytes or sectors, fitting the volume) are the command's, ordinary
// errors (exit status 1).
type sizeFlag struct{ q volume.Quantity }

// Set parses s; the error wraps volume.ErrSizeSyntax.
func (f *sizeFlag) Set(s string) error {
	q, err := volume.ParseQuantity(s)
	if err != nil {
		return err
	}
	f.q = q
	return nil
}

// String returns the value as given.
func (f *sizeFlag) String() string { return f.q.String() }

// Type names the value in help texts.
func (f *sizeFlag) Type() string { return "size" }

// offset returns the value as a byte offset: a whole number of bytes, 0 or more. name is the
// flag's name, for errors.
func (f *sizeFlag) offset(name string) (int64, error) {
	return f.nonNegative(name, "byte offset")
}

// count returns the value as a byte count: a whole number of bytes, 0 or more.
func (f *sizeFlag) count(name string) (int64, error) {
	return f.nonNegative(name, "byte count")
}

func (f *sizeFlag) nonNegative(name, what string) (int64, error) {
	if f.q.Sign() < 0 {
		return 0, fmt.Errorf("--%s %s: want a %s of 0 or more", name, f.q, what)
	}
	n, err := f.q.Bytes()
	if err != nil {
		return 0, fmt.Errorf("--%s %s: %w", name, f.q, err)
	}
	return n, nil
}

// volumeSize returns the value as a volume's data size: positive, a whole number of
// sectorSize-byte sectors.
func (f *sizeFlag) volumeSize(name string, sectorSize int) (int64, error) {
	if f.q.Sign() <= 0 {
		return 0, fmt.Errorf("--%s %s: want a positive size of whole %d-byte sectors", name, f.q, sectorSize)
	}
	n, err := f.q.Sectors(sectorSize)
	if err != nil {
		return 0, fmt.Errorf("--%s %s: %w", name, f.q, err)
	}
	return n, nil
}

// size returns the value as a volume's size in bytes, when the sector size is not known yet
// (volume resize): positive, a whole number of bytes, at most 4 EiB.
func (f *sizeFlag) size(name string) (int64, error) {
	n, err := f.q.Size()
	if err != nil {
		return 0, fmt.Errorf("--%s %s: %w", name, f.q, err)
	}
	return n, nil
}

// Wanted values of the integer flags, for their errors.
const (
	wantSectorSize = "512, 1024, 2048 or 4096"
	wantKeyBits    = "256 (AES-128-XTS) or 512 (AES-256-XTS)"
)

// intFlag is an integer flag whose value, if it is not a decimal integer, fails in Set with a
// flagSyntaxError naming the flag and the values wanted (a usage error, exit status 2),
// instead of Go's strconv text; the range check is the command's (exit status 1).
type intFlag struct {
	n int
	// name is the flag's name and want the values it takes, for the error.
	name, want string
}

// Set parses s as a decimal integer.
func (f *intFlag) Set(s string) error {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return &flagSyntaxError{flag: f.name, value: s, want: f.want}
	}
	f.n = n
	return nil
}

// String returns the value in decimal.
func (f *intFlag) String() string { return strconv.Itoa(f.n) }

// Type names the value in help texts.
func (f *intFlag) Type() string { return "int" }

// flagSyntaxError is a flag value that does not parse: run prints it as it is, without
// pflag's `invalid argument "X" for "--flag" flag:` (the app's flag error function unwraps it).
type flagSyntaxError struct{ flag, value, want string }

func (e *flagSyntaxError) Error() string {
	v := e.value
	if strings.TrimSpace(v) == "" {
		v = strconv.Quote(v)
	}
	return fmt.Sprintf("--%s %s: want %s", e.flag, v, e.want)
}

// checkSectorSize refuses a sector size LUKS2 does not allow.
func checkSectorSize(n int) error {
	switch n {
	case 512, 1024, 2048, 4096:
		return nil
	}
	return fmt.Errorf("--sector-size %d: want %s", n, wantSectorSize)
}

// checkKeyBits refuses an aes-xts-plain64 key size crkvol does not make.
func checkKeyBits(n int) error {
	if n != 256 && n != 512 {
		return fmt.Errorf("--cipher-key-bits %d: want %s", n, wantKeyBits)
	}
	return nil
}
