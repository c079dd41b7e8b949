package crk

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/ident"
)

// TestResourceCRNChecked: registrations take only well-formed CRNs (crn:v1: and ten
// segments), as Key Protect does.
func TestResourceCRNChecked(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		k := f.root(t, "crns")
		tests := []struct {
			name, crn string
			ok        bool
		}{
			{"volume", ident.VolumeCRN("0123abcd-89ab-4def-8123-456789abcdef").String(), true},
			{"ibm cloud", "crn:v1:bluemix:public:is:us-south:a/acct::volume:r006-1", true},
			{"prefix only", "crn:volume-1", false},
			{"nine segments", "crn:v1:local:public:is:local:a/crkvol:volume:x", false},
			{"newline", "crn:v1:local:public:is:local:a/crkvol::volume:x\n", false},
			{"too long", "crn:v1:local:public:is:local:a/crkvol::volume:" + strings.Repeat("x", 512), false},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				_, err := f.svc.Register(f.ctx, k.ID, tc.crn, RegisterOptions{})
				if tc.ok {
					require.NoError(t, err)
					return
				}
				assert.ErrorIs(t, err, ErrInvalidArgument)
				assert.ErrorIs(t, err, ident.ErrInvalidCRN)
			})
		}
	})
}

// TestInstanceID: the instance id is a UUID, kept in lower case and matched in either case.
func TestInstanceID(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		const upper = "0123ABCD-89AB-4DEF-8123-456789ABCDEF"
		path := filepath.Join(t.TempDir(), "crk.db")
		mk := material(32, 5)
		svc, err := st.open(path, Options{MasterKey: mk, Instance: upper})
		require.NoError(t, err)
		assert.Equal(t, strings.ToLower(upper), svc.Instance())
		k, err := svc.CreateRootKey(t.Context(), "inst")
		require.NoError(t, err)
		assert.Equal(t, ident.KeyCRN(ident.DefaultLocation, ident.DefaultAccount, strings.ToLower(upper), k.ID).String(), k.CRN)
		require.NoError(t, svc.Close())

		tests := []struct {
			name, instance string
			ok             bool
		}{
			{"same, upper case", upper, true},
			{"same, lower case", strings.ToLower(upper), true},
			{"empty: the stored one", "", true},
			{"another", "00000000-0000-4000-8000-000000000000", false},
			{"not a uuid", "my-instance", false},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				if tc.name == "another" && st.kind == "postgres" {
					t.Skip("a PostgreSQL database holds any number of instances: another id opens another one")
				}
				svc, err := st.open(path, Options{MasterKey: mk, Instance: tc.instance})
				if !tc.ok {
					require.ErrorIs(t, err, ErrInvalidArgument)
					return
				}
				require.NoError(t, err)
				assert.Equal(t, strings.ToLower(upper), svc.Instance())
				require.NoError(t, svc.Close())
			})
		}
	})
}
