package main

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/volume"
)

// TestRewrapFailedNamesCause: each cause of a failed rewrap gets its own hint with the
// command that fixes it; the error still matches every volume's error.
func TestRewrapFailedNamesCause(t *testing.T) {
	t.Parallel()
	refused := func(err error) error { return errors.Join(err, volume.ErrKeyRefused) }
	tests := []struct {
		name string
		err  error
		hint string
	}{
		{"not registered", fmt.Errorf("%w: crn:x", volume.ErrNotRegistered), "1 volume: not in this machine's volume registry (crn:v): run crkvol key sync K on the machine whose registry has them"},
		{"moved", fmt.Errorf("opening a.img: %w", fs.ErrNotExist), "1 volume: image moved or replaced (registered at crn:v): register the image where it is now with crkvol volume register IMG, then run crkvol key sync K"},
		{"replaced", fmt.Errorf("%w: inode changed", volume.ErrNotRegisteredImage), "image moved or replaced"},
		{"suspended", refused(crk.ErrKeySuspended), "1 volume: key suspended (crn:v): enable the key with crkvol key enable K, then run crkvol key sync K"},
		{"deleted", refused(crk.ErrKeyDestroyed), "1 volume: key deleted (crn:v): restore the key with crkvol key restore K"},
		{"other refusal", refused(crk.ErrAuth), "1 volume: key refused by the key service (crn:v): see crkvol key show K"},
		{"unhealthy", fmt.Errorf("%w: data area: short", volume.ErrUnhealthy), "1 volume: image unhealthy (crn:v): see crkvol volume status crn:v"},
		{"network", errors.New("connection refused"), "1 volume: not reached (crn:v): run crkvol key sync K to retry"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rep := &volume.Report{KeyID: "K", Volumes: 2, Rewrapped: 1, Failed: map[string]error{"crn:v": tt.err}}
			err := rewrapFailed("the key rotated", nil, rep)
			require.Error(t, err)
			assert.ErrorIs(t, err, tt.err)
			assert.Regexp(t, `^the key rotated, but 1 of 2 volumes of key K were not rewrapped \(they keep their old, working wrapping\): 1 `, err.Error())
			hints := hintsOf(err)
			require.Len(t, hints, 1)
			assert.Contains(t, hints[0], tt.hint)
		})
	}
	assert.NoError(t, rewrapFailed("", nil, &volume.Report{KeyID: "K", Volumes: 1, Rewrapped: 1}))
}

// TestRewrapBars: a pass of at least the minimum gets a bar with the counts so far; a
// smaller one draws nothing.
func TestRewrapBars(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	b := &rewrapBars{w: &gatedWriter{w: &out}, min: 3}
	b.update(volume.RewrapProgress{KeyID: "K", Volumes: 2})
	b.update(volume.RewrapProgress{KeyID: "K", Volumes: 2, Done: 2, Rewrapped: 2})
	assert.Empty(t, out.String())
	for i, p := range []volume.RewrapProgress{{}, {Done: 1, Rewrapped: 1}, {Done: 2, Rewrapped: 1, Failed: 1}, {Done: 3, Rewrapped: 2, Failed: 1}} {
		p.KeyID, p.Volumes = "K", 3
		b.update(p)
		if i == 0 {
			assert.Contains(t, out.String(), "key K: rewrapped 0, failed 0")
		}
	}
	assert.Contains(t, out.String(), "key K: rewrapped 2, failed 1")
	assert.Contains(t, out.String(), "3/3")
	assert.Nil(t, b.bar, "finished")
}
