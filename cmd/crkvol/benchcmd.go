package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"crkvol/bench"
)

func (a *app) benchCommand() *cobra.Command {
	var quick, withNBD, force bool
	var output string
	cmd := &cobra.Command{Use: "bench", Short: "Measure the sector engine against OpenSSL and x/crypto/xts (and NBD against qemu-nbd)", Args: args(cobra.NoArgs),
		Long: `bench measures every sector implementation this CPU runs against x/crypto/xts and openssl speed
(and, with --nbd, NBD throughput against qemu-nbd), and prints a table, or with the global
--json the report as JSON on stdout. --output FILE also writes the JSON report to FILE, which
must not exist unless --force.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// The output file is checked first, as a run takes minutes, and created at the end,
			// so that a failed run leaves none.
			if err := checkOutputFree("output", output, a.outputOptions(force, 0o644)); err != nil {
				return err
			}
			fmt.Fprintln(a.stderr, "crkvol: measuring every sector implementation this CPU runs, x/crypto/xts and openssl speed...")
			r, err := bench.Run(cmd.Context(), bench.Options{Quick: quick})
			if err != nil {
				return err
			}
			if withNBD {
				fmt.Fprintln(a.stderr, "crkvol: measuring NBD: crkvol attach, crkvol's server on a raw file, qemu-nbd...")
				o := bench.NBDOptions{}
				if quick {
					o = bench.NBDOptions{Size: 64 << 20, Rounds: 1}
				}
				if r.NBD, err = bench.RunNBD(cmd.Context(), o); err != nil {
					return err
				}
			}
			// The results are printed before the file is written, so that a failure to write
			// it loses nothing.
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
			return nil
		}}
	cmd.Flags().BoolVar(&quick, "quick", false, "measure each case once, briefly")
	cmd.Flags().BoolVar(&withNBD, "nbd", false, "also compare NBD throughput with qemu-nbd over TCP loopback (needs nbdcopy and qemu-nbd)")
	cmd.Flags().StringVar(&output, "output", "", "also write the report as JSON to this new file")
	cmd.Flags().BoolVar(&force, "force", false, "overwrite the --output file if it exists")
	return cmd
}
