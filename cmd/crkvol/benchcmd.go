package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"crkvol/bench"
)

// benchSectionHelp describes each section of `crkvol bench` for its flag.
var benchSectionHelp = map[string]string{
	"sector": "sector engine vs openssl speed, x/crypto/xts and the AES ceiling (default)",
	"kms":    "KMS wrap+unwrap pairs/s with 1, 8, 32 callers, in process and over HTTP",
	"rewrap": "fleet key rotation volumes/s vs the disk's 2-flush commit ceiling",
	"io":     "volume reads and writes vs a raw file in the same page-cache state",
	"nbd":    "NBD throughput vs qemu-nbd over TCP loopback (needs nbdcopy, qemu-nbd)",
}

func (a *app) benchCommand() *cobra.Command {
	var quick, all, force bool
	var output, chart, dir string
	want := map[string]*bool{}
	cmd := &cobra.Command{Use: "bench", Short: "Measure crkvol against references measured in the same run: sector engine, I/O, fleet rewrap, KMS, NBD", Args: args(cobra.NoArgs),
		Long: `bench measures crkvol on this machine, each figure against a reference measured in the same run,
and prints tables of the figures and their ratios, or with the global --json the report as JSON
on stdout. Sections (flags; --all runs every one, none means --sector):
` + benchSectionList() + `
--quick runs every section's short variant (about a tenth of the time). --output FILE also
writes the JSON report, and --chart FILE.svg a chart of every ratio, to new files (--force to
overwrite them). The sections that write files do so in a temporary directory made under
--dir, by default the state directory when it exists (the disk volumes live on: the rewrap
and I/O numbers are that disk's), else the system's temporary directory; it is removed at
the end. A section that needs a program that is not installed says so and the others run.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var sections []string
			for _, s := range bench.Sections() {
				if all || *want[s] {
					sections = append(sections, s)
				}
			}
			if len(sections) == 0 {
				sections = []string{"sector"} // the default section, as bench.Run has it
			}
			// The output files are checked first, as a run takes minutes, and written at the
			// end, so that a cancelled run leaves none.
			for _, o := range []struct{ flag, path string }{{"output", output}, {"chart", chart}} {
				if err := checkOutputFree(o.flag, o.path, a.outputOptions(force, 0o644)); err != nil {
					return err
				}
			}
			if output != "" && output == chart {
				return usagef("--output and --chart name the same file %s", output)
			}
			base, err := a.benchDir(dir)
			if err != nil {
				return err
			}
			scratch, err := os.MkdirTemp(base, "crkvol-bench-")
			if err != nil {
				return fmt.Errorf("scratch directory: %w", err)
			}
			defer os.RemoveAll(scratch)
			fmt.Fprintf(a.stderr, "crkvol: bench: measuring %s...\n", strings.Join(sections, ", "))
			r, runErr := bench.Run(cmd.Context(), bench.Options{Sections: sections, Quick: quick, Dir: scratch, RewrapProcs: flushProcs(a.getenv, a.cpus, 0),
				Progress: func(s string) { fmt.Fprintf(a.stderr, "crkvol: bench: %s\n", s) }})
			if r == nil || cmd.Context().Err() != nil {
				return runErr
			}
			// The results are printed before the files are written, so that a failure to
			// write one loses nothing; a section's failure is in the report and the files.
			if a.asJSON {
				if err := a.emit(r); err != nil {
					return err
				}
			} else if err := r.WriteTable(a.stdout); err != nil {
				return err
			}
			if output != "" {
				b, err := json.MarshalIndent(r, "", "  ")
				if err != nil {
					return err
				}
				if err := writeOutput("output", output, append(b, '\n'), a.outputOptions(force, 0o644)); err != nil {
					return err
				}
			}
			if chart != "" {
				var b bytes.Buffer
				if err := r.WriteChart(&b); err != nil {
					return err
				}
				if err := writeOutput("chart", chart, b.Bytes(), a.outputOptions(force, 0o644)); err != nil {
					return err
				}
			}
			return runErr
		}}
	for _, s := range bench.Sections() {
		want[s] = new(bool)
		cmd.Flags().BoolVar(want[s], s, false, benchSectionHelp[s])
	}
	cmd.Flags().BoolVar(&all, "all", false, "run every section")
	cmd.Flags().BoolVar(&quick, "quick", false, "run every section's short variant")
	cmd.Flags().StringVar(&output, "output", "", "also write the report as JSON to this new file")
	cmd.Flags().StringVar(&chart, "chart", "", "also draw every ratio as an SVG chart in this new file")
	cmd.Flags().BoolVar(&force, "force", false, "overwrite the --output and --chart files if they exist")
	cmd.Flags().StringVar(&dir, "dir", "", "make the scratch directory under this one (default: the state directory if it exists, else the system's temporary directory)")
	return cmd
}

// benchSectionList is the Long help's list of sections.
func benchSectionList() string {
	var b strings.Builder
	for _, s := range bench.Sections() {
		fmt.Fprintf(&b, "  --%-7s %s\n", s, benchSectionHelp[s])
	}
	return b.String()
}

// benchDir is the directory the run's scratch directory is made in: --dir, else the state
// directory if it exists, else the system's temporary directory.
func (a *app) benchDir(flag string) (string, error) {
	if flag != "" {
		st, err := os.Stat(flag)
		if err != nil {
			return "", fmt.Errorf("--dir: %w", err)
		}
		if !st.IsDir() {
			return "", fmt.Errorf("--dir %s: not a directory", flag)
		}
		// Absolute: the sections hand paths to other programs (qemu-nbd, nbdcopy), which
		// would read "-x" as an option or "null:x" as a protocol.
		return filepath.Abs(flag)
	}
	if state, err := a.stateDirectory(); err == nil {
		if st, err := os.Stat(state); err == nil && st.IsDir() {
			return state, nil
		} else if err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("state directory: %w", err)
		}
	}
	return os.TempDir(), nil
}
