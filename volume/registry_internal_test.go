package volume

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRegistryStats: every write transaction of the registry is counted as one commit with
// bbolt's flushes (2 per commit, 1 more when the file grows, which the file's size shows); a
// transaction that fails or changes nothing commits nothing; a read-only registry commits
// nothing.
func TestRegistryStats(t *testing.T) {
	path := filepath.Join(t.TempDir(), "volumes.db")
	r, err := OpenRegistry(path)
	require.NoError(t, err)
	defer r.Close()
	assert.Equal(t, RegistryStats{}, r.Stats(), "opening is not counted")
	size := func() int64 {
		fi, err := os.Stat(path)
		require.NoError(t, err)
		return fi.Size()
	}
	var growths uint64
	for i := range 40 {
		before := size()
		require.NoError(t, r.Put(Entry{CRN: fmt.Sprintf("crn:%03d", i), UUID: "u", Path: "/p", Verified: string(make([]byte, 2000))}))
		if size() > before {
			growths++
		}
	}
	assert.NotZero(t, growths, "40 entries of 2 KB grow the file")
	require.NoError(t, r.Delete("crn:000"))
	assert.Equal(t, RegistryStats{Commits: 41, Flushes: 2*41 + growths}, r.Stats())
	// A failed update (an unknown CRN's fingerprint only) commits nothing.
	require.NoError(t, r.setVerified([]verifiedUpdate{{entry: Entry{CRN: "crn:none"}, verified: "x"}}))
	assert.Equal(t, uint64(41), r.Stats().Commits)
	require.NoError(t, r.Close())

	ro, err := OpenRegistryReadOnly(path)
	require.NoError(t, err)
	defer ro.Close()
	assert.Error(t, ro.Put(Entry{CRN: "crn:x"}))
	assert.Equal(t, RegistryStats{}, ro.Stats())
}

// TestSetVerified: many fingerprints are recorded in one commit; an entry that changed since
// it was read (deleted, registered again at another path or as another file) is left as it
// is, and a deleted one is not brought back; the file identity is filled in where it lacks.
func TestSetVerified(t *testing.T) {
	dir := t.TempDir()
	r, err := OpenRegistry(filepath.Join(dir, "volumes.db"))
	require.NoError(t, err)
	defer r.Close()
	fi, err := os.Stat(dir)
	require.NoError(t, err)
	id, _ := idOf(fi)
	entries := map[string]Entry{}
	for _, name := range []string{"same", "moved", "replaced", "deleted", "noid", "unchanged"} {
		e := Entry{CRN: "crn:" + name, UUID: "uuid-" + name, Path: "/img/" + name, Device: 1, Inode: 2, Verified: "old"}
		if name == "noid" {
			e.Device, e.Inode = 0, 0
		}
		require.NoError(t, r.Put(e))
		entries[name] = e
	}
	// Changes after the entries were read.
	moved := entries["moved"]
	moved.Path = "/elsewhere"
	require.NoError(t, r.Put(moved))
	replaced := entries["replaced"]
	replaced.Inode = 3
	require.NoError(t, r.Put(replaced))
	require.NoError(t, r.Delete("crn:deleted"))

	before := r.Stats().Commits
	var ups []verifiedUpdate
	for _, name := range []string{"same", "moved", "replaced", "deleted"} {
		ups = append(ups, verifiedUpdate{entry: entries[name], verified: "new"})
	}
	ups = append(ups, verifiedUpdate{entry: entries["noid"], verified: "new", fill: true, path: "/img/noid", fi: fi})
	ups = append(ups, verifiedUpdate{entry: entries["unchanged"], verified: "old"})
	require.NoError(t, r.setVerified(ups))
	assert.Equal(t, before+1, r.Stats().Commits, "one commit for them all")

	get := func(name string) Entry {
		e, err := r.Get("crn:" + name)
		require.NoError(t, err)
		return e
	}
	assert.Equal(t, "new", get("same").Verified)
	assert.Equal(t, "old", get("moved").Verified, "registered again at another path")
	assert.Equal(t, "old", get("replaced").Verified, "registered again as another file")
	_, err = r.Get("crn:deleted")
	assert.ErrorIs(t, err, ErrNotRegistered, "not brought back")
	noid := get("noid")
	assert.Equal(t, "new", noid.Verified)
	assert.Equal(t, id, noid.id(), "identity filled in")
	assert.Equal(t, entries["unchanged"], get("unchanged"))

	// Nothing to change: no commit.
	before = r.Stats().Commits
	require.NoError(t, r.setVerified([]verifiedUpdate{{entry: get("same"), verified: "new"}}))
	require.NoError(t, r.setVerified(nil))
	assert.Equal(t, before, r.Stats().Commits)
}
