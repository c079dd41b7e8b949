package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"crkvol/crk"
)

func (a *app) eventsCommand() *cobra.Command {
	var keyID, action, since string
	var limit int
	cmd := &cobra.Command{Use: "events", Short: "Show the audit events of the key service", Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			f := crk.EventFilter{KeyID: keyID, Action: action, Limit: limit}
			if since != "" {
				t, err := time.Parse(time.RFC3339, since)
				if err != nil {
					return usagef("events: --since %q: want an RFC 3339 time", since)
				}
				f.From = t
			}
			if err := a.open(cmd.Context()); err != nil {
				return err
			}
			if err := a.needLocal("events"); err != nil {
				return err
			}
			evs, err := a.svc.Events(cmd.Context(), f)
			if err != nil {
				return fmt.Errorf("events: %w", err)
			}
			if a.asJSON {
				if evs == nil {
					evs = []crk.Event{}
				}
				return a.emit(evs)
			}
			w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "TIME\tACTION\tOUTCOME\tKEY\tVERSION\tINITIATOR\tREASON")
			for _, e := range evs {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", rfc3339(e.Time), e.Action, e.Outcome, e.KeyID, e.KeyVersion, e.Initiator, e.Reason)
			}
			return w.Flush()
		}}
	cmd.Flags().StringVar(&keyID, "key", "", "only events of this key")
	cmd.Flags().StringVar(&action, "action", "", "only this action, such as kms.secrets.rotate")
	cmd.Flags().StringVar(&since, "since", "", "only events at or after this RFC 3339 time")
	cmd.Flags().IntVar(&limit, "limit", 0, "at most this many events (oldest first)")
	return cmd
}
