package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"crkvol/sector"
)

// buildVersion describes this binary: its module, the VCS state it was built from, the Go
// toolchain and the sector engine (XTS implementation) that this CPU runs.
type buildVersion struct {
	Module  string `json:"module"`
	Version string `json:"version"`
	// Revision, Modified and Time come from the VCS stamp (go build -buildvcs); absent when
	// the binary has none.
	Revision     string   `json:"revision,omitempty"`
	Modified     bool     `json:"modified,omitempty"`
	Time         string   `json:"time,omitempty"`
	Go           string   `json:"go"`
	Platform     string   `json:"platform"`
	XTS          string   `json:"xts"`
	XTSAvailable []string `json:"xtsAvailable"`
}

// readVersion collects the build information of the running binary.
func readVersion() buildVersion {
	v := buildVersion{Module: "crkvol", Version: "(devel)", Go: runtime.Version(),
		Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Path != "" {
			v.Module = bi.Main.Path
		}
		if bi.Main.Version != "" {
			v.Version = bi.Main.Version
		}
		if bi.GoVersion != "" {
			v.Go = bi.GoVersion
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				v.Revision = s.Value
			case "vcs.modified":
				v.Modified = s.Value == "true"
			case "vcs.time":
				v.Time = s.Value // RFC 3339 UTC, as the go command stamps it
			}
		}
	}
	// sector.New picks the first, fastest, of the paths this CPU and build run.
	for _, p := range sector.Paths() {
		v.XTSAvailable = append(v.XTSAvailable, string(p))
	}
	v.XTS = v.XTSAvailable[0]
	return v
}

// printVersion prints the build information as a table, or with --json as one object.
func (a *app) printVersion() error {
	v := readVersion()
	if a.asJSON {
		return a.emit(v)
	}
	fmt.Fprintf(a.stdout, "crkvol %s\n", v.Version)
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "Module\t%s\n", v.Module)
	rev := v.Revision
	switch {
	case rev == "":
		rev = "unknown (built without VCS information)"
	case v.Modified:
		rev += " (modified)"
	}
	fmt.Fprintf(w, "Revision\t%s\n", rev)
	if v.Time != "" {
		fmt.Fprintf(w, "Committed\t%s\n", v.Time)
	}
	fmt.Fprintf(w, "Go\t%s\n", v.Go)
	fmt.Fprintf(w, "Platform\t%s\n", v.Platform)
	fmt.Fprintf(w, "XTS engine\t%s (available: %s)\n", v.XTS, strings.Join(v.XTSAvailable, ", "))
	return w.Flush()
}

// versionCommand is `crkvol version`.
func (a *app) versionCommand() *cobra.Command {
	return &cobra.Command{Use: "version", Short: "Show the build: module version, VCS revision, Go version and the XTS engine in use",
		Args: args(cobra.NoArgs),
		RunE: func(*cobra.Command, []string) error { return a.printVersion() }}
}

// addVersion gives root the version command and a --version flag that prints the same.
func (a *app) addVersion(root *cobra.Command) {
	var show bool
	root.Flags().BoolVar(&show, "version", false, "show the build, as the version command does")
	run := root.RunE // unknown commands and help
	root.RunE = func(cmd *cobra.Command, args []string) error {
		if show && len(args) == 0 {
			return a.printVersion()
		}
		return run(cmd, args)
	}
	root.AddCommand(a.versionCommand())
}
