package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"crkvol/keyslot"
)

// TestLUKS1StatusAndAdopt: `volume status` of a LUKS1 image describes it (text and JSON) and
// fails; `volume adopt` refuses it; both name it LUKS1 with cryptsetup convert as the hint,
// never "corrupt". The image comes from keyslot.FormatLUKS1, so no tool is needed
// (luks1.txtar does the same, and the adoption after conversion, with cryptsetup).
func TestLUKS1StatusAndAdopt(t *testing.T) {
	t.Parallel()
	env := testEnv(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "old disk.img")
	mk := []byte("0123456789abcdef0123456789abcdeF0123456789abcdef0123456789abcdeF")
	area, err := keyslot.FormatLUKS1(context.Background(), mk, []byte("secret"), keyslot.LUKS1Options{UUID: "5e1f7c2a-1b3d-4c5e-8f90-a1b2c3d4e5f6"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, append(area, make([]byte, 4096)...), 0o600); err != nil {
		t.Fatal(err)
	}
	quoted := "'" + path + "'"
	wantErr := "crkvol: volume status: " + path + " is a LUKS1 image; convert it to LUKS2 first\n" +
		"crkvol: hint: cryptsetup convert --type luks2 " + quoted + " converts it in place (back up its header first: cryptsetup luksHeaderBackup " + quoted + " --header-backup-file FILE)\n" +
		"crkvol: hint: then crkvol volume adopt " + quoted + " --key ID --passphrase-file FILE brings it under a root key (FILE holds one of its passphrases)\n"

	code, out, stderr := runCLI(t, env, "volume", "status", path)
	if code != 1 || stderr != wantErr {
		t.Errorf("volume status: exit %d, stderr:\n%s\nwant exit 1, stderr:\n%s", code, stderr, wantErr)
	}
	for _, line := range []string{
		"Path       " + path,
		"Format     LUKS1 (not a crkvol volume: crkvol volumes are LUKS2)",
		"UUID       5e1f7c2a-1b3d-4c5e-8f90-a1b2c3d4e5f6",
		"Cipher     aes-xts-plain64, 512-bit key, hash sha256",
		"Data       at 2068480",
		"Keyslot 0  luks1, pbkdf2-sha256/1000",
	} {
		if !strings.Contains(out, line+"\n") {
			t.Errorf("volume status: no line %q in\n%s", line, out)
		}
	}

	code, out, _ = runCLI(t, env, "--json", "volume", "status", path)
	var st luks1StatusJSON
	if err := json.Unmarshal([]byte(out), &st); err != nil || code != 1 {
		t.Fatalf("volume status --json: exit %d, %v: %s", code, err, out)
	}
	want := luks1StatusJSON{Path: path, Format: "LUKS1", UUID: "5e1f7c2a-1b3d-4c5e-8f90-a1b2c3d4e5f6", Cipher: "aes-xts-plain64",
		KeyBits: 512, Hash: "sha256", PayloadOffset: 2068480, Keyslots: []luks1SlotJSON{{ID: 0, KDF: "pbkdf2-sha256/1000"}}}
	if got, _ := json.Marshal(st); string(got) != string(must(json.Marshal(want))) {
		t.Errorf("volume status --json:\n%s\nwant\n%s", got, must(json.Marshal(want)))
	}

	pass := filepath.Join(dir, "pass")
	if err := os.WriteFile(pass, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, stderr = runCLI(t, env, "volume", "adopt", path, "--key", "00000000-0000-4000-8000-000000000000", "--passphrase-file", pass)
	if wantAdopt := strings.Replace(wantErr, "volume status", "volume adopt", 1); code != 1 || out != "" || stderr != wantAdopt {
		t.Errorf("volume adopt: exit %d, stdout %q, stderr:\n%s\nwant exit 1, stderr:\n%s", code, out, stderr, wantAdopt)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
