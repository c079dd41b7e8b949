package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestExitCodes: 2 for usage errors (bad flag syntax, a flag value that does not parse, a
// wrong number of arguments, an unknown command); 1 for everything else, including values
// that parse but are out of range; and a failed command leaves no file behind. The command
// lines run in this process (run is what main passes to os.Exit), where a process each cost
// 40 ms of CPU; exitcodes.txtar checks the same rules on the process's exit status.
func TestExitCodes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	env := testEnv(t)
	code, out, stderr := runCLI(t, env, "--json", "key", "create", "codes")
	require.Zero(t, code, stderr)
	key := jsonField(t, out, "id")
	v := filepath.Join(dir, "v.img")
	code, _, stderr = runCLI(t, env, "volume", "create", v, "--size", "1MiB", "--key", key)
	require.Zero(t, code, stderr)
	x := filepath.Join(dir, "x.img")
	crash := filepath.Join(dir, "crash")

	// stderr: a regexp (multi-line, as in a testscript) the message must match; "" for any.
	type row struct {
		code   int
		args   string
		stderr string
	}
	rows := []row{
		// Usage errors.
		{2, "volume create", ""},
		{2, "volume create $DIR/a.img $DIR/b.img --size 1MiB --key $KEY", ""},
		{2, "volume status", ""},
		{2, "volume nosuch", ""},
		{2, "nosuch", ""},
		{2, "volume read $V --bogus", ""},
		{2, "volume read $V --length", ""},
		{2, "volume create $X --size ten --key $KEY", ""},
		{2, "volume create $X --size 1MiB --key $KEY --sector-size many", ""},
		{2, "volume create $X --size 1MiB --key $KEY --cipher-key-bits many", ""},
		{2, "volume resize $V --size ten", ""},
		{2, "volume read $V --offset ten", ""},
		{2, "volume read $V --length ten", ""},
		{2, "volume write $V --offset ten", ""},
		{2, "volume create $X --key $KEY", ""},
		{2, "key policy $KEY", ""},
		{2, "key policy $KEY --rotation-months many", ""},
		{2, "key policy $KEY --rotation-months 3 --disable", ""},
		{2, "events --limit many", `^crkvol: events: --limit many: want an integer$`},
		{2, "volume detach $V --timeout soon", `^crkvol: volume detach: --timeout soon: want a duration such as 90s, 15m or 1h$`},
		{2, "sim run --kms-fail-rate lots", `^crkvol: sim run: --kms-fail-rate lots: want a number such as 0.05$`},
		{2, "--json=maybe key list", `--json maybe: want true or false`},
		{2, "sim run --volume-size many", ""},

		// Values that parse but are out of range.
		{1, "volume create $X --size 0 --key $KEY", ""},
		{1, "volume create $X --size 1 --key $KEY", ""},
		{1, "volume create $X --size -1MiB --key $KEY", ""},
		{1, "volume create $X --size 1MiB --key $KEY --sector-size 1000", ""},
		{1, "volume create $X --size 1MiB --key $KEY --cipher-key-bits 128", ""},
		{1, "volume create $X --size 9223372036854775807 --key $KEY", ""},
		{1, "volume resize $V --size 0", ""},
		{1, "volume resize $V --size 0.5", ""},
		{1, "volume read $V --offset -1", ""},
		{1, "volume read $V --length -1", ""},
		{1, "volume read $V --offset 2MiB", ""},
		{1, "volume read $V --length 2MiB", ""},
		{1, "volume write $V --offset -1", ""},
		{1, "volume write $V --offset 0.5", ""},
		{1, "sim run --volume-size 1KiB", `volume size 1KiB: want at least 64KiB`},
		{1, "sim run --volumes 0", ""},
		{1, "key policy $KEY --rotation-months 0", `between 1 and 12 months`},
		{1, "key policy $KEY --rotation-months 13", `between 1 and 12 months`},
		{1, "events --limit -1", ""},
		{1, "volume attach $V --max-connections 0", ""},
		{1, "volume attach $V --offline-grace 1ns", `^crkvol: volume attach: --offline-grace 1ns: want 0 \(no limit\) or at least 10s$`},
		{1, "volume attach $V --offline-grace -1s", ""},
		{1, "volume attach $V --listen tcp:192.0.2.1:10809", ""},
		{1, "volume detach $V --timeout -1s", `^crkvol: volume detach: --timeout -1s: want a positive duration$`},
		{1, "volume detach $V --timeout 0", `want a positive duration`},
		{1, "sim crash --trials 0 --dir $CRASH", `^crkvol: sim crash: --trials 0: want at least 1$`},
		{1, "sim crash --volumes -1 --dir $CRASH", `^crkvol: sim crash: --volumes -1: want at least 1$`},

		// Failures that are not about the call at all.
		{1, "volume status $DIR/missing.img", ""},
		{1, "key show 00000000-0000-4000-8000-000000000000", ""},
	}
	expand := strings.NewReplacer("$DIR", dir, "$KEY", key, "$V", v, "$X", x, "$CRASH", crash)
	for _, r := range rows {
		args := strings.Fields(expand.Replace(r.args))
		code, _, stderr := runCLI(t, env, args...)
		assert.Equal(t, r.code, code, "crkvol %s: %s", r.args, stderr)
		assert.NotEmpty(t, stderr, "crkvol %s says nothing", r.args)
		if r.stderr != "" {
			assert.Regexp(t, regexp.MustCompile("(?m)"+r.stderr), stderr, "crkvol %s", r.args)
		}
		// A parse failure names what is wrong, not the Go function that found it.
		assert.NotRegexp(t, `strconv|ParseInt|ParseFloat|ParseBool|time: invalid`, stderr, "crkvol %s", r.args)
		// sim crash checks its flags before it calibrates or makes a state directory.
		if strings.HasPrefix(r.args, "sim crash") {
			assert.NotContains(t, stderr, "calibrat", "crkvol %s", r.args)
			assert.NoDirExists(t, filepath.Join(crash, "state"), "crkvol %s", r.args)
		}
	}
	_, err := os.Stat(x)
	assert.True(t, os.IsNotExist(err), "a failed volume create left %s behind", x)
}
