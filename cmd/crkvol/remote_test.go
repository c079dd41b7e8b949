package main

import (
	"bytes"
	"strings"
	"testing"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRemoteKeyTextEscaped: key fields a remote service sends are printed with their control
// characters escaped, so a server can neither colour the terminal nor forge output lines.
func TestRemoteKeyTextEscaped(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	a := &app{stdout: &out}
	evil := "\x1b[31mred\nVersion\tforged\u202e"
	k := &kp.Key{ID: "k1", Name: evil, CRN: "crn\r", KeyVersion: &kp.KeyVersion{ID: "v\x07"}}
	require.NoError(t, a.printRemoteKey(k))
	text := out.String()
	assert.NotContains(t, text, "\x1b")
	assert.NotContains(t, text, "\r")
	assert.NotContains(t, text, "\x07")
	assert.NotContains(t, text, "\u202e")
	assert.Equal(t, 1, strings.Count(text, "\nVersion"), "one Version line, not a forged second one:\n%s", text)
	assert.Contains(t, text, `\x1b[31mred\nVersion`)
}
