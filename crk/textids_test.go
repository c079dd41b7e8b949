package crk

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestUnstorableIDs: an id that is not valid text for PostgreSQL (invalid UTF-8, a NUL)
// names no key and no registration on either store, and the refusals are audited on both.
func TestUnstorableIDs(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		ctx := context.Background()
		svc, err := st.open(tempPath(t), Options{})
		require.NoError(t, err)
		defer svc.Close()
		k, err := svc.CreateRootKey(ctx, "good")
		require.NoError(t, err)
		for _, id := range []string{"\xff", "a\x00b"} {
			_, err := svc.GetKey(ctx, id)
			assert.ErrorIs(t, err, ErrKeyNotFound, "%q", id)
			_, err = svc.Wrap(ctx, id, []byte("x"), nil)
			assert.ErrorIs(t, err, ErrKeyNotFound, "%q", id)
			_, err = svc.DisableKey(ctx, id)
			assert.ErrorIs(t, err, ErrKeyNotFound, "%q", id)
			_, err = svc.Register(ctx, id, "crn:v1:local:public:is:local:a/crkvol::volume:v1", RegisterOptions{})
			assert.ErrorIs(t, err, ErrKeyNotFound, "%q", id)
			assert.ErrorIs(t, svc.DeleteRegistration(ctx, id, "crn:v1:local:public:is:local:a/crkvol::volume:v1"), ErrKeyNotFound, "%q", id)
			// As a CRN, on a key that exists.
			crn := "crn:v1:local:public:is:local:a/crkvol::volume:" + id
			_, regErr := svc.Register(ctx, k.ID, crn, RegisterOptions{})
			assert.ErrorIs(t, regErr, ErrInvalidArgument, "%q", id)
			assert.ErrorIs(t, svc.DeleteRegistration(ctx, k.ID, crn), ErrRegistrationNotFound, "%q", id)
		}
		// Every refusal is audited, whatever the id.
		evs, err := svc.Events(ctx, EventFilter{OldestFirst: true})
		require.NoError(t, err)
		refused := map[string]int{}
		for _, ev := range evs {
			if ev.Outcome == OutcomeFailure {
				refused[ev.KeyID]++
			}
		}
		assert.Equal(t, 5, refused["\ufffd"], "events of \\xff (JSON keeps U+FFFD)")
		assert.Equal(t, 5, refused["a\x00b"])
		_, err = svc.ListEvents(ctx, EventFilter{KeyID: "\xff"})
		assert.ErrorIs(t, err, ErrKeyNotFound)
		page, err := svc.ListEvents(ctx, EventFilter{KeyID: "a\x00b"})
		require.NoError(t, err, "events name the id")
		assert.Len(t, page.Events, 5)
		// JSON gives \xff back as U+FFFD, yet no event names U+FFFD as JSON encodes it.
		_, err = svc.ListEvents(ctx, EventFilter{KeyID: "\ufffd"})
		assert.ErrorIs(t, err, ErrKeyNotFound)
		page, err = svc.ListEvents(ctx, EventFilter{KeyID: "a\x00b", Action: ActionWrap})
		require.NoError(t, err)
		assert.Len(t, page.Events, 1)
		_, err = svc.ListEvents(ctx, EventFilter{Action: "x\xff\x00"})
		require.NoError(t, err)
	})
}
