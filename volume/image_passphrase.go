package volume

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// ErrPassphraseNotUTF8 means an image passphrase is not valid UTF-8. QEMU reads a LUKS
// passphrase from a secret object and refuses one whose data is not valid UTF-8 ("Data from
// secret ... is not valid UTF-8"), so such a passphrase can neither have come from QEMU nor
// open an image in QEMU: export and import refuse it.
var ErrPassphraseNotUTF8 = errors.New("image passphrase is not valid UTF-8 (QEMU accepts only a UTF-8 secret as a LUKS passphrase)")

// checkImagePassphrase refuses an image passphrase QEMU could not use.
func checkImagePassphrase(pass []byte) error {
	if !utf8.Valid(pass) {
		return ErrPassphraseNotUTF8
	}
	return nil
}

// imagePassphraseRandom is the number of random bytes of a passphrase crkvol makes for an
// image.
const imagePassphraseRandom = 32

// randomImagePassphrase returns a new random image passphrase: 32 random bytes in standard
// base64 (44 ASCII characters, no newline), printable as QEMU requires of a secret. The
// caller clears it.
func randomImagePassphrase(rand io.Reader) ([]byte, error) {
	raw := make([]byte, imagePassphraseRandom)
	defer clear(raw)
	if _, err := io.ReadFull(rand, raw); err != nil {
		return nil, fmt.Errorf("reading a random passphrase: %w", err)
	}
	pass := make([]byte, base64.StdEncoding.EncodedLen(len(raw)))
	base64.StdEncoding.Encode(pass, raw)
	return pass, nil
}
