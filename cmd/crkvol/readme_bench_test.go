package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/bench"
)

// benchOutputMarker is the line before the README's ```text block of measured bench output,
// naming the run's JSON report it must be the tables of.
const benchOutputMarker = "<!-- bench-output: docs/bench.json -->"

// TestREADMEBench checks that the README's Performance section shows one run: its block of
// measured output is what `crkvol bench` prints for docs/bench.json (line ends aside), and
// docs/bench.svg, the chart it embeds, is that report's chart. The report must be a whole
// run (every section of the harness, full length) and decode with no member the harness no
// longer has. With -update-readme it rewrites the block and the chart from the report: after
// `crkvol bench --all --output docs/bench.json --force`, that is how the section is regenerated.
func TestREADMEBench(t *testing.T) {
	if !*updateREADME {
		t.Parallel() // updating writes README.md: not while TestREADME reads it
	}
	root := filepath.Join("..", "..")
	data, err := os.ReadFile(filepath.Join(root, "docs", "bench.json"))
	require.NoError(t, err)
	var r bench.Report
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&r), "docs/bench.json is not a report of this harness: run crkvol bench --all --output docs/bench.json --force")
	var ran []string
	for _, s := range r.Sections {
		ran = append(ran, s.Name)
	}
	assert.Equal(t, bench.Sections(), ran, "docs/bench.json must be a crkvol bench --all run")
	assert.False(t, r.Quick, "docs/bench.json must be a full run, not --quick")
	assert.NotEmpty(t, r.Ratios)

	var table, chart bytes.Buffer
	require.NoError(t, r.WriteTable(&table))
	require.NoError(t, r.WriteChart(&chart))
	want := strings.Split(strings.TrimRight(table.String(), "\n"), "\n")
	for i := range want {
		want[i] = strings.TrimRight(want[i], " ")
	}

	readmePath := filepath.Join(root, "README.md")
	readme, err := os.ReadFile(readmePath)
	require.NoError(t, err)
	lines := strings.Split(string(readme), "\n")
	start, end := -1, -1
	for i, l := range lines {
		if l == benchOutputMarker {
			require.Equal(t, -1, start, "README.md:%d: a second %s", i+1, benchOutputMarker)
			require.Less(t, i+1, len(lines))
			require.Equal(t, "```text", lines[i+1], "README.md:%d: %s must be followed by a ```text block", i+2, benchOutputMarker)
			start = i + 2
		}
	}
	require.NotEqual(t, -1, start, "README.md has no %s line", benchOutputMarker)
	for i := start; i < len(lines); i++ {
		if lines[i] == "```" {
			end = i
			break
		}
	}
	require.NotEqual(t, -1, end, "README.md:%d: the bench block is not closed", start)
	assert.Contains(t, string(readme), "](docs/bench.svg)", "the README embeds the chart")

	svgPath := filepath.Join(root, "docs", "bench.svg")
	if *updateREADME {
		updated := append(append(append([]string{}, lines[:start]...), want...), lines[end:]...)
		require.NoError(t, os.WriteFile(readmePath, []byte(strings.Join(updated, "\n")), 0o644))
		require.NoError(t, os.WriteFile(svgPath, chart.Bytes(), 0o644))
		t.Logf("rewrote the bench block of %s and %s from docs/bench.json", readmePath, svgPath)
		return
	}
	got := append([]string{}, lines[start:end]...)
	for i := range got {
		got[i] = strings.TrimRight(got[i], " ")
	}
	for i := 0; i < max(len(want), len(got)); i++ {
		w, g := "(none)", "(none)"
		if i < len(want) {
			w = want[i]
		}
		if i < len(got) {
			g = got[i]
		}
		if w != g {
			t.Errorf("README.md:%d, in the bench block, is not docs/bench.json's tables (go test ./cmd/crkvol -run TestREADMEBench -update-readme):\nREADME: %q\nreport: %q", start+i+1, g, w)
			break
		}
	}
	svg, err := os.ReadFile(svgPath)
	require.NoError(t, err)
	assert.Equal(t, chart.String(), string(svg), "docs/bench.svg is not docs/bench.json's chart: go test ./cmd/crkvol -run TestREADMEBench -update-readme")
}
