package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestKeyWrapBadInput: key wrap and key unwrap refuse bad input before they open the key
// service, naming the flag; usage errors exit 2, values out of range 1. (In process: no
// script command is spent on them.)
func TestKeyWrapBadInput(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	secret := write("secret.bin", []byte("secret!\n"))
	big := write("big.bin", bytes.Repeat([]byte("x"), maxWrapPlaintext+1))
	exact := write("exact.bin", bytes.Repeat([]byte("x"), maxWrapPlaintext))
	empty := write("empty.bin", nil)
	existing := write("existing.out", []byte("keep"))
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"bad base64", []string{"key", "wrap", "k", "--plaintext", "not base64!"}, 2, `^crkvol: key wrap: --plaintext is not standard base64\n`},
		{"both plaintexts", []string{"key", "wrap", "k", "--plaintext", "aGVsbG8=", "--plaintext-file", secret}, 2, `give --plaintext or --plaintext-file, not both`},
		{"empty plaintext", []string{"key", "wrap", "k", "--plaintext", ""}, 1, `^crkvol: key wrap: --plaintext: empty; a key service wraps 1 to 7168 bytes\n`},
		{"empty file", []string{"key", "wrap", "k", "--plaintext-file", empty}, 1, `--plaintext-file .*empty.bin: empty; a key service wraps 1 to 7168 bytes\n`},
		{"large plaintext", []string{"key", "wrap", "k", "--plaintext", strings.Repeat("AAAA", 2400)}, 1, `--plaintext: 7200 bytes is too large; a key service wraps at most 7168 bytes \(Key Protect's limit\)`},
		{"large file", []string{"key", "wrap", "k", "--plaintext-file", big}, 1, `--plaintext-file .*big.bin: more than 7168 bytes; a key service wraps at most 7168 bytes \(Key Protect's limit\)`},
		{"missing file", []string{"key", "wrap", "k", "--plaintext-file", filepath.Join(dir, "nosuch")}, 1, `--plaintext-file: open .*nosuch: no such file or directory`},
		{"no ciphertext", []string{"key", "unwrap", "k"}, 2, `give the ciphertext with --ciphertext B64 or --ciphertext-file FILE`},
		{"both ciphertexts", []string{"key", "unwrap", "k", "--ciphertext", "Q1JLMQ==", "--ciphertext-file", secret}, 2, `give --ciphertext or --ciphertext-file, not both`},
		{"bad ciphertext", []string{"key", "unwrap", "k", "--ciphertext", "%%%"}, 2, `^crkvol: key unwrap: --ciphertext is not standard base64\n`},
		{"empty ciphertext", []string{"key", "unwrap", "k", "--ciphertext", ""}, 2, `--ciphertext is not standard base64`},
		{"bad ciphertext file", []string{"key", "unwrap", "k", "--ciphertext-file", secret}, 2, `--ciphertext-file .*secret.bin: not standard base64\n`},
		{"output stdout with json", []string{"--json", "key", "unwrap", "k", "--ciphertext", "Q1JLMQ==", "--output", "-"}, 2, `--json needs --output FILE`},
		{"output exists", []string{"key", "unwrap", "k", "--ciphertext", "Q1JLMQ==", "--output", existing}, 1, `existing.out: file exists; give --force to overwrite it`},
		{"output in state", []string{"key", "unwrap", "k", "--ciphertext", "Q1JLMQ==", "--output", filepath.Join(dir, "state", "x")}, 1, `refusing`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"CRKVOL_STATE": filepath.Join(dir, "state")}
			var stdout, stderr bytes.Buffer
			code := run(tc.args, strings.NewReader(""), &stdout, &stderr, func(k string) string { return env[k] })
			assert.Equal(t, tc.code, code, stderr.String())
			assert.Regexp(t, regexp.MustCompile(tc.stderr), stderr.String())
			assert.Empty(t, stdout.String())
			_, err := os.Stat(filepath.Join(dir, "state"))
			assert.True(t, os.IsNotExist(err), "the state directory was created")
		})
	}
	// The limit is Key Protect's: exactly 7168 bytes are read in full.
	b, err := readPlaintextFile(exact)
	assert.NoError(t, err)
	assert.Len(t, b, maxWrapPlaintext)
	got, _ := os.ReadFile(existing)
	assert.Equal(t, "keep", string(got))
}
