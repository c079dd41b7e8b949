package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
)

// TestRunSections runs the sector, io and nbd sections briefly (no timing claims), asked for in
// the wrong order: they run in Sections' order, the report keeps the sector section's
// members at its top level (as before sections) beside a member per section, the machine
// and every ratio, and its scratch directory is left empty.
func TestRunSections(t *testing.T) {
	t.Parallel()
	tooltest.Require(t, "nbdcopy", "qemu-nbd")
	dir := t.TempDir()
	var progress []string
	r, err := Run(context.Background(), Options{Sections: []string{"nbd", "io", "sector"}, Quick: true, Dir: dir,
		OpenSSL: "/nonexistent/openssl", sectorWindow: 5 * time.Millisecond, nbdSize: 4 << 20, ioSize: 2 << 20, ioRandOps: 64,
		Progress: func(s string) { progress = append(progress, s) }})
	require.NoError(t, err)
	var names []string
	for _, s := range r.Sections {
		names = append(names, s.Name)
		assert.Empty(t, s.Error)
		assert.Positive(t, s.Seconds)
	}
	assert.Equal(t, []string{"sector", "io", "nbd"}, names)
	assert.Equal(t, "scratch directory "+dir+": "+r.Machine.FileSystem, progress[0])
	assert.Contains(t, progress[1], "sector: ")
	assert.Contains(t, progress[len(progress)-1], "nbd: ")
	require.NotNil(t, r.SectorReport)
	require.NotNil(t, r.IO)
	require.NotNil(t, r.NBD)
	assert.Equal(t, append(append(r.SectorReport.Ratios(), r.IO.Ratios()...), r.NBD.Ratios()...), r.Ratios)
	assert.NotEmpty(t, r.IO.Ratios())
	assert.NotEmpty(t, r.NBD.Ratios())
	assert.NotEmpty(t, r.Machine.CPU)
	assert.Positive(t, r.Machine.Cores)
	assert.NotEmpty(t, r.Machine.FileSystem, "the scratch directory's file system")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, entries, "the sections remove what they create")

	b, err := json.Marshal(r)
	require.NoError(t, err)
	var top map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(b, &top))
	var keys []string
	for k := range top {
		keys = append(keys, k)
	}
	want := []string{"cpu", "features", "goVersion", "cores", "rounds", "results", "parallel", "opensslError",
		"machine", "quick", "sections", "io", "nbd", "ratios"}
	if len(r.Ceilings) > 0 { // none in a purego build
		want = append(want, "ceilings")
	}
	for _, k := range want {
		assert.Contains(t, keys, k)
	}
	var back Report
	require.NoError(t, json.Unmarshal(b, &back))
	assert.Equal(t, r.Results, back.Results)
	assert.Equal(t, r.Ratios, back.Ratios)

	var table bytes.Buffer
	require.NoError(t, r.WriteTable(&table))
	assert.Contains(t, table.String(), "crkvol bench (quick run) on "+r.Machine.String())
	assert.Regexp(t, `(?m)^== sector \(\d+ s\) ==$`, table.String())
	assert.Regexp(t, `(?m)^== io \(\d+ s\) ==$`, table.String())
	assert.Regexp(t, `(?m)^== nbd \(\d+ s\) ==$`, table.String())
	assert.Contains(t, table.String(), "vs qemu-nbd")
	assert.Regexp(t, `(?m)^== targets ==$`, table.String())
	// A quick run's ratios are hints: above or below, not met or missed.
	assert.Contains(t, table.String(), "its ratios are indicative only")
	assert.Regexp(t, `(?m)^sector +generic encrypt 4096 vs x/crypto/xts +\d+\.\d\dx +3\.00x +(above|below) \(quick\)$`, table.String())
	assert.NotRegexp(t, `(?m)(met|MISSED)$`, table.String())

	// A full run's are verdicts.
	r.Quick = false
	table.Reset()
	require.NoError(t, r.WriteTable(&table))
	assert.NotContains(t, table.String(), "indicative")
	assert.Regexp(t, `(?m)^sector +generic encrypt 4096 vs x/crypto/xts +\d+\.\d\dx +3\.00x +(met|MISSED)$`, table.String())
}

// TestRunMissingTool: without qemu-nbd and nbdcopy on PATH the nbd section says so in its
// place, and the run is no failure.
func TestRunMissingTool(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	r, err := Run(context.Background(), Options{Sections: []string{"nbd"}, Quick: true, Dir: t.TempDir()})
	require.NoError(t, err)
	require.Len(t, r.Sections, 1)
	assert.True(t, r.Sections[0].ToolMissing)
	assert.Contains(t, r.Sections[0].Error, "nbdcopy (Debian package libnbd-bin)")
	assert.Nil(t, r.NBD)
	assert.Empty(t, r.Ratios)
	var table bytes.Buffer
	require.NoError(t, r.WriteTable(&table))
	assert.Regexp(t, `(?m)^not measured: bench nbd: .*nbdcopy`, table.String())
}

// TestRunSectionFails: a section that fails (here nbd, on a scratch directory that does not
// exist) is reported in its place, the others still run, and Run returns the report with an
// error naming the section. An unknown section is refused before anything runs; a cancelled
// run stops at once with the context's error.
func TestRunSectionFails(t *testing.T) {
	t.Parallel()
	tooltest.Require(t, "nbdcopy", "qemu-nbd")
	missing := filepath.Join(t.TempDir(), "missing")
	r, err := Run(context.Background(), Options{Sections: []string{"sector", "nbd"}, Quick: true, Dir: missing,
		OpenSSL: "/nonexistent/openssl", sectorWindow: time.Millisecond})
	require.ErrorContains(t, err, "bench: section nbd failed")
	require.NotNil(t, r)
	require.Len(t, r.Sections, 2)
	assert.Empty(t, r.Sections[0].Error)
	assert.NotNil(t, r.SectorReport)
	assert.Contains(t, r.Sections[1].Error, missing)
	assert.False(t, r.Sections[1].ToolMissing)
	var table bytes.Buffer
	require.NoError(t, r.WriteTable(&table))
	assert.Regexp(t, `(?m)^failed: bench nbd: `, table.String())

	_, err = Run(context.Background(), Options{Sections: []string{"sector", "disk"}})
	require.ErrorContains(t, err, `bench: unknown section "disk" (sections: sector, kms, rewrap, io, nbd)`)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r, err = Run(ctx, Options{Sections: []string{"sector", "nbd"}, Dir: t.TempDir()})
	require.ErrorIs(t, err, context.Canceled)
	require.Len(t, r.Sections, 1, "nothing after the cancelled section runs")
}
