package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
)

// The README's console blocks are checked by running them. Each ```console block follows a
// directive line
//
//	<!-- readme-test: NAME [long] [numbers] [tools=a,b] -->
//
// and holds commands ("$ " lines) each followed by the output it prints (stdout and stderr
// together). TestREADME runs the blocks in order in one fresh directory (it is the $PWD of
// every command and is shown as readmeDir), and each command's output must match the lines
// shown under it, where
//   - a UUID matches any UUID, consistently: once README's UUID X stood for the real Y, X
//     must stand for Y everywhere, and X in later commands is replaced by Y;
//   - an RFC 3339 time, a duration or rate (216.9 s, 12 ms, 5301 MB/s) and "process N" match
//     any such value; with "numbers" every number matches any number (measurements);
//   - runs of spaces match any run of spaces (table columns move with widths);
//   - a line "…" matches any number of lines, and a line ending in "…" matches any rest;
//   - a command ending in " &" runs in the background: its lines must have appeared before
//     the next command runs, and the block ends by waiting for it to exit.
//
// "long" blocks run only with CRKVOL_LONG_TESTS=1 (CI); "tools" blocks need those programs.
// `go test ./cmd/crkvol -run TestREADME -update-readme` rewrites the blocks from a real run.
var updateREADME = flag.Bool("update-readme", false, "rewrite README.md's console blocks from a real run")

// readmeDir is how the README shows the directory its console blocks run in.
const readmeDir = "/home/user/tour"

// readmeBlock is one checked console block of the README.
type readmeBlock struct {
	name        string
	long, nums  bool
	tools       []string
	start, end  int // line indexes of the block's content, [start, end)
	steps       []readmeStep
	directiveAt int
}

// readmeStep is one command of a block and the output lines shown for it.
type readmeStep struct {
	cmd  string
	want []string
}

var directiveRE = regexp.MustCompile(`^<!-- readme-test: (\S+)((?: [a-z]+(?:=\S+)?)*) -->$`)

// parseREADME finds the console blocks of the README's lines and their directives.
func parseREADME(lines []string) ([]readmeBlock, error) {
	var blocks []readmeBlock
	for i := 0; i < len(lines); i++ {
		if lines[i] != "```console" {
			continue
		}
		if i == 0 || !directiveRE.MatchString(lines[i-1]) {
			return nil, fmt.Errorf("README.md:%d: console block without a <!-- readme-test: NAME --> line before it", i+1)
		}
		m := directiveRE.FindStringSubmatch(lines[i-1])
		b := readmeBlock{name: m[1], start: i + 1, directiveAt: i}
		for _, opt := range strings.Fields(m[2]) {
			switch {
			case opt == "long":
				b.long = true
			case opt == "numbers":
				b.nums = true
			case strings.HasPrefix(opt, "tools="):
				b.tools = strings.Split(strings.TrimPrefix(opt, "tools="), ",")
			default:
				return nil, fmt.Errorf("README.md:%d: unknown readme-test option %q", i, opt)
			}
		}
		j := b.start
		for ; j < len(lines) && lines[j] != "```"; j++ {
			l := lines[j]
			if strings.HasPrefix(l, "$ ") {
				b.steps = append(b.steps, readmeStep{cmd: strings.TrimPrefix(l, "$ ")})
				continue
			}
			if len(b.steps) == 0 {
				return nil, fmt.Errorf("README.md:%d: output before the first command of block %s", j+1, b.name)
			}
			b.steps[len(b.steps)-1].want = append(b.steps[len(b.steps)-1].want, l)
		}
		if j == len(lines) {
			return nil, fmt.Errorf("README.md:%d: console block %s is not closed", i+1, b.name)
		}
		b.end = j
		blocks = append(blocks, b)
		i = j
	}
	return blocks, nil
}

var (
	uuidRE     = `[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`
	volatileRE = regexp.MustCompile(uuidRE +
		`|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)` +
		`|\d+(?:\.\d+)? ?(?:ns|µs|us|ms|s|min|h|MB/s|MiB/s|GB/s|GiB/s|volumes/s)\b` +
		`|process \d+|pid \d+` + `|` +
		` {2,}|…$`)
	numberRE = regexp.MustCompile(`\d+(?:\.\d+)?`)
	isUUID   = regexp.MustCompile(`^` + uuidRE + `$`)
)

// lineMatcher compiles one shown line into a regexp; uuids lists, in order, the README UUIDs
// its capture groups stand for.
func lineMatcher(line string, nums bool) (re *regexp.Regexp, uuids []string) {
	var b strings.Builder
	b.WriteString("^")
	lit := func(s string) {
		if !nums {
			b.WriteString(regexp.QuoteMeta(s))
			return
		}
		last := 0
		for _, m := range numberRE.FindAllStringIndex(s, -1) {
			b.WriteString(regexp.QuoteMeta(s[last:m[0]]))
			b.WriteString(`\d+(?:\.\d+)?`)
			last = m[1]
		}
		b.WriteString(regexp.QuoteMeta(s[last:]))
	}
	last := 0
	for _, m := range volatileRE.FindAllStringIndex(line, -1) {
		lit(line[last:m[0]])
		tok := line[m[0]:m[1]]
		switch {
		case isUUID.MatchString(tok):
			b.WriteString("(" + uuidRE + ")")
			uuids = append(uuids, tok)
		case tok == "…":
			b.WriteString(".*")
		case strings.TrimLeft(tok, " ") == "":
			b.WriteString(" +")
		case strings.HasPrefix(tok, "process ") || strings.HasPrefix(tok, "pid "):
			b.WriteString(regexp.QuoteMeta(strings.Fields(tok)[0]) + ` \d+`)
		case strings.ContainsAny(tok, "T") && strings.Contains(tok, ":"):
			b.WriteString(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)`)
		default: // a duration or rate: any number, the same unit
			unit := strings.TrimLeft(tok, "0123456789.")
			b.WriteString(`\d+(?:\.\d+)?` + regexp.QuoteMeta(unit))
		}
		last = m[1]
	}
	lit(line[last:])
	b.WriteString("$")
	return regexp.MustCompile(b.String()), uuids
}

// readmeMatch matches a command's actual output lines against the shown ones, extending ids
// (README UUID → real UUID). It returns what the block should show for this output (the
// actual lines, with "…" kept where the README elides) and a description of the first
// mismatch, or "" when the output matches.
func readmeMatch(want, got []string, nums bool, ids map[string]string) (shown []string, mismatch string) {
	type state struct {
		ids   map[string]string
		shown []string
	}
	var try func(wi, gi int, ids map[string]string, shown []string) (state, bool, string)
	try = func(wi, gi int, ids map[string]string, shown []string) (state, bool, string) {
		if wi == len(want) {
			if gi == len(got) {
				return state{ids, shown}, true, ""
			}
			return state{}, false, fmt.Sprintf("unexpected output line %q", got[gi])
		}
		if want[wi] == "…" {
			var lastWhy string
			for k := gi; k <= len(got); k++ {
				if st, ok, why := try(wi+1, k, ids, append(append([]string{}, shown...), "…")); ok {
					return st, true, ""
				} else {
					lastWhy = why
				}
			}
			return state{}, false, lastWhy
		}
		if gi == len(got) {
			return state{}, false, fmt.Sprintf("missing output line %q", want[wi])
		}
		re, uuids := lineMatcher(want[wi], nums)
		m := re.FindStringSubmatch(got[gi])
		if m == nil {
			return state{}, false, fmt.Sprintf("line %q does not match the README's %q", got[gi], want[wi])
		}
		next := ids
		for k, u := range uuids {
			if prev, ok := next[u]; ok && prev != m[k+1] {
				return state{}, false, fmt.Sprintf("line %q: the README's %s stood for %s before, here for %s", got[gi], u, prev, m[k+1])
			}
			if _, ok := next[u]; !ok {
				if len(next) == len(ids) {
					next = cloneMap(ids)
				}
				next[u] = m[k+1]
			}
		}
		return try(wi+1, gi+1, next, append(append([]string{}, shown...), got[gi]))
	}
	st, ok, why := try(0, 0, ids, nil)
	if !ok {
		return got, why
	}
	for k, v := range st.ids {
		ids[k] = v
	}
	return st.shown, ""
}

func cloneMap(m map[string]string) map[string]string {
	c := make(map[string]string, len(m)+1)
	for k, v := range m {
		c[k] = v
	}
	return c
}

// readmeRunner runs a README's commands with bash in one directory, keeping exported and
// assigned shell variables from one command to the next.
type readmeRunner struct {
	t   *testing.T
	dir string
	env map[string]string
	ids map[string]string // README UUID → real UUID
}

var assignRE = regexp.MustCompile(`^(?:export )?([A-Za-z_][A-Za-z0-9_]*)=(.*)$`)

// lines splits output into lines, showing the run directory as readmeDir.
func (r *readmeRunner) lines(out string) []string {
	out = strings.ReplaceAll(out, r.dir, readmeDir)
	out = strings.TrimSuffix(out, "\n")
	if out == "" {
		return nil
	}
	ls := strings.Split(out, "\n")
	for i, l := range ls {
		ls[i] = strings.TrimRight(l, " \t")
	}
	return ls
}

func (r *readmeRunner) command(ctx context.Context, line string, out *tooltest.SyncBuffer) *exec.Cmd {
	for k, v := range r.ids { // the README's ids stand for this run's
		line = strings.ReplaceAll(line, k, v)
	}
	line = strings.ReplaceAll(line, readmeDir, r.dir)
	cmd := exec.CommandContext(ctx, "bash", "-o", "pipefail", "-c", line)
	cmd.Dir = r.dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + r.dir, "LANG=C.UTF-8", "CRKVOL_MASTER_KEY="}
	for k, v := range r.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// run runs one block and returns its content as it should read.
func (r *readmeRunner) run(b readmeBlock) (content []string, failures []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	type bg struct {
		cmd  *exec.Cmd
		out  *tooltest.SyncBuffer
		done chan error
	}
	var bgs []bg
	for _, s := range b.steps {
		content = append(content, "$ "+s.cmd)
		if m := assignRE.FindStringSubmatch(s.cmd); m != nil && len(s.want) == 0 {
			var out tooltest.SyncBuffer
			cmd := r.command(ctx, `printf %s `+m[2], &out)
			if err := cmd.Run(); err != nil {
				failures = append(failures, fmt.Sprintf("%s: %v: %s", s.cmd, err, out.String()))
			}
			r.env[m[1]] = out.String()
			continue
		}
		if line, ok := strings.CutSuffix(s.cmd, " &"); ok {
			out := &tooltest.SyncBuffer{}
			cmd := r.command(ctx, line, out)
			if err := cmd.Start(); err != nil {
				failures = append(failures, fmt.Sprintf("%s: %v", s.cmd, err))
				continue
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			bgs = append(bgs, bg{cmd, out, done})
			deadline := time.Now().Add(30 * time.Second) // a hang guard, not a timing check
			for {
				got := r.lines(out.String())
				if len(got) >= len(s.want) || time.Now().After(deadline) {
					shown, why := readmeMatch(s.want, got, b.nums, r.ids)
					content = append(content, shown...)
					if why != "" {
						failures = append(failures, fmt.Sprintf("%s: %s", s.cmd, why))
					}
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			continue
		}
		var out tooltest.SyncBuffer
		err := r.command(ctx, s.cmd, &out).Run()
		got := r.lines(out.String())
		shown, why := readmeMatch(s.want, got, b.nums, r.ids)
		content = append(content, shown...)
		switch {
		case why != "":
			failures = append(failures, fmt.Sprintf("$ %s\n  %s\n  output:\n    %s", s.cmd, why, strings.Join(got, "\n    ")))
		case err != nil:
			failures = append(failures, fmt.Sprintf("$ %s: %v (the README shows no failure)", s.cmd, err))
		}
	}
	for _, g := range bgs {
		select {
		case err := <-g.done:
			if err != nil {
				failures = append(failures, fmt.Sprintf("background %s: %v: %s", g.cmd.Args, err, g.out.String()))
			}
		case <-time.After(30 * time.Second):
			g.cmd.Process.Kill()
			<-g.done
			failures = append(failures, fmt.Sprintf("background %s still running at the end of block %s", g.cmd.Args, b.name))
		}
	}
	return content, failures
}

// TestREADME runs the README's console blocks and checks that each command still prints what
// the README shows (see the comment of updateREADME for the rules).
func TestREADME(t *testing.T) {
	t.Parallel()
	path := filepath.Join("..", "..", "README.md")
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	lines := strings.Split(string(data), "\n")
	blocks, err := parseREADME(lines)
	require.NoError(t, err)
	require.NotEmpty(t, blocks)
	r := &readmeRunner{t: t, dir: t.TempDir(), env: map[string]string{}, ids: map[string]string{}}
	if d, err := filepath.EvalSymlinks(r.dir); err == nil {
		r.dir = d
	}
	updated := append([]string{}, lines...)
	var contents [][]string
	ran := make([]bool, len(blocks))
	for i, b := range blocks {
		if b.long && !tooltest.Long() {
			t.Logf("block %s: long; runs with %s=1", b.name, tooltest.LongEnv)
			contents = append(contents, nil)
			continue
		}
		if len(b.tools) > 0 {
			found := tooltest.Available(t, b.tools...)
			if len(found) < len(b.tools) {
				t.Logf("block %s: needs %s", b.name, strings.Join(b.tools, ", "))
				contents = append(contents, nil)
				continue
			}
		}
		content, failures := r.run(b)
		contents = append(contents, content)
		ran[i] = true
		if !*updateREADME {
			for _, f := range failures {
				t.Errorf("README.md block %s (line %d):\n%s", b.name, b.start, f)
			}
		}
	}
	if !*updateREADME {
		return
	}
	for i := len(blocks) - 1; i >= 0; i-- { // from the end, so earlier indexes stay valid
		if !ran[i] {
			continue
		}
		b := blocks[i]
		updated = append(updated[:b.start], append(contents[i], updated[b.end:]...)...)
	}
	require.NoError(t, os.WriteFile(path, []byte(strings.Join(updated, "\n")), 0o644))
	t.Logf("rewrote %s", path)
}

// TestREADMEMatch checks the matching rules on their own, including that they fail.
func TestREADMEMatch(t *testing.T) {
	const u1, u2 = "0877b69b-f634-4380-8842-97eae70fa34a", "fd479e7f-abc1-487f-9e5d-3755e5a421c5"
	const r1, r2 = "11111111-2222-4333-8444-555555555555", "66666666-7777-4888-8999-aaaaaaaaaaaa"
	tests := []struct {
		name      string
		want, got []string
		nums      bool
		ok        bool
	}{
		{"same", []string{"wrote 14 bytes at offset 0"}, []string{"wrote 14 bytes at offset 0"}, false, true},
		{"other number", []string{"wrote 14 bytes at offset 0"}, []string{"wrote 15 bytes at offset 0"}, false, false},
		{"numbers option", []string{"vaes 14207 2.50x"}, []string{"vaes 9000 1.31x"}, true, true},
		{"uuid and time", []string{"Key ID  " + u1, "Created  2026-11-27T20:41:16Z"}, []string{"Key ID " + r1, "Created     2027-01-01T00:00:00Z"}, false, true},
		{"uuid consistent", []string{u1 + " " + u1}, []string{r1 + " " + r1}, false, true},
		{"uuid inconsistent", []string{u1 + " " + u1}, []string{r1 + " " + r2}, false, false},
		{"two uuids one value", []string{u1 + " " + u2}, []string{r1 + " " + r1}, false, true},
		{"duration", []string{"wall time 216.9 s", "p50 12.8 ms"}, []string{"wall time 3.1 s", "p50 2 ms"}, false, true},
		{"duration unit differs", []string{"wall time 216.9 s"}, []string{"wall time 3.1 ms"}, false, false},
		{"ellipsis lines", []string{"a", "…", "z"}, []string{"a", "b", "c", "z"}, false, true},
		{"ellipsis none", []string{"a", "…", "z"}, []string{"a", "z"}, false, true},
		{"ellipsis rest", []string{"key-00 …"}, []string{"key-00 3mo 7"}, false, true},
		{"missing line", []string{"a", "b"}, []string{"a"}, false, false},
		{"extra line", []string{"a"}, []string{"a", "b"}, false, false},
		{"pid", []string{"detached vol.img (process 3649)"}, []string{"detached vol.img (process 12)"}, false, true},
		{"text differs", []string{"Header        ok"}, []string{"Header        bad"}, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ids := map[string]string{}
			_, why := readmeMatch(tc.want, tc.got, tc.nums, ids)
			assert.Equal(t, tc.ok, why == "", why)
		})
	}
	ids := map[string]string{}
	_, why := readmeMatch([]string{"Key " + u1}, []string{"Key " + r1}, false, ids)
	require.Empty(t, why)
	_, why = readmeMatch([]string{"Key " + u1}, []string{"Key " + r2}, false, ids)
	assert.NotEmpty(t, why, "a README id keeps its meaning from one command to the next")
}

// TestREADMEBlocksHaveDirectives fails on a console block the README test would not run.
func TestREADMEBlocksHaveDirectives(t *testing.T) {
	_, err := parseREADME([]string{"text", "```console", "$ crkvol demo", "```"})
	assert.ErrorContains(t, err, "without a <!-- readme-test")
	blocks, err := parseREADME([]string{"<!-- readme-test: tour long tools=cryptsetup,nbdinfo -->", "```console", "$ a", "out", "$ b &", "```"})
	require.NoError(t, err)
	require.Len(t, blocks, 1)
	assert.True(t, blocks[0].long)
	assert.Equal(t, []string{"cryptsetup", "nbdinfo"}, blocks[0].tools)
	assert.Equal(t, []readmeStep{{"a", []string{"out"}}, {"b &", nil}}, blocks[0].steps)
}
