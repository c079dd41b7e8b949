package crk

import (
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestErrorTableCoversEverySentinel parses errors.go: every exported Err* variable declared
// there has exactly one row in the error table, in declaration order, so a sentinel added
// without a row fails here.
func TestErrorTableCoversEverySentinel(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "errors.go", nil, 0)
	require.NoError(t, err)
	var declared []string
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.VAR {
			continue
		}
		for _, s := range g.Specs {
			for _, n := range s.(*ast.ValueSpec).Names {
				if n.IsExported() && strings.HasPrefix(n.Name, "Err") {
					declared = append(declared, n.Name)
				}
			}
		}
	}
	require.NotEmpty(t, declared)

	// The sentinels by name, to compare identities rather than messages.
	byName := map[string]error{
		"ErrKeyNotFound": ErrKeyNotFound, "ErrNotRootKey": ErrNotRootKey, "ErrInvalidMaterial": ErrInvalidMaterial,
		"ErrMaterialRequired": ErrMaterialRequired, "ErrMaterialNotAllowed": ErrMaterialNotAllowed,
		"ErrRotationTooSoon": ErrRotationTooSoon, "ErrInvalidPolicy": ErrInvalidPolicy, "ErrPolicyNotAllowed": ErrPolicyNotAllowed,
		"ErrKeySuspended": ErrKeySuspended, "ErrKeyDeactivated": ErrKeyDeactivated, "ErrKeyDestroyed": ErrKeyDestroyed,
		"ErrKeyPurged": ErrKeyPurged, "ErrInvalidState": ErrInvalidState, "ErrTooEarly": ErrTooEarly,
		"ErrRestoreExpired": ErrRestoreExpired, "ErrProtectedResource": ErrProtectedResource,
		"ErrPreventKeyDeletion": ErrPreventKeyDeletion, "ErrAuth": ErrAuth, "ErrVersionNotFound": ErrVersionNotFound,
		"ErrVersionDestroyed": ErrVersionDestroyed, "ErrVersionInUse": ErrVersionInUse,
		"ErrRegistrationNotFound": ErrRegistrationNotFound, "ErrRegistrationExists": ErrRegistrationExists,
		"ErrInvalidArgument": ErrInvalidArgument, "ErrInvalidQuery": ErrInvalidQuery, "ErrMasterKey": ErrMasterKey, "ErrAudit": ErrAudit,
		"ErrResyncNeeded": ErrResyncNeeded, "ErrUnavailable": ErrUnavailable,
		"ErrImportTokenNotFound": ErrImportTokenNotFound, "ErrImportTokenExpired": ErrImportTokenExpired,
		"ErrImportTokenUsedUp": ErrImportTokenUsedUp, "ErrIncorrectNonce": ErrIncorrectNonce, "ErrNonceIV": ErrNonceIV,
		"ErrEncryptionAlgorithm": ErrEncryptionAlgorithm,
		"ErrCreateImportAccess":  ErrCreateImportAccess, "ErrNetworkNotAllowed": ErrNetworkNotAllowed,
		"ErrDualAuthNotMet": ErrDualAuthNotMet, "ErrNotDualAuth": ErrNotDualAuth,
		"ErrInvalidAlias": ErrInvalidAlias, "ErrAliasNotUnique": ErrAliasNotUnique, "ErrAliasQuota": ErrAliasQuota,
		"ErrAliasNotFound": ErrAliasNotFound, "ErrInvalidKeyRing": ErrInvalidKeyRing, "ErrKeyRingNotFound": ErrKeyRingNotFound,
		"ErrKeyRingExists": ErrKeyRingExists, "ErrKeyRingNotEmpty": ErrKeyRingNotEmpty, "ErrKeyRingQuota": ErrKeyRingQuota,
	}
	table := Errors()
	require.Len(t, table, len(declared), "one row per sentinel declared in errors.go")
	for i, name := range declared {
		want, ok := byName[name]
		require.True(t, ok, "%s is declared in errors.go but missing from this test's list", name)
		assert.Same(t, want, table[i].Err, "row %d should be %s", i, name)
	}
}

// TestErrorTableRows checks each row on its own: unique stable ids, a reason code, a status
// that agrees with the class, and a lookup that finds the row through wrapping.
func TestErrorTableRows(t *testing.T) {
	ids := map[string]bool{}
	for _, info := range Errors() {
		t.Run(info.ID, func(t *testing.T) {
			require.NotEmpty(t, info.ID)
			assert.False(t, ids[info.ID], "duplicate id")
			ids[info.ID] = true
			assert.Equal(t, strings.ToLower(info.ID), info.ID)
			assert.NotEmpty(t, info.Code)
			switch info.Class {
			case Refusal:
				assert.True(t, info.Status >= 400 && info.Status < 500, "a refusal is a 4xx, got %d", info.Status)
				assert.NotEqual(t, 429, info.Status, "429 means try again later, not a refusal")
				assert.True(t, IsUserError(info.Err))
			case Failure:
				assert.True(t, info.Status >= 500 && info.Status < 600, "a failure is a 5xx, got %d", info.Status)
				assert.False(t, IsUserError(info.Err))
			default:
				t.Fatalf("class %v", info.Class)
			}
			wrapped := fmt.Errorf("context: %w", fmt.Errorf("more: %w", info.Err))
			got, ok := LookupError(wrapped)
			require.True(t, ok)
			assert.Same(t, info.Err, got.Err)
			byID, ok := ErrorByID(info.ID)
			require.True(t, ok)
			assert.Same(t, info.Err, byID.Err)
		})
	}
	_, ok := ErrorByID("no_such_id")
	assert.False(t, ok)
}

// TestLookupErrorPrecedence: an error that wraps several sentinels maps to the first one in
// the order it was built, whatever the table's order.
func TestLookupErrorPrecedence(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"auth before version", fmt.Errorf("%w: %w: names version v9", ErrAuth, ErrVersionNotFound), ErrAuth},
		{"version before auth", fmt.Errorf("%w: %w", ErrVersionNotFound, ErrAuth), ErrVersionNotFound},
		{"joined", errors.Join(errors.New("x"), ErrKeyPurged, ErrKeyNotFound), ErrKeyPurged},
		{"nested join", fmt.Errorf("outer: %w", errors.Join(fmt.Errorf("a: %w", ErrTooEarly), ErrKeyNotFound)), ErrTooEarly},
		{"custom Is", isErr{ErrRestoreExpired}, ErrRestoreExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := LookupError(tc.err)
			require.True(t, ok)
			assert.Same(t, tc.want, got.Err)
		})
	}
	for _, err := range []error{nil, os.ErrClosed, errors.New("key is suspended")} {
		_, ok := LookupError(err)
		assert.False(t, ok, "%v", err)
		assert.False(t, IsUserError(err), "%v", err)
	}
}

// isErr matches its target through an Is method, not through Unwrap.
type isErr struct{ target error }

func (e isErr) Error() string        { return "custom" }
func (e isErr) Is(target error) bool { return target == e.target }

// TestAuditErrorOfAnOutage: an audit event lost because the store is out of reach is first
// of all the outage (503, try again), still an audit failure for errors.Is; any other audit
// failure is ErrAudit's.
func TestAuditErrorOfAnOutage(t *testing.T) {
	down := auditError(ActionWrap, fmt.Errorf("crk: %w: connection refused", ErrUnavailable))
	info, ok := LookupError(down)
	require.True(t, ok)
	assert.Equal(t, ErrUnavailable, info.Err)
	assert.ErrorIs(t, down, ErrAudit)
	other := auditError(ActionWrap, errors.New("disk full"))
	info, ok = LookupError(other)
	require.True(t, ok)
	assert.Equal(t, ErrAudit, info.Err)
}
