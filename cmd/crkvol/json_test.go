package main

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// jsonScript is the testscript that runs every command with --json.
const jsonScript = "testdata/json.txtar"

// pendingJSON are the commands whose own --json flag shadows the global one, so that no
// script can run them with the global --json; TestJSONCoverage checks the reason still holds.
var pendingJSON = map[string]string{}

// TestJSONCoverage walks the whole command tree: every leaf command must be run with the
// global --json in testdata/json.txtar (as "crkvol --json <command path> ..."), so that a
// command added without JSON output fails here, by name. A command too slow to run there
// (bench) may instead be named on a line "# json elsewhere: <command path> in <script>", and
// that script must then run it with --json.
func TestJSONCoverage(t *testing.T) {
	t.Parallel()
	root := (&app{getenv: os.Getenv}).rootCommand()
	covered := map[string]string{} // command path -> script
	lines := scriptLines(t, jsonScript)
	for _, l := range lines {
		if c := jsonCommand(root, l); c != "" {
			covered[c] = jsonScript
		}
		if rest, ok := strings.CutPrefix(l, "# json elsewhere: "); ok {
			path, script, ok := strings.Cut(rest, " in ")
			require.True(t, ok, "%q: want # json elsewhere: <command path> in <script>", l)
			ran := false
			for _, ol := range scriptLines(t, filepath.Join("testdata", script)) {
				ran = ran || jsonCommand(root, ol) == "crkvol "+path
			}
			assert.True(t, ran, "%s: %s says testdata/%s runs crkvol --json %s, but it does not", jsonScript, l, script, path)
			covered["crkvol "+path] = script
		}
	}
	var leaves []string
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Parent() == root && (c.Name() == "help" || c.Name() == "completion") {
			return // text for people and shell scripts, not data
		}
		if !c.HasSubCommands() {
			leaves = append(leaves, c.CommandPath())
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	require.NotEmpty(t, leaves)
	for _, l := range leaves {
		if why, ok := pendingJSON[l]; ok {
			c, _, err := root.Find(strings.Fields(l)[1:])
			require.NoError(t, err)
			assert.NotNil(t, c.LocalNonPersistentFlags().Lookup("json"),
				"%s no longer shadows the global --json: remove it from pendingJSON (%s) and cover it in %s", l, why, jsonScript)
			continue
		}
		assert.Contains(t, covered, l, "command %q has no --json case in %s: add one (and give the command JSON output)", l, jsonScript)
	}
	for c := range covered {
		assert.True(t, slices.Contains(leaves, c), "%s runs %q, which is not a leaf command", jsonScript, c)
	}
}

// scriptLines returns the script part of a txtar file (before its first "-- name --" line).
func scriptLines(t *testing.T, name string) []string {
	t.Helper()
	f, err := os.Open(name)
	require.NoError(t, err)
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(l, "-- ") && strings.HasSuffix(l, " --") {
			break
		}
		out = append(out, l)
	}
	require.NoError(t, sc.Err())
	return out
}

// jsonCommand returns the path of the command a script line runs as "crkvol --json ...", or
// "" if the line runs no such command.
func jsonCommand(root *cobra.Command, line string) string {
	if strings.HasPrefix(line, "#") {
		return ""
	}
	words := strings.Fields(line)
	i := slices.Index(words, "crkvol")
	if i < 0 || i+1 >= len(words) || words[i+1] != "--json" {
		return ""
	}
	args := words[i+2:]
	for j, w := range args {
		if strings.HasPrefix(w, "&") { // a background command's name
			args = args[:j]
			break
		}
	}
	c, _, err := root.Find(args)
	if err != nil || c == root {
		return ""
	}
	return c.CommandPath()
}
