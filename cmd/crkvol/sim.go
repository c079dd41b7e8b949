package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"crkvol/sim"
	"crkvol/volume"
)

func (a *app) simCommand() *cobra.Command {
	cmd := group("sim", "Simulate fleets of real volumes through months of rotations and faults")

	var (
		scenarioFile, reportFile, chartFile, dir, latency string
		deliveryDelay, lockoutBound                       string
		volumeSize                                        = sizeFlag{}
		sc                                                sim.Scenario
		keep, force                                       bool
	)
	run := &cobra.Command{Use: "run", Short: "Run a scenario over real volume images and audit the result", Args: args(cobra.NoArgs),
		Long: `run drives the real key service and real LUKS2 volume images (small sparse files) through
months of virtual time: rotation policies and manual rotations rewrap the volumes, attaches open
them and check their data, volumes come and go, and faults hit the key service (errors, outages,
latency) and the process (crashes inside rewraps, recovered by key sync). Encrypted qcow2 images
(--images) made from volumes at the start sit in the image catalog: rotations rewrap their WDEKs
with the volumes, under the same faults. It then reconciles, opens every volume and checks every
byte written, and checks every image (WDEK on the latest version, LUKS1 header unlocked, file
unchanged, a volume created from it reads back its content). It exits non-zero if any volume
does not attach or its data differs, or an image fails a check.

With --hosts N the fleet is spread over N simulated storage hosts, each with its own volume
registry and an agent (as crkvol agent runs) over the one key service: rotations reach the
volumes only through the key service's lifecycle feed, with delivery delay, lost notifications
(received again at the agent's next poll) and agent downtime as faults. Keys are disabled now
and then (--disables); each host keeps attached volumes doing I/O, whose attach processes follow
the feed themselves. The report adds the time from each rotation to every volume on the new
version and from each disable to every attached volume stopped (p50, p99, max), and the audit
also fails if a volume never converged or served I/O later than --lockout-bound after its key's
disable.

A scenario file (YAML or JSON, see the sim package's Scenario) sets everything; flags given on
the command line override it.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Every flag, with its default, makes the scenario; a scenario file overrides them
			// with the fields it sets, and flags given on the command line override the file.
			base := sc
			base.VolumeSize = volumeSize.String()
			if err := base.Faults.Latency.UnmarshalText([]byte(latency)); err != nil {
				return usagef("--kms-latency %q: %v", latency, err)
			}
			if err := base.Faults.DeliveryDelay.UnmarshalText([]byte(deliveryDelay)); err != nil {
				return usagef("--delivery-delay %q: %v", deliveryDelay, err)
			}
			if lockoutBound != "" {
				if err := base.LockoutBound.UnmarshalText([]byte(lockoutBound)); err != nil {
					return usagef("--lockout-bound %q: %v", lockoutBound, err)
				}
			}
			s := base
			if scenarioFile != "" {
				var err error
				if s, err = sim.LoadScenarioOver(scenarioFile, base); err != nil {
					return usageError{err}
				}
			}
			f := cmd.Flags()
			overrides := map[string]func(){
				"volumes":           func() { s.Volumes = sc.Volumes },
				"keys":              func() { s.Keys = sc.Keys },
				"months":            func() { s.Months = sc.Months },
				"policy-months":     func() { s.PolicyMonths = sc.PolicyMonths },
				"manual-rotations":  func() { s.ManualRotationsPerMonth = sc.ManualRotationsPerMonth },
				"attaches":          func() { s.AttachesPerMonth = sc.AttachesPerMonth },
				"creates":           func() { s.CreatesPerMonth = sc.CreatesPerMonth },
				"deletes":           func() { s.DeletesPerMonth = sc.DeletesPerMonth },
				"mapping":           func() { s.Mapping = sc.Mapping },
				"volume-size":       func() { s.VolumeSize = volumeSize.String() },
				"kms-fail-rate":     func() { s.Faults.FailRate = sc.Faults.FailRate },
				"crash-rate":        func() { s.Faults.CrashRate = sc.Faults.CrashRate },
				"outages":           func() { s.Faults.RandomOutages = sc.Faults.RandomOutages },
				"corrupt":           func() { s.Faults.CorruptData = sc.Faults.CorruptData },
				"seed":              func() { s.Seed = sc.Seed },
				"workers":           func() { s.Workers = sc.Workers },
				"images":            func() { s.Images = sc.Images },
				"hosts":             func() { s.Hosts = sc.Hosts },
				"notification-loss": func() { s.Faults.NotificationLoss = sc.Faults.NotificationLoss },
				"agent-downtime":    func() { s.Faults.AgentDowntimes = sc.Faults.AgentDowntimes },
				"disables":          func() { s.DisablesPerMonth = sc.DisablesPerMonth },
				"delivery-delay":    func() { s.Faults.DeliveryDelay = base.Faults.DeliveryDelay },
				"lockout-bound":     func() { s.LockoutBound = base.LockoutBound },
			}
			for name, apply := range overrides {
				if f.Changed(name) {
					apply()
				}
			}
			if f.Changed("kms-latency") {
				s.Faults.Latency = base.Faults.Latency
			}
			// The output files are checked before the run, which may take minutes, and
			// created after it.
			if err := checkOutputFree("report", reportFile, a.outputOptions(force, 0o644)); err != nil {
				return err
			}
			if err := checkOutputFree("chart", chartFile, a.outputOptions(force, 0o644)); err != nil {
				return err
			}
			if err := checkOutputsDiffer("report", reportFile, "chart", chartFile); err != nil {
				return err
			}
			workDir := dir
			if workDir == "" {
				var err error
				if workDir, err = os.MkdirTemp("", "crkvol-sim-"); err != nil {
					return err
				}
				if !keep {
					defer os.RemoveAll(workDir)
				}
			} else if entries, err := os.ReadDir(workDir); err == nil && len(entries) > 0 {
				return fmt.Errorf("--dir %s is not empty (a run needs a fresh directory)", workDir)
			}
			opts := sim.Options{Dir: workDir, Logger: slog.New(slog.DiscardHandler)}
			var bars *simBars
			if !a.asJSON && isTerminal(a.stderr) {
				bars = &simBars{w: &gatedWriter{w: a.stderr}}
				opts.Progress = bars.update
			}
			rep, err := sim.Run(cmd.Context(), s, opts)
			bars.finish()
			// A scenario out of range (sim.ErrScenario from Run) is an ordinary error: the
			// values parsed.
			if err != nil {
				return err
			}
			// The summary is printed before the files are written, so that a failure to
			// write them loses nothing.
			if a.asJSON {
				if err := a.emit(rep); err != nil {
					return err
				}
			} else if err := rep.WriteSummary(a.stdout); err != nil {
				return err
			}
			if reportFile != "" {
				b, err := json.MarshalIndent(rep, "", "  ")
				if err != nil {
					return err
				}
				if err := writeOutput("report", reportFile, append(b, '\n'), a.outputOptions(force, 0o644)); err != nil {
					return err
				}
			}
			if chartFile != "" {
				out, err := createOutput("chart", chartFile, a.outputOptions(force, 0o644))
				if err != nil {
					return err
				}
				if err := rep.WriteChart(out); err != nil {
					out.Abort()
					return out.fail(err)
				}
				if err := out.Close(); err != nil {
					return err
				}
			}
			if dir != "" || keep {
				fmt.Fprintf(a.stderr, "images and stores kept in %s\n", absPath(workDir))
			}
			return rep.Err()
		}}
	f := run.Flags()
	f.StringVar(&scenarioFile, "scenario", "", "scenario file (YAML or JSON); flags override it")
	f.IntVar(&sc.Volumes, "volumes", 1000, "volumes at the start")
	f.IntVar(&sc.Keys, "keys", 10, "root keys")
	f.IntVar(&sc.Months, "months", 12, "months of virtual time")
	f.IntVar(&sc.PolicyMonths, "policy-months", 3, "rotation policy of every key, 1-12 (0: none)")
	f.Float64Var(&sc.ManualRotationsPerMonth, "manual-rotations", 0, "on-demand rotations per key per month")
	f.IntVar(&sc.AttachesPerMonth, "attaches", 0, "attaches per month across the fleet (default min(volumes, 500); -1 none)")
	f.IntVar(&sc.CreatesPerMonth, "creates", 0, "volumes created per month during the run")
	f.IntVar(&sc.DeletesPerMonth, "deletes", 0, "volumes deleted per month during the run")
	f.StringVar(&sc.Mapping, "mapping", "round-robin", "volumes to keys: round-robin, random or skewed")
	f.Var(&volumeSize, "volume-size", "data size of each (sparse) volume, such as 64KiB or 1GiB (default 1MiB)")
	f.Float64Var(&sc.Faults.FailRate, "kms-fail-rate", 0, "probability that a key-service call fails")
	f.Float64Var(&sc.Faults.CrashRate, "crash-rate", 0, "probability that a volume's rewrap crashes the process")
	f.IntVar(&sc.Faults.RandomOutages, "outages", 0, "key-service outages (6 h each) at random times")
	f.StringVar(&latency, "kms-latency", "0s", "virtual latency added to every key-service call")
	f.IntVar(&sc.Faults.CorruptData, "corrupt", 0, "overwrite this many volumes' stored data behind crkvol's back (the audit must fail)")
	f.Uint64Var(&sc.Seed, "seed", 1, "seed: the same seed gives the same events and fault draws")
	f.IntVar(&sc.Images, "images", 0, "encrypted qcow2 images made from volumes into the image catalog at the start (on each host with --hosts); rotations rewrap their WDEKs with the volumes")
	f.IntVar(&sc.Workers, "workers", 16, "concurrent rewraps per pass (1: counts repeat exactly from run to run, even with crashes)")
	f.IntVar(&sc.Hosts, "hosts", 0, "spread the fleet over this many simulated hosts, each with an agent following the lifecycle feed (0: one process with the rotation hook)")
	f.StringVar(&deliveryDelay, "delivery-delay", "0s", "with --hosts: mean virtual delay from a lifecycle event to a follower receiving it, uniform from 0 to twice this (0s: 100ms)")
	f.Float64Var(&sc.Faults.NotificationLoss, "notification-loss", 0, "with --hosts: probability that a feed answer is lost (received again at the next poll)")
	f.IntVar(&sc.Faults.AgentDowntimes, "agent-downtime", 0, "with --hosts: stop an agent (1 h each) this many times, on random hosts at random times")
	f.Float64Var(&sc.DisablesPerMonth, "disables", 0, "with --hosts: key disables per month, each enabled again after 1 h (default 1; -1 none)")
	f.StringVar(&lockoutBound, "lockout-bound", "", "with --hosts: time after a disable by which attached volumes must stop serving (default 5s)")
	f.StringVar(&reportFile, "report", "", "write the full report as JSON to this file")
	f.StringVar(&chartFile, "chart", "", "write an SVG chart of volumes per key version over time")
	f.StringVar(&dir, "dir", "", "work in this (new or empty) directory and keep it (default: a temporary one, removed)")
	f.BoolVar(&keep, "keep", false, "keep the temporary directory")
	f.BoolVar(&force, "force", false, "overwrite the --report and --chart files if they exist")

	var crashOpts sim.CrashOptions
	crash := &cobra.Command{Use: "crash", Short: "Kill `crkvol key rotate` with SIGKILL at random moments, then check key sync repairs every volume", Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			// CrashTest takes 0 for its defaults: refuse it here, before any work.
			for _, f := range []struct {
				name string
				n    int
			}{{"volumes", crashOpts.Volumes}, {"trials", crashOpts.Trials}} {
				if f.n < 1 {
					return fmt.Errorf("--%s %d: want at least 1", f.name, f.n)
				}
			}
			if cmd.Flags().Changed("workers") && (crashOpts.Workers < 1 || crashOpts.Workers > maxWorkers) {
				return fmt.Errorf("--workers %d: want 1 to %d volumes at once", crashOpts.Workers, maxWorkers)
			}
			bin, err := os.Executable()
			if err != nil {
				return err
			}
			crashOpts.Binary = bin
			if crashOpts.Dir == "" {
				d, err := os.MkdirTemp("", "crkvol-crash-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(d)
				crashOpts.Dir = d
			}
			crashOpts.Log = func(format string, args ...any) { fmt.Fprintf(a.stderr, format+"\n", args...) }
			rep, err := sim.CrashTest(cmd.Context(), crashOpts)
			if rep != nil {
				if a.asJSON {
					if eerr := a.emit(rep); eerr != nil {
						return eerr
					}
				} else {
					rep.WriteSummary(a.stdout)
				}
			}
			return err
		}}
	cf := crash.Flags()
	cf.IntVar(&crashOpts.Volumes, "volumes", 500, "registered volumes")
	cf.IntVar(&crashOpts.Images, "images", 0, "encrypted qcow2 images exported from the volumes into the image catalog, under the same key")
	cf.IntVar(&crashOpts.Trials, "trials", 50, "rotations killed with SIGKILL")
	cf.Uint64Var(&crashOpts.Seed, "seed", 1, "seed of the kill times")
	cf.IntVar(&crashOpts.Workers, "workers", 0, fmt.Sprintf("the rotations' --workers, 1 to %d (default: theirs, %d)", maxWorkers, volume.DefaultWorkers))
	cf.StringVar(&crashOpts.Dir, "dir", "", "work directory (default: a temporary one, removed)")

	cmd.AddCommand(run, crash)
	return cmd
}
