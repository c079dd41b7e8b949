package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
)

// TestRunKMS runs the KMS section with short windows and checks its shape: a result per
// transport and number of callers, every ratio against one caller, the target on 32 HTTP
// callers, audit commits counted, the table and JSON complete, and nothing left in Dir.
func TestRunKMS(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("the KMS section (seconds of wrap+unwrap pairs) runs with CRKVOL_LONG_TESTS=1 (CI)")
	}
	dir := t.TempDir()
	var progress []string
	rep, err := RunKMS(context.Background(), KMSOptions{Quick: true, Dir: dir, Callers: []int{4, 32},
		Progress: func(s string) { progress = append(progress, s) }})
	require.NoError(t, err)
	require.Len(t, rep.Results, 6)
	assert.Len(t, progress, 6*rep.Rounds)
	for _, x := range rep.Results {
		assert.Positive(t, x.PairsPerSec, "%+v", x)
		assert.Positive(t, x.Pairs, "%+v", x)
		assert.Positive(t, x.CPUPerPairUS, "%+v", x)
		// Two audited operations per pair, each durable: never more than two commits a pair.
		assert.Positive(t, x.CommitsPerPair, "%+v", x)
		assert.LessOrEqual(t, x.CommitsPerPair, 2.0, "%+v", x)
		assert.GreaterOrEqual(t, x.FlushesPerPair, 2*x.CommitsPerPair, "bbolt flushes twice a commit: %+v", x)
		switch x.Callers {
		case 1:
			assert.InDelta(t, 2, x.CommitsPerPair, 0.01, "a lone caller commits each operation's event: %+v", x)
		case 32:
			assert.Less(t, x.CommitsPerPair, 1.0, "32 callers share commits: %+v", x)
		}
	}
	ratios := rep.Ratios()
	require.Len(t, ratios, 4)
	targets := 0
	for _, r := range ratios {
		assert.Equal(t, "kms", r.Section)
		assert.Equal(t, "1 caller", r.Against)
		if r.Target > 0 {
			targets++
			assert.Equal(t, "http, 32 callers", r.Name)
		}
	}
	assert.Equal(t, 1, targets)
	var table bytes.Buffer
	require.NoError(t, rep.WriteTable(&table))
	assert.Equal(t, 6+5, strings.Count(table.String(), "\n"), table.String())
	raw, err := json.Marshal(rep)
	require.NoError(t, err)
	assert.Contains(t, string(raw), `"pairsPerSec"`)
	left, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, left, "RunKMS removes what it made")
}
