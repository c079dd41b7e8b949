package main

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestKMSStore: --store, else CRKVOL_STORE, selects PostgreSQL or a state directory; other
// values are usage errors that never show a password.
func TestKMSStore(t *testing.T) {
	for _, tc := range []struct {
		name, flag, env  string
		wantDir, wantURL string
		wantErr          bool
	}{
		{name: "default", wantDir: "/st"},
		{name: "postgres flag", flag: "postgres://u:pw@h/db", wantDir: "/st", wantURL: "postgres://u:pw@h/db"},
		{name: "postgresql env", env: "postgresql://h/db", wantDir: "/st", wantURL: "postgresql://h/db"},
		{name: "flag wins", flag: "bolt:/other", env: "postgres://h/db", wantDir: "/other"},
		{name: "bolt store file", env: "bolt:/other/crk.db", wantDir: "/other"},
		{name: "other scheme", flag: "mysql://u:pw@h/db", wantErr: true},
		{name: "plain path", flag: "/somewhere", wantErr: true},
		{name: "empty bolt", flag: "bolt:", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &app{stateDir: "/st", store: tc.flag, getenv: func(k string) string {
				if k == storeEnv {
					return tc.env
				}
				return ""
			}}
			s, err := a.kmsStore()
			if tc.wantErr {
				var u usageError
				assert.True(t, errors.As(err, &u), "%v", err)
				assert.NotContains(t, err.Error(), "pw")
				return
			}
			assert.NoError(t, err)
			assert.Equal(t, kmsStore{dir: tc.wantDir, url: tc.wantURL}, s)
			assert.NotContains(t, s.redacted(), ":pw@")
		})
	}
}

// TestParseBoltStore: bolt:DIR, bolt:DIR/crk.db and plain paths name a state directory;
// URLs do not.
func TestParseBoltStore(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"bolt:/a/b", "/a/b", true},
		{"bolt:/a/b/crk.db", "/a/b", true},
		{"/a/b/", "/a/b", true},
		{"rel/crk.db", "rel", true},
		{"postgres://h/db", "", false},
		{"mysql://h/db", "", false},
		{"bolt:", "", false},
		{"", "", false},
	} {
		got, ok := parseBoltStore(tc.in)
		assert.Equal(t, tc.ok, ok, tc.in)
		assert.Equal(t, tc.want, got, tc.in)
	}
}
