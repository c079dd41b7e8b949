package main

import (
	"fmt"

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

// checkSectorSize refuses a sector size LUKS2 does not allow.
func checkSectorSize(n int) error {
	switch n {
	case 512, 1024, 2048, 4096:
		return nil
	}
	return fmt.Errorf("--sector-size %d: want 512, 1024, 2048 or 4096", n)
}
