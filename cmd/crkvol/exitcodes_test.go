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

// TestSizeErrors: a size, offset or length that does not parse is a usage error (exit 2)
// naming the accepted forms; one that parses but is out of range exits 1, naming the sector
// size where it matters; neither leaves an image behind. The command lines of inproc/sizes.txtar's
// refusals, run in this process (inproc/sizes.txtar keeps the accepted forms and one refusal of
// each kind as processes).
func TestSizeErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	env := testEnv(t)
	code, out, stderr := runCLI(t, env, "--json", "key", "create", "sizes")
	require.Zero(t, code, stderr)
	key := jsonField(t, out, "id")
	a, d, data := filepath.Join(dir, "a.img"), filepath.Join(dir, "d.img"), filepath.Join(dir, "data.txt")
	code, _, stderr = runCLI(t, env, "volume", "create", a, "--size", "1.5MiB", "--key", key)
	require.Zero(t, code, stderr)
	require.NoError(t, os.WriteFile(data, []byte("twelve bytes\n"), 0o644))

	// stderr: regexps (multi-line, as in a testscript) the message must match; not: ones it
	// must not.
	rows := []struct {
		code        int
		args        string
		stderr, not []string
	}{
		{1, `volume create $D --size 1.0000001GiB --key $KEY`, []string{`^crkvol: volume create: --size 1.0000001GiB: .*1.0000001GiB is not a whole number of bytes$`}, nil},
		{1, `volume create $D --size 10KB --key $KEY --sector-size 512`, []string{`not a whole number of 512-byte sectors`}, nil},
		{1, `volume create $D --size 0 --key $KEY`, []string{`^crkvol: volume create: --size 0: want a positive size of whole 4096-byte sectors$`}, nil},
		{1, `key rotate $KEY --workers 0`, []string{`^crkvol: key rotate: --workers 0: want 1 to 1024 volumes at once$`}, nil},
		{1, `key sync $KEY --workers 1025`, []string{`^crkvol: key sync: --workers 1025: want 1 to 1024 volumes at once$`}, nil},
		{1, `volume create $D --size 1 --key $KEY`, []string{`not a whole number of 4096-byte sectors`}, nil},
		{1, `volume create $D --size -4KiB --key $KEY`, []string{`^crkvol: volume create: --size -4KiB: want a positive size`}, nil},
		{1, `volume create $D --size 5000PiB --key $KEY`, []string{`^crkvol: volume create: --size 5000PiB: .*5000PiB is too large \(at most 4EiB, 2\^62 bytes\)$`}, nil},
		{1, `volume create $D --size 12345678901234567890123 --key $KEY`, []string{`12345678901234567890123 bytes is too large \(at most 4EiB, 2\^62 bytes\)$`}, nil},
		{1, `volume create $D --size 9223372036854775807 --key $KEY`, []string{`9223372036854775807 bytes is too large \(at most 4EiB, 2\^62 bytes\)$`}, nil},
		{1, `volume create $D --size 1.0000000000000000000001MiB --key $KEY`, []string{`^crkvol: volume create: --size 1.0000000000000000000001MiB: .*1.0000000000000000000001MiB is not a whole number of bytes$`}, nil},
		{1, `volume read $A --offset 12345678901234567890123`, []string{`12345678901234567890123 bytes is too large \(at most 9223372036854775807 bytes, 2\^63-1\)$`}, nil},
		{1, `volume create $D --size 1MiB --key $KEY --sector-size 1000`, []string{`^crkvol: volume create: --sector-size 1000: want 512, 1024, 2048 or 4096$`}, nil},
		{1, `volume create $D --size 1MiB --key $KEY --cipher-key-bits 128`, []string{`^crkvol: volume create: --cipher-key-bits 128: want 256 \(AES-128-XTS\) or 512 \(AES-256-XTS\)$`}, nil},
		{2, `volume create $D --size 1MiB --key $KEY --sector-size abc`, []string{`^crkvol: volume create: --sector-size abc: want 512, 1024, 2048 or 4096$`}, []string{`strconv|invalid argument`}},
		{2, `volume create $D --size 1MiB --key $KEY --cipher-key-bits 1.5`, []string{`^crkvol: volume create: --cipher-key-bits 1.5: want 256 \(AES-128-XTS\) or 512 \(AES-256-XTS\)$`}, []string{`strconv`}},
		{2, `volume create $D --size 12parsecs --key $KEY`, []string{`^crkvol: volume create: invalid argument "12parsecs" for "--size" flag: invalid size "12parsecs": want a number of bytes, optionally with a fraction and a unit: KiB, MiB, GiB, TiB, PiB or K, M, G, T, P \(powers of 1024\), KB, MB, GB, TB, PB \(powers of 1000\), B \(bytes\); units in any case, such as 4096, 64MiB, 1.5GiB or 10GB$`, `^crkvol: hint: see crkvol volume create --help$`}, nil},
		{2, `volume create $D --size 1EiB --key $KEY`, []string{`invalid size "1EiB"`}, nil},
		{2, `volume create $D --size 1e9 --key $KEY`, nil, nil},
		{2, `volume create $D --size .5GiB --key $KEY`, nil, nil},
		{1, `volume write $A --offset 0.5 --input $DATA`, []string{`^crkvol: volume write: --offset 0.5: .*0.5 bytes is not a whole number of bytes$`}, nil},
		{1, `volume write $A --offset -1 --input $DATA`, []string{`^crkvol: volume write: --offset -1: want a byte offset of 0 or more$`}, nil},
		{1, `volume read $A --offset -1KiB`, []string{`^crkvol: volume read: --offset -1KiB: want a byte offset of 0 or more$`}, nil},
		{1, `volume read $A --length -1`, []string{`^crkvol: volume read: --length -1: want a byte count of 0 or more$`}, nil},
		{1, `volume read $A --length 1.5`, []string{`not a whole number of bytes`}, nil},
		{1, `volume read $A --offset 1MiB --length 1MiB`, []string{`^crkvol: volume read: 1048576 bytes at offset 1048576 run past the end of the 1572864-byte volume$`}, nil},
		{1, `volume write $A --offset 1.5MiB --input $DATA`, []string{`do not fit the 1572864-byte volume`}, nil},
		{2, `volume read $A --length lots`, []string{`invalid argument "lots" for "--length" flag: invalid size`}, nil},
		{2, `volume write $A --offset 0x10 --input $DATA`, []string{`invalid argument "0x10" for "--offset" flag: invalid size`}, nil},
		{1, `volume resize $A --size 0`, []string{`^crkvol: volume resize: --size 0: .*want a positive size$`}, nil},
		{1, `volume resize $A --size 1.0000000000000000000001MiB`, []string{`1.0000000000000000000001MiB is not a whole number of bytes$`}, nil},
		{1, `volume resize $A --size 9223372036854775807`, []string{`9223372036854775807 bytes is too large \(at most 4EiB, 2\^62 bytes\)$`}, nil},
		{2, `volume resize $A --size 2MiBs`, []string{`invalid argument "2MiBs" for "--size" flag: invalid size`}, nil},
		{2, `sim run --volume-size 1MiBs`, []string{`invalid argument "1MiBs" for "--volume-size" flag: invalid size`}, nil},
	}
	expand := strings.NewReplacer("$KEY", key, "$A", a, "$DATA", data, "$D", d)
	for _, r := range rows {
		code, _, stderr := runCLI(t, env, strings.Fields(expand.Replace(r.args))...)
		assert.Equal(t, r.code, code, "crkvol %s: %s", r.args, stderr)
		assert.NotEmpty(t, stderr, "crkvol %s says nothing", r.args)
		for _, re := range r.stderr {
			assert.Regexp(t, regexp.MustCompile("(?m)"+re), stderr, "crkvol %s", r.args)
		}
		for _, re := range r.not {
			assert.NotRegexp(t, regexp.MustCompile("(?m)"+re), stderr, "crkvol %s", r.args)
		}
	}
	assert.NoFileExists(t, d, "a refused volume create left an image behind")
}

// TestErrorMessages: every error reads `crkvol: <command path>: <what failed>: <why>`, the
// command path once, hints on their own lines, an image's path named once; with --json the
// error is one JSON object on stderr and nothing is on stdout. The command lines of
// errors.txtar, run in this process (errors.txtar keeps one of each kind as a process).
func TestErrorMessages(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	env := testEnv(t)
	plain := filepath.Join(dir, "plain.img")
	require.NoError(t, os.WriteFile(plain, []byte("not a LUKS2 image\n"), 0o644))
	missing := filepath.Join(dir, "missing.img")
	p := regexp.QuoteMeta(plain)
	const absent = "00000000-0000-4000-8000-000000000000"

	// stderr: regexps (multi-line, as in a testscript) the message must match; not: ones it
	// must not; quiet: nothing on stdout.
	rows := []struct {
		code        int
		args        string
		stderr, not []string
		quiet       bool
	}{
		// Argument count, unknown flag, unknown command: the command path once, no cobra
		// "crkvol" prefix.
		{2, "key show", []string{`^crkvol: key show: accepts 1 arg\(s\), received 0$`, `^crkvol: hint: see crkvol key show --help$`}, []string{`crkvol key show:`}, false},
		{2, "key show --bogus x", []string{`^crkvol: key show: unknown flag: --bogus$`}, nil, false},
		{2, "volum", []string{`^crkvol: unknown command "volum"$`, `^crkvol: hint: did you mean volume\?$`}, nil, false},
		{2, "key rotat x", []string{`^crkvol: key: unknown command "rotat"$`, `did you mean rotate\?`}, nil, false},
		{2, "key", []string{`^crkvol: key: missing subcommand$`}, nil, false},
		{2, "volume create $DIR/v.img", []string{`^crkvol: volume create: missing required flags --size, --key$`}, nil, false},
		{2, "volume create $DIR/v.img --size 1MiB", []string{`^crkvol: volume create: missing required flag --key$`}, nil, false},

		// Library errors lose their package prefix behind the command path: reading and
		// writing say which of the two failed.
		{1, "volume read $MISSING", []string{`^crkvol: volume read: open .*missing.img: `}, []string{`volume: open`}, false},
		{1, "volume write $MISSING", []string{`^crkvol: volume write: open .*missing.img: `}, nil, false},
		{1, "key show " + absent, []string{`^crkvol: key show: key does not exist: ` + absent + `$`}, nil, false},

		// An image that is not LUKS2: every operation names its path once.
		{1, "volume resize --size 2MiB $PLAIN", []string{`^crkvol: volume resize: ` + p + `: not a valid LUKS2 device`}, []string{`plain.img.*plain.img`}, false},
		{1, "volume delete $PLAIN", []string{`^crkvol: volume delete: ` + p + `: not a valid LUKS2 device.* \(and no registry entry has that path\)$`}, []string{`plain.img.*plain.img`}, false},
		{1, "volume wipe $PLAIN", []string{`^crkvol: volume wipe: ` + p + `: not a valid LUKS2 device`}, []string{`plain.img.*plain.img`}, false},
		{1, "volume erase --yes $PLAIN", []string{`^crkvol: volume erase: ` + p + `: not a valid LUKS2 device`}, []string{`plain.img.*plain.img`}, false},
		{1, "volume reidentify $PLAIN", []string{`^crkvol: volume reidentify: ` + p + `: not a valid LUKS2 device`}, []string{`plain.img.*plain.img`}, false},
		{1, "volume register $PLAIN", []string{`^crkvol: volume register: ` + p + `: not a valid LUKS2 device`}, []string{`plain.img.*plain.img`}, false},

		// --json: one JSON object on stderr, nothing on stdout, whatever the failure.
		{1, "--json key show " + absent, []string{`"command": "key show"`, `"message": "key does not exist: ` + absent + `"`, `"exitCode": 1`}, []string{`^crkvol:`}, true},
		{2, "key show --bogus --json", []string{`"message": "unknown flag: --bogus"`, `"exitCode": 2`, `"usage": true`, `"hints": \[`}, nil, true},
		{2, "--json nosuch", []string{`"message": "unknown command \\"nosuch\\""`}, []string{`"command"`}, true},
	}
	expand := strings.NewReplacer("$DIR", dir, "$MISSING", missing, "$PLAIN", plain)
	for _, r := range rows {
		code, stdout, stderr := runCLI(t, env, strings.Fields(expand.Replace(r.args))...)
		assert.Equal(t, r.code, code, "crkvol %s: %s", r.args, stderr)
		for _, re := range r.stderr {
			assert.Regexp(t, regexp.MustCompile("(?m)"+re), stderr, "crkvol %s", r.args)
		}
		for _, re := range r.not {
			assert.NotRegexp(t, regexp.MustCompile("(?m)"+re), stderr, "crkvol %s", r.args)
		}
		if r.quiet {
			assert.Empty(t, stdout, "crkvol %s", r.args)
		}
	}
	b, err := os.ReadFile(plain)
	require.NoError(t, err)
	assert.Equal(t, "not a LUKS2 image\n", string(b), "a refused command changed the file")
}
