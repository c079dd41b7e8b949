package crk

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"

	"crkvol/internal/pgdb"
)

// TestUnavailableMarksDatabaseOutages: the PostgreSQL store's errors of a database out of
// reach and of a commit of unknown outcome are ErrUnavailable (a failure: 503), the latter
// saying that the change may or may not have happened; other errors pass unchanged.
func TestUnavailableMarksDatabaseOutages(t *testing.T) {
	other := errors.New("key does not fit")
	for _, tc := range []struct {
		name        string
		err         error
		unavailable bool
		inMsg       string
	}{
		{"nil", nil, false, ""},
		{"unreachable", fmt.Errorf("%w after 3 attempts: connection refused", pgdb.ErrUnavailable), true, "after 3 attempts"},
		{"commit unknown", fmt.Errorf("%w: connection reset", pgdb.ErrCommitUnknown), true, "may or may not have happened"},
		{"already marked", fmt.Errorf("crk: %w: x", ErrUnavailable), true, "crk: the key service's store is unavailable: x"},
		{"refusal", fmt.Errorf("crk: %w: abc", ErrKeyNotFound), false, "key does not exist"},
		{"other", other, false, "key does not fit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := unavailable(tc.err)
			if tc.err == nil {
				assert.NoError(t, got)
				return
			}
			assert.ErrorIs(t, got, tc.err, "the cause stays in the chain")
			assert.Equal(t, tc.unavailable, errors.Is(got, ErrUnavailable))
			assert.Contains(t, got.Error(), tc.inMsg)
			if !tc.unavailable {
				assert.Same(t, tc.err, got, "passed unchanged")
			}
			if tc.unavailable {
				assert.False(t, IsUserError(got), "a failure, not a refusal")
				info, ok := LookupError(got)
				assert.True(t, ok)
				assert.Equal(t, 503, info.Status)
			}
		})
	}
}
