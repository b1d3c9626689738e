package main

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	v1 "hangar/api/v1"
)

// newAlerts lists the pool's active alerts (GET /api/v1/alerts).
func newAlerts(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "alerts",
		Short: "List the pool's active alerts",
		Long: `List what needs attention now: hosts the pool master judges suspect, isolated or dead
(host-down), VMs that crashed or failed (vm-crashed), storage pools under 10 % free
(storage-low), with severity, target, since when and a message.`,
		Example: "  hangar alerts\n  hangar alerts -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.checkOutput(cmd); err != nil {
				return err
			}
			al, err := g.client().Alerts(cmd.Context())
			if err != nil {
				return err
			}
			var rows [][]string
			for _, a := range al.Alerts {
				rows = append(rows, []string{a.Severity, a.Kind, a.Target, a.Since.Local().Format(time.DateTime), a.Message})
			}
			return g.printList(cmd, al.Alerts, []string{"SEVERITY", "KIND", "TARGET", "SINCE", "MESSAGE"}, rows)
		},
	}
	addOutput(cmd, g, true)
	return cmd
}

// newEvents prints the event stream (GET /api/v1/events).
func newEvents(g *globals) *cobra.Command {
	var untilSynced bool
	var last string
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Follow the pool's changes as they happen (the server-sent event stream)",
		Long: `Print GET /api/v1/events, one line per event: its name, its id (an etcd revision) and its
JSON data. The stream starts with the state you may read (vm, operation; host, pool and
alert events with read on the pool), then synced, then each change. --since ID resumes
after an event's id; --until-synced stops at synced.`,
		Example: "  hangar events\n  hangar events --until-synced | grep '^vm '\n  hangar events --since 1234",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			es, err := g.client().Events(cmd.Context(), last)
			if err != nil {
				return err
			}
			defer es.Close()
			out := cmd.OutOrStdout()
			for {
				e, err := es.Next()
				if errors.Is(err, io.EOF) || cmd.Context().Err() != nil {
					return nil
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "%s %s %s\n", e.Name, e.ID, e.Data)
				if untilSynced && e.Name == v1.EventSynced {
					return nil
				}
			}
		},
	}
	cmd.Flags().BoolVar(&untilSynced, "until-synced", false, "stop after the initial state (the synced event)")
	cmd.Flags().StringVar(&last, "since", "", "resume after this event id (Last-Event-ID)")
	return cmd
}
