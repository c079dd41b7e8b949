package kms_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestUpdateRegistrationNeverMovesBack: as the volume.KeyService contract says, a late
// UpdateRegistration naming an older version than the registration has (a lazy rewrap's
// update landing after a newer rewrap's) is ignored, with the in-process key service and
// with the remote one (through kpapi's PATCH), while a newer version is recorded.
func TestUpdateRegistrationNeverMovesBack(t *testing.T) {
	for _, mode := range []string{"embedded", "remote"} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			_, clock, svc, ks := newKeyService(t, mode)
			k, err := svc.CreateRootKey(ctx, "monotonic")
			require.NoError(t, err)
			v1 := k.KeyVersion.ID
			const crn = "crn:v1:local:public:is:local:a/crkvol::volume:5b3ae5d6-6a4c-4b8e-9f0e-2f4c1d7a9b10"
			require.NoError(t, ks.Register(ctx, k.ID, crn, v1, false))
			versions := []string{v1}
			for range 2 {
				clock.Advance(time.Hour)
				r, err := svc.RotateKey(ctx, k.ID, nil)
				require.NoError(t, err)
				versions = append(versions, r.KeyVersion.ID)
			}
			registered := func() string {
				regs, _, err := ks.Registrations(ctx, k.ID)
				require.NoError(t, err)
				require.Len(t, regs, 1)
				return regs[0].VersionID
			}
			require.NoError(t, ks.UpdateRegistration(ctx, k.ID, crn, versions[2]))
			assert.Equal(t, versions[2], registered())
			require.NoError(t, ks.UpdateRegistration(ctx, k.ID, crn, versions[1]), "a late update is not an error")
			assert.Equal(t, versions[2], registered(), "never moved back")
			require.NoError(t, ks.UpdateRegistration(ctx, k.ID, crn, versions[0]))
			assert.Equal(t, versions[2], registered(), "never moved back")
		})
	}
}
