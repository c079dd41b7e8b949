package kms_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/volume"
)

// TestAckKeyEventBothSides: Local and Remote record a host's acknowledgement alike, and
// refuse a bad one with the same sentinels (volume.ErrKeyRefused beside crk's), across HTTP
// as in-process.
func TestAckKeyEventBothSides(t *testing.T) {
	forEachStore(t, func(t *testing.T, st serverStore) {
		f := newErrFixtureOn(t, st)
		k := f.root(t, "acked")
		for _, v := range []string{"v1", "v2"} {
			_, err := f.svc.Register(f.ctx, k.ID, "crn:v1:local:public:is:local:a/crkvol::volume:"+v, crk.RegisterOptions{})
			require.NoError(t, err)
		}
		_, err := f.svc.DisableKey(f.ctx, k.ID)
		require.NoError(t, err)
		std, err := f.svc.CreateKey(f.ctx, crk.CreateOptions{Name: "std", Type: crk.StandardKey})
		require.NoError(t, err)
		for _, side := range []struct {
			name  string
			acker volume.KeyAcker
		}{{"local", f.local}, {"remote", f.remote}} {
			t.Run(side.name, func(t *testing.T) {
				host := "host-" + side.name
				require.NoError(t, side.acker.AckKeyEvent(f.ctx, volume.KeyAck{Host: host, KeyID: k.ID, Type: volume.KeyDisabled,
					State: volume.KeyStateSuspended, Volumes: 2, Stopped: 1, Cursor: "1"}))
				acks, err := f.svc.HostAcks(f.ctx, k.ID)
				require.NoError(t, err)
				var got *crk.HostAck
				for i := range acks {
					if acks[i].Host == host {
						got = &acks[i]
					}
				}
				require.NotNil(t, got, "%+v", acks)
				assert.NotEmpty(t, got.Reporter)
				if side.name == "remote" {
					assert.True(t, strings.HasPrefix(got.Reporter, "kpapi:"), "across HTTP the reporter is the API credential: %q", got.Reporter)
				}
				assert.Equal(t, crk.HostAck{Host: host, KeyID: k.ID, Type: crk.LifecycleDisable, State: "suspended", Volumes: 2, Stopped: 1, Cursor: "1",
					Reporter: got.Reporter, Time: got.Time}, *got)

				for _, c := range []struct {
					name string
					ack  volume.KeyAck
					err  error
				}{
					{"bad host", volume.KeyAck{Host: "a b", KeyID: k.ID, Type: volume.KeyDisabled, State: volume.KeyStateSuspended}, crk.ErrInvalidArgument},
					{"bad state", volume.KeyAck{Host: host, KeyID: k.ID, Type: volume.KeyDisabled, State: "locked"}, crk.ErrInvalidArgument},
					{"contradictory state", volume.KeyAck{Host: host, KeyID: k.ID, Type: volume.KeyDisabled, State: volume.KeyStateActive}, crk.ErrInvalidArgument},
					{"more volumes than registrations", volume.KeyAck{Host: host, KeyID: k.ID, Type: volume.KeyDisabled, State: volume.KeyStateSuspended, Volumes: 3}, crk.ErrInvalidArgument},
					{"unknown key", volume.KeyAck{Host: host, KeyID: "0c9a8d1e-0000-4000-8000-000000000000", Type: volume.KeyDisabled, State: volume.KeyStateSuspended}, crk.ErrKeyNotFound},
					{"standard key", volume.KeyAck{Host: host, KeyID: std.ID, Type: volume.KeyDisabled, State: volume.KeyStateSuspended}, crk.ErrNotRootKey},
				} {
					err := side.acker.AckKeyEvent(f.ctx, c.ack)
					require.ErrorIs(t, err, c.err, c.name)
					assert.ErrorIs(t, err, volume.ErrKeyRefused, c.name)
				}
			})
		}
	})
}
