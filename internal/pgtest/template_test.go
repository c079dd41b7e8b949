package pgtest

import (
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
)

// TestTemplateCacheReused: once a cluster has started, the template cache holds a whole
// data directory that the next binary copies instead of running initdb; with the cache off
// there is none.
func TestTemplateCacheReused(t *testing.T) {
	bin := tooltest.PostgresBinDir(t)
	Start(t)
	if os.Getenv(templateCacheEnv) == "off" {
		t.Skip(templateCacheEnv + "=off")
	}
	dir := cachedTemplate(bin)
	require.NotEmpty(t, dir, "no cached template after a cluster started")
	assert.FileExists(t, filepath.Join(dir, "PG_VERSION"))
	assert.Equal(t, dir, cachedTemplate(bin), "a second look-up gives another template")
	t.Setenv(templateCacheEnv, "off")
	assert.Empty(t, cachedTemplate(bin))
}

// TestTemplateCacheRace: binaries that find the cache empty at the same time each run
// initdb, and all of them end up with the same whole template; a cluster starts from it.
func TestTemplateCacheRace(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("runs initdb three times: runs with CRKVOL_LONG_TESTS=1 (CI)")
	}
	bin := tooltest.PostgresBinDir(t)
	t.Setenv(templateCacheEnv, t.TempDir())
	got := make([]string, 3)
	var wg sync.WaitGroup
	for i := range got {
		wg.Go(func() { got[i] = cachedTemplate(bin) })
	}
	wg.Wait()
	require.NotEmpty(t, got[0])
	assert.Equal(t, []string{got[0], got[0], got[0]}, got)
	assert.FileExists(t, filepath.Join(got[0], "PG_VERSION"))
	entries, err := os.ReadDir(filepath.Dir(got[0]))
	require.NoError(t, err)
	assert.Len(t, entries, 2, "staging directories left behind: %v", entries) // data, complete
	c, err := initCluster(bin, got[0])
	require.NoError(t, err)
	defer c.removeDir()
	require.NoError(t, c.startServer())
	defer c.Stop()
	assert.Equal(t, "UTF8", query(t, c.URL("postgres"), "SHOW server_encoding"))
}
