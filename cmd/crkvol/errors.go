package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

// usageError marks errors in how the command was called (exit status 2): bad flag syntax, a
// flag value that does not parse, a wrong number of arguments, an unknown command. Values
// that parse but are out of range are ordinary errors (exit status 1).
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

// usagef returns a usageError with a formatted message.
func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// hinted carries suggestions printed after an error, each on its own "crkvol: hint:" line
// (and in the "hints" member of a --json error). The hints are not part of Error().
type hinted struct {
	error
	hints []string
}

func (h hinted) Unwrap() error { return h.error }

// withHint attaches hints to err; it returns nil for a nil err.
func withHint(err error, hints ...string) error {
	if err == nil {
		return nil
	}
	return hinted{err, hints}
}

// hintsOf collects the hints anywhere in err's chain, outermost first.
func hintsOf(err error) []string {
	var out []string
	walkErr(err, func(e error) {
		if h, ok := e.(hinted); ok {
			out = append(out, h.hints...)
		}
	})
	return out
}

// walkErr calls f on err and every error it wraps, depth first.
func walkErr(err error, f func(error)) {
	if err == nil {
		return
	}
	f(err)
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		walkErr(u.Unwrap(), f)
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			walkErr(e, f)
		}
	}
}

// packagePrefixes are the names the project's packages begin their errors with. Behind the
// command path they only repeat what the path says, so the CLI leaves them out.
var packagePrefixes = map[string]bool{
	"volume": true, "crk": true, "keyslot": true, "kms": true, "kpapi": true, "nbd": true,
	"sim": true, "bench": true, "sector": true, "ident": true, "qcow2": true,
}

// errorText is the message the CLI shows for err: its text without the package-name
// segments ("volume: ", "crk: ") that library errors start with.
func errorText(err error) string {
	parts := strings.Split(err.Error(), ": ")
	out := parts[:0]
	for i, p := range parts {
		if packagePrefixes[p] && i < len(parts)-1 {
			continue
		}
		out = append(out, p)
	}
	return strings.Join(out, ": ")
}

// commandName is the command's path without the program name ("volume write"), or "" for
// the root command.
func commandName(cmd *cobra.Command) string {
	if cmd == nil {
		return ""
	}
	return strings.TrimPrefix(strings.TrimPrefix(cmd.CommandPath(), "crkvol"), " ")
}

// failure is a command's error as --json prints it on stderr.
type failure struct {
	Error failureBody `json:"error"`
}

type failureBody struct {
	Command  string   `json:"command,omitempty"`
	Message  string   `json:"message"`
	ExitCode int      `json:"exitCode"`
	Usage    bool     `json:"usage,omitempty"`
	Signal   string   `json:"signal,omitempty"`
	Hints    []string `json:"hints,omitempty"`
}

// maxMessageLines is how many lines of an error message report prints in text mode (a
// joined error can have one per volume); the rest are counted on one line.
const maxMessageLines = 10

// report prints a failed command's error to w: `crkvol: <command>: <message>` (at most
// maxMessageLines lines of it) and its hint lines, or with asJSON one JSON object holding the
// whole message.
func report(w io.Writer, asJSON bool, f failureBody) {
	if asJSON {
		b, _ := json.MarshalIndent(failure{f}, "", "  ")
		fmt.Fprintf(w, "%s\n", b)
		return
	}
	prefix := "crkvol: "
	if f.Command != "" {
		prefix += f.Command + ": "
	}
	msg := f.Message
	if lines := strings.Split(msg, "\n"); len(lines) > maxMessageLines {
		msg = strings.Join(lines[:maxMessageLines], "\n") +
			fmt.Sprintf("\ncrkvol: … and %d more lines (--json shows them all)", len(lines)-maxMessageLines)
	}
	fmt.Fprintf(w, "%s%s\n", prefix, msg)
	for _, h := range f.Hints {
		fmt.Fprintf(w, "crkvol: hint: %s\n", h)
	}
}

// wantsJSON reports whether --json is among the arguments before "--", for errors that stop
// flag parsing before it is reached.
func wantsJSON(args []string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		if a == "--json" || a == "--json=true" || a == "--json=1" {
			return true
		}
	}
	return false
}

// requireFlags makes the named flags of cmd required: running cmd without them is a usage
// error naming them. (Cobra's MarkFlagRequired reports the same with an error the CLI could
// only recognise by its text.)
func requireFlags(cmd *cobra.Command, names ...string) {
	for _, n := range names {
		if cmd.Flags().Lookup(n) == nil {
			panic("crkvol: requireFlags: no flag " + n) // a programming error in this file, found by every test
		}
	}
	requireFlagsWhen(cmd, func(*cobra.Command) []string { return names })
}

// requireFlagsWhen is requireFlags for flags whose need depends on the others given: names
// returns the flags required of the command line being run.
func requireFlagsWhen(cmd *cobra.Command, names func(*cobra.Command) []string) {
	prev := cmd.PreRunE
	cmd.PreRunE = func(c *cobra.Command, args []string) error {
		var missing []string
		for _, n := range names(c) {
			if !c.Flags().Changed(n) {
				missing = append(missing, "--"+n)
			}
		}
		if len(missing) > 0 {
			return usagef("missing required %s %s", plural(len(missing), "flag", "flags"), strings.Join(missing, ", "))
		}
		if prev != nil {
			return prev(c, args)
		}
		return nil
	}
}

// plural returns one for n == 1, else many.
func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
