package crk

import (
	"fmt"
	"unicode/utf8"
)

// checkLabel refuses a key name or description (field names which, for the message) that a
// person reading it in a table, a log or a terminal could be misled by: bytes that are not
// UTF-8, C0 and C1 control characters and DEL (newlines, tabs, escape sequences), and the
// Unicode bidirectional formatting characters (U+061C, U+200E, U+200F, U+202A to U+202E,
// U+2066 to U+2069), which reorder the text around them so that what is shown is not what
// is stored. The error wraps [ErrInvalidArgument] and names the field, the character (never
// the text itself, which may be the trap) and its byte offset. It only checks new text:
// names stored before keep working.
func checkLabel(field, s string) error {
	for i, r := range s {
		if r == utf8.RuneError {
			if _, n := utf8.DecodeRuneInString(s[i:]); n <= 1 {
				return fmt.Errorf("%w: %s is not valid UTF-8 (byte %d is 0x%02x)", ErrInvalidArgument, field, i, s[i])
			}
		}
		switch {
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f):
			return fmt.Errorf("%w: %s contains the control character U+%04X at byte %d", ErrInvalidArgument, field, r, i)
		case isBidiFormat(r):
			return fmt.Errorf("%w: %s contains the bidirectional formatting character U+%04X at byte %d, which would show it in another order than it is stored", ErrInvalidArgument, field, r, i)
		}
	}
	return nil
}

// isBidiFormat reports whether r is one of Unicode's explicit bidirectional formatting
// characters: the marks ALM, LRM and RLM, the embeddings and overrides LRE, RLE, PDF, LRO,
// RLO, and the isolates LRI, RLI, FSI, PDI.
func isBidiFormat(r rune) bool {
	return r == 0x061c || r == 0x200e || r == 0x200f || (r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069)
}
