package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"crkvol/bench"
)

func (a *app) benchCommand() *cobra.Command {
	var quick, withNBD bool
	var jsonFile string
	cmd := &cobra.Command{Use: "bench", Short: "Measure the sector engine against OpenSSL and x/crypto/xts (and NBD against qemu-nbd)", Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
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
			if jsonFile != "" {
				b, err := json.MarshalIndent(r, "", "  ")
				if err != nil {
					return err
				}
				if err := os.WriteFile(jsonFile, append(b, '\n'), 0o644); err != nil {
					return err
				}
			}
			if a.asJSON {
				return a.emit(r)
			}
			return r.WriteTable(a.stdout)
		}}
	cmd.Flags().BoolVar(&quick, "quick", false, "measure each case once, briefly")
	cmd.Flags().BoolVar(&withNBD, "nbd", false, "also compare NBD throughput with qemu-nbd over TCP loopback (needs nbdcopy and qemu-nbd)")
	cmd.Flags().StringVar(&jsonFile, "json", "", "also write the report as JSON to this file")
	return cmd
}
