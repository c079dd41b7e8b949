package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestReportCapsLongMessages: in text mode a message of more than maxMessageLines lines shows
// its first lines and one line counting the rest; --json keeps the whole message.
func TestReportCapsLongMessages(t *testing.T) {
	t.Parallel()
	lines := func(n int) string {
		l := make([]string, n)
		for i := range l {
			l[i] = fmt.Sprintf("line %d", i+1)
		}
		return strings.Join(l, "\n")
	}
	for _, tc := range []struct {
		name string
		n    int
		want string
	}{
		{"one line", 1, "crkvol: sim run: line 1\ncrkvol: hint: h\n"},
		{"ten lines", 10, "crkvol: sim run: " + lines(10) + "\ncrkvol: hint: h\n"},
		{"thirty lines", 30, "crkvol: sim run: " + lines(10) + "\ncrkvol: … and 20 more lines (--json shows them all)\ncrkvol: hint: h\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := failureBody{Command: "sim run", Message: lines(tc.n), ExitCode: 1, Hints: []string{"h"}}
			var text, js bytes.Buffer
			report(&text, false, f)
			assert.Equal(t, tc.want, text.String())
			report(&js, true, f)
			var got failure
			require.NoError(t, json.Unmarshal(js.Bytes(), &got))
			assert.Equal(t, lines(tc.n), got.Error.Message)
		})
	}
}
