package main

import (
	"bytes"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"testing"
)

func TestParseConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		doc  string
		want map[string]string
		err  error
		line int
	}{
		{name: "empty", doc: "", want: map[string]string{}},
		{name: "comments and blank lines", doc: "# c\n\n  # d\n", want: map[string]string{}},
		{name: "all keys", doc: "state = \"/s\"\nkms-url = \"https://k\" # remote\nkms-instance = \"i\"\nkms-ca = \"ca.pem\"\nkms-insecure = true\n",
			want: map[string]string{"CRKVOL_STATE": "/s", "CRKVOL_KMS_URL": "https://k", "CRKVOL_KMS_INSTANCE": "i",
				"CRKVOL_KMS_CA": "/etc/crkvol/ca.pem", "CRKVOL_KMS_INSECURE": "1"}},
		{name: "relative state", doc: "state = 'data'\n", want: map[string]string{"CRKVOL_STATE": "/etc/crkvol/data"}},
		{name: "insecure false", doc: "kms-insecure = false\n", want: map[string]string{"CRKVOL_KMS_INSECURE": "0"}},
		{name: "unknown key", doc: "state = \"/s\"\n\nstat = \"/t\"\n", err: errConfigUnknown, line: 3},
		{name: "table", doc: "[kms]\nurl = \"x\"\n", err: errConfigUnknown, line: 1},
		{name: "apikey", doc: "kms-url = \"x\"\napikey = \"secret\"\n", err: errConfigSecret, line: 2},
		{name: "apikey after unknown", doc: "foo = 1\nAPIKEY = \"secret\"\n", err: errConfigSecret, line: 2},
		{name: "token", doc: "token = \"secret\"\n", err: errConfigSecret, line: 1},
		{name: "unquoted", doc: "state = /s\n", err: errConfigSyntax, line: 1},
		{name: "bool as string", doc: "\nkms-insecure = \"yes\"\n", err: errConfigSyntax, line: 2},
		{name: "string as number", doc: "kms-url = 3\n", err: errConfigSyntax, line: 1},
		{name: "duplicate", doc: "state = \"a\"\nstate = \"b\"\n", err: errConfigSyntax, line: 2},
		{name: "empty value", doc: "state = \"\"\n", err: errConfigSyntax},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseConfig("/etc/crkvol/config.toml", "/etc/crkvol", []byte(tt.doc))
			if tt.err != nil {
				var ce *configError
				if !errors.Is(err, tt.err) || !errors.As(err, &ce) {
					t.Fatalf("error %v, want %v in a *configError", err, tt.err)
				}
				if ce.File != "/etc/crkvol/config.toml" || ce.Line != tt.line {
					t.Errorf("error at %s:%d, want line %d", ce.File, ce.Line, tt.line)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// FuzzParseConfig checks that no document panics the parser and that every error is a
// *configError naming the file.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{"", "state = \"/s\"\n", "kms-insecure = true\n", "apikey = \"x\"\n", "[a]\nb = 1\n", "state = /s"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		_, err := parseConfig("c.toml", "/d", doc)
		var ce *configError
		if err != nil && (!errors.As(err, &ce) || ce.File != "c.toml") {
			t.Fatalf("error %v is not a *configError for c.toml", err)
		}
	})
}

// TestConfigFileSize: a config file larger than 64 KiB is refused with its size, before it
// is parsed.
func TestConfigFileSize(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		size int
		want string
	}{
		{"at the limit", 64 << 10, ""},
		{"over the limit", 64<<10 + 1, " is 65537 bytes; the limit is 64 KiB"},
		{"large", 10 << 20, " is 10485760 bytes; the limit is 64 KiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "config.toml")
			if err := os.WriteFile(path, bytes.Repeat([]byte("#"), tc.size), 0o644); err != nil {
				t.Fatal(err)
			}
			a := &app{getenv: func(string) string { return "" }}
			a.config.flag = path
			err := a.loadConfig()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, errConfigTooLarge) || err.Error() != "config file "+path+tc.want {
				t.Fatalf("error %v, want %q (errConfigTooLarge)", err, "config file "+path+tc.want)
			}
		})
	}
}
