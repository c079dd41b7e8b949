package crk

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLabelsRefused: a key name, key description or registration description that is not
// UTF-8, holds a control character or a bidirectional formatting character is refused with
// ErrInvalidArgument naming the field and the character, and nothing is created; plain
// text in any script passes.
func TestLabelsRefused(t *testing.T) {
	t.Parallel()
	svc, err := Open(filepath.Join(t.TempDir(), "crk.db"), Options{MasterKey: make([]byte, 32)})
	require.NoError(t, err)
	defer svc.Close()
	ctx := context.Background()
	const crn = "crn:v1:local:public:is:local:a/crkvol::volume:v1"
	root, err := svc.CreateKey(ctx, CreateOptions{Name: "plain", Type: RootKey})
	require.NoError(t, err)
	_, err = svc.Register(ctx, root.ID, crn, RegisterOptions{Description: "ok"})
	require.NoError(t, err)

	for _, tc := range []struct {
		name, text string
		want       string // in the message, beside the field's name; "" when accepted
	}{
		{"plain", "db-key 2026", ""},
		{"other scripts", "clé de la base ключ 鍵 مفتاح", ""},
		{"emoji and combining marks", "key 🔑 e\u0301", ""},
		{"invalid UTF-8", "ab\xffcd", "is not valid UTF-8 (byte 2 is 0xff)"},
		{"truncated rune", "ab\xe2\x82", "is not valid UTF-8 (byte 2 is 0xe2)"},
		{"NUL", "ab\x00cd", "control character U+0000 at byte 2"},
		{"newline", "ab\ncd", "control character U+000A"},
		{"tab", "ab\tcd", "control character U+0009"},
		{"escape sequence", "ab\x1b[31mcd", "control character U+001B"},
		{"DEL", "ab\x7fcd", "control character U+007F"},
		{"C1 CSI", "ab\u009bcd", "control character U+009B"},
		{"C1 NEL", "ab\u0085cd", "control character U+0085"},
		{"right-to-left override", "invoice\u202Efdp.exe", "bidirectional formatting character U+202E at byte 7"},
		{"left-to-right embedding", "ab\u202Acd", "U+202A"},
		{"pop directional formatting", "ab\u202Ccd", "U+202C"},
		{"left-to-right isolate", "ab\u2066cd", "U+2066"},
		{"pop directional isolate", "ab\u2069cd", "U+2069"},
		{"left-to-right mark", "ab\u200Ecd", "U+200E"},
		{"right-to-left mark", "ab\u200Fcd", "U+200F"},
		{"Arabic letter mark", "ab\u061Ccd", "U+061C"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, f := range []struct {
				field string
				do    func(text string) error
			}{
				{"key name", func(text string) error {
					_, err := svc.CreateKey(ctx, CreateOptions{Name: text, Type: RootKey})
					return err
				}},
				{"description", func(text string) error {
					_, err := svc.CreateKey(ctx, CreateOptions{Name: "described", Description: text, Type: StandardKey})
					return err
				}},
				{"registration description", func(text string) error {
					k, err := svc.CreateKey(ctx, CreateOptions{Name: "registered", Type: RootKey})
					require.NoError(t, err)
					_, err = svc.Register(ctx, k.ID, crn, RegisterOptions{Description: text})
					return err
				}},
				{"registration description", func(text string) error {
					_, err := svc.UpdateRegistration(ctx, root.ID, crn, RegistrationUpdate{Description: &text})
					return err
				}},
			} {
				before, err := svc.ListKeys(ctx, ListOptions{})
				require.NoError(t, err)
				err = f.do(tc.text)
				if tc.want == "" {
					assert.NoError(t, err, f.field)
					continue
				}
				require.ErrorIs(t, err, ErrInvalidArgument, f.field)
				assert.Contains(t, err.Error(), f.field+" ")
				assert.Contains(t, err.Error(), tc.want, f.field)
				assert.NotContains(t, err.Error(), tc.text, "the message does not echo the text")
				assert.True(t, utf8.ValidString(err.Error()), "the message is valid UTF-8")
				after, err := svc.ListKeys(ctx, ListOptions{})
				require.NoError(t, err)
				if f.field != "registration description" {
					assert.Len(t, after, len(before), "%s: nothing created", f.field)
				}
			}
		})
	}
	regs, err := svc.ListRegistrations(ctx, RegistrationFilter{KeyID: root.ID})
	require.NoError(t, err)
	require.Len(t, regs, 1)
	assert.Equal(t, "key 🔑 e\u0301", regs[0].Description, "the last accepted description; the refused ones changed nothing")
}

// TestStoredLabelsStillWork: a key whose name and description were stored before they were
// checked (written here straight into the store) is still read, listed, rotated and
// disabled: only new text is checked.
func TestStoredLabelsStillWork(t *testing.T) {
	t.Parallel()
	svc, err := Open(filepath.Join(t.TempDir(), "crk.db"), Options{MasterKey: make([]byte, 32)})
	require.NoError(t, err)
	defer svc.Close()
	ctx := context.Background()
	k, err := svc.CreateKey(ctx, CreateOptions{Name: "legacy", Type: RootKey})
	require.NoError(t, err)
	const oldName, oldDesc = "old\u202Ename", "tab\there \x1b[0m"
	require.NoError(t, svc.update(ctx, func(tx storeTx) error {
		r, err := tx.keyForUpdate(k.ID)
		if err != nil {
			return err
		}
		r.Name, r.Description = oldName, oldDesc
		return tx.putKey(r)
	}))
	got, err := svc.GetKeyMetadata(ctx, k.ID)
	require.NoError(t, err)
	assert.Equal(t, oldName, got.Name)
	assert.Equal(t, oldDesc, got.Description)
	list, err := svc.ListKeys(ctx, ListOptions{})
	require.NoError(t, err)
	require.Len(t, list, 1)
	assert.Equal(t, oldName, list[0].Name)
	_, err = svc.RotateKey(ctx, k.ID, nil)
	require.NoError(t, err)
	d, err := svc.DisableKey(ctx, k.ID)
	require.NoError(t, err)
	assert.Equal(t, oldName, d.Name)
}

// FuzzCheckLabel: checkLabel accepts exactly the valid UTF-8 without control characters
// (unicode.IsControl: C0, DEL, C1) or bidirectional formatting characters, and its
// refusals wrap ErrInvalidArgument, name the field and are valid UTF-8.
func FuzzCheckLabel(f *testing.F) {
	for _, s := range []string{"", "plain", "ab\xffcd", "\x00", "a\u202Eb", "\u0085", "鍵 🔑", "\xe2\x80\xae", "\xed\xa0\x80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := checkLabel("key name", s)
		ok := utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool { return unicode.IsControl(r) || isBidiFormat(r) })
		if (err == nil) != ok {
			t.Fatalf("checkLabel(%q) = %v, want accepted %v", s, err, ok)
		}
		if err == nil {
			return
		}
		if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "key name ") || !utf8.ValidString(err.Error()) {
			t.Fatalf("checkLabel(%q) = %q", s, err)
		}
	})
}
