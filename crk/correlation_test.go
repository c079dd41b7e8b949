package crk

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCorrelationID: an id of 1 to MaxCorrelationIDLen letters, digits and -_.: is carried by
// the context into the events of its operations; any other is refused with
// ErrInvalidArgument, the context left as it was.
func TestCorrelationID(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"0b8f2c1e-4d3a-4f5b-9c7d-1e2f3a4b5c6d", true},
		{"job-42:step.1_a", true},
		{strings.Repeat("x", MaxCorrelationIDLen), true},
		{"", false},
		{strings.Repeat("x", MaxCorrelationIDLen+1), false},
		{"a b", false},
		{"a\nb", false},
		{"caf\u00e9", false},
		{`a"b`, false},
	} {
		t.Run(tc.id, func(t *testing.T) {
			ctx, err := WithCorrelationID(context.Background(), tc.id)
			if !tc.ok {
				assert.ErrorIs(t, err, ErrInvalidArgument)
				assert.Nil(t, ctx.Value(correlationKey{}))
				return
			}
			require.NoError(t, err)
			s := &Service{clock: SystemClock{}, initiator: "crkvol"}
			assert.Equal(t, tc.id, s.newEvent(ctx, ActionWrap, nil, "", nil).CorrelationID)
		})
	}
}

// FuzzCorrelationID: an id is accepted only if it is short and of the allowed characters
// (nothing that could forge a line or a field of an audit record), and never panics.
func FuzzCorrelationID(f *testing.F) {
	f.Add("0b8f2c1e-4d3a-4f5b-9c7d-1e2f3a4b5c6d")
	f.Add("a\x00b")
	f.Add("")
	f.Fuzz(func(t *testing.T, id string) {
		if CheckCorrelationID(id) != nil {
			return
		}
		if id == "" || len(id) > MaxCorrelationIDLen || strings.ContainsFunc(id, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.:", r))
		}) {
			t.Fatalf("accepted %q", id)
		}
	})
}
